//! Job configuration: `conf/*.yaml` parsed into a [`RawJobConf`] (straight from YAML) and then
//! validated into a [`JobConf`] whose fields cannot be wrong: resolved locations, known formats,
//! loaded and parsed audit rule files. Every error names the file, the line and what was expected.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::audit::rule::{RuleFile, RuleSet};

/// Errors in job or audit configuration files. All of them map to exit code 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfError {
    #[error("unable to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

impl ConfError {
    /// An error at a known line of a file.
    pub fn at(path: &Path, line: usize, message: impl Into<String>) -> Self {
        ConfError::Invalid {
            path: path.display().to_string(),
            line,
            message: message.into(),
        }
    }

    /// Wraps a serde_yaml error, keeping its line.
    pub fn yaml(path: &Path, err: &serde_yaml::Error) -> Self {
        let line = err.location().map(|l| l.line()).unwrap_or(1);
        // serde_yaml appends " at line L column C"; the prefix already says where.
        let mut message = err.to_string();
        if let Some(idx) = message.find(" at line ") {
            message.truncate(idx);
        }
        ConfError::at(path, line, message)
    }
}

/// Source file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Csv,
    Parquet,
    /// Newline-delimited JSON.
    Json,
}

/// The job file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobConf {
    pub name: String,
    pub table: String,
    #[serde(default)]
    pub partition_by: Vec<String>,
    pub key: Vec<String>,
    pub source: RawSource,
    #[serde(default)]
    pub transform: Option<String>,
    #[serde(default)]
    pub audits: Vec<String>,
    #[serde(default)]
    pub storage: BTreeMap<String, serde_yaml::Value>,
    /// Values for `{name}` placeholders in rule files.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_yaml::Value>,
    /// Sample failing rows kept per failing rule (default 10).
    #[serde(default)]
    pub audit_samples: Option<usize>,
}

/// The `source:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub format: SourceFormat,
    pub path: String,
    #[serde(default)]
    pub options: BTreeMap<String, serde_yaml::Value>,
}

/// CSV reading options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub has_header: bool,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    pub comment: Option<u8>,
    pub null_regex: Option<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            has_header: true,
            delimiter: b',',
            quote: b'"',
            escape: None,
            comment: None,
            null_regex: None,
        }
    }
}

/// The validated `source:` section.
#[derive(Debug, Clone)]
pub struct SourceConf {
    pub format: SourceFormat,
    /// Location template; `{date}` is replaced by the logical date. Relative paths are already
    /// resolved against the job file's folder.
    pub path: String,
    /// Only set for CSV sources.
    pub csv: CsvOptions,
}

impl SourceConf {
    /// The source location for one logical date.
    pub fn path_for(&self, date: &str) -> String {
        self.path.replace("{date}", date)
    }
}

/// A validated job configuration.
#[derive(Debug, Clone)]
pub struct JobConf {
    /// Table name used in SQL (`query`), also part of the run id.
    pub name: String,
    /// The job file this came from.
    pub path: PathBuf,
    /// The job file's bytes, hashed into every run id.
    pub text: String,
    /// Table location (URL or absolute path).
    pub table: String,
    pub partition_by: Vec<String>,
    pub key: Vec<String>,
    pub source: SourceConf,
    /// Transform SQL over table `source`; `{date}` is the logical date.
    pub transform: String,
    /// Audit rules from every listed file.
    pub rules: RuleSet,
    /// Connection settings for object stores (never credentials).
    pub storage: StorageOptions,
    /// Sample failing rows kept per failing rule.
    pub audit_samples: Option<usize>,
}

/// Per-job object-store settings (`storage:`). Credentials never come from job files: they come
/// from the environment (`AWS_ACCESS_KEY_ID`, …), so they cannot leak through a committed YAML.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageOptions {
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:9000` (MinIO).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain HTTP endpoints.
    pub allow_http: Option<bool>,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO expects.
    pub path_style: Option<bool>,
}

fn storage_options(
    raw: &BTreeMap<String, serde_yaml::Value>,
    path: &Path,
    text: &str,
) -> Result<StorageOptions, ConfError> {
    let mut out = StorageOptions::default();
    for (k, v) in raw {
        let err = |expected: &str| {
            ConfError::at(
                path,
                line_of_key(text, k),
                format!("storage.{k}: expected {expected}"),
            )
        };
        let lower = k.to_ascii_lowercase();
        if [
            "key",
            "secret",
            "token",
            "password",
            "credential",
            "signature",
        ]
        .iter()
        .any(|w| lower.contains(w))
        {
            // The value is deliberately left out of the message.
            return Err(ConfError::at(
                path,
                line_of_key(text, k),
                format!(
                    "storage.{k}: credentials are not read from job files; remove it and export \
                     AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the store's own variables) instead"
                ),
            ));
        }
        match k.as_str() {
            "endpoint" => {
                let e = v
                    .as_str()
                    .ok_or_else(|| err("a URL such as http://127.0.0.1:9000"))?;
                let url =
                    url::Url::parse(e).map_err(|_| err("a URL such as http://127.0.0.1:9000"))?;
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(err(
                        "a URL without user or password (credentials come from the environment)",
                    ));
                }
                out.endpoint = Some(e.trim_end_matches('/').to_string());
            }
            "region" => {
                out.region = Some(v.as_str().ok_or_else(|| err("a region name"))?.to_string())
            }
            "allow_http" => out.allow_http = Some(v.as_bool().ok_or_else(|| err("true or false"))?),
            "path_style" => out.path_style = Some(v.as_bool().ok_or_else(|| err("true or false"))?),
            _ => return Err(err("one of endpoint, region, allow_http, path_style")),
        }
    }
    Ok(out)
}

impl JobConf {
    /// The transform SQL for one logical date.
    pub fn transform_for(&self, date: &str) -> String {
        self.transform.replace("{date}", date)
    }

    /// Reads and validates a job file and every audit file it lists.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_text(path, text)
    }

    /// Validates a job file's text; `path` locates relative paths and names the file in errors.
    pub fn from_text(path: &Path, text: String) -> Result<Self, ConfError> {
        let raw: RawJobConf = if text.trim().is_empty() {
            return Err(ConfError::at(
                path,
                1,
                "empty job file: expected keys name, table, key, source",
            ));
        } else {
            serde_yaml::from_str(&text).map_err(|e| ConfError::yaml(path, &e))?
        };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = absolute(&base);
        let line = |key: &str| line_of_key(&text, key);

        if !is_identifier(&raw.name) {
            return Err(ConfError::at(
                path,
                line("name"),
                format!(
                    "name: `{}` is not a SQL identifier: expected letters, digits and `_`, not starting with a digit",
                    raw.name
                ),
            ));
        }
        if ["staged", "published", "source", "result"].contains(&raw.name.as_str()) {
            return Err(ConfError::at(
                path,
                line("name"),
                format!(
                    "name: `{}` is reserved for audit SQL; choose another",
                    raw.name
                ),
            ));
        }
        if raw.table.trim().is_empty() {
            return Err(ConfError::at(
                path,
                line("table"),
                "table: expected a URL or a path",
            ));
        }
        if raw.key.is_empty() {
            return Err(ConfError::at(
                path,
                line("key"),
                "key: expected at least one column (the natural key rows are sorted by)",
            ));
        }
        for (field, cols) in [("partition_by", &raw.partition_by), ("key", &raw.key)] {
            let mut seen = std::collections::BTreeSet::new();
            for c in cols {
                if c.is_empty() || !seen.insert(c) {
                    return Err(ConfError::at(
                        path,
                        line(field),
                        format!("{field}: column `{c}` is empty or listed twice"),
                    ));
                }
            }
        }
        if let Some(c) = raw.key.iter().find(|c| raw.partition_by.contains(c)) {
            return Err(ConfError::at(
                path,
                line("key"),
                format!(
                    "key: `{c}` is also a partition column; the key identifies rows within a partition"
                ),
            ));
        }
        let csv = match raw.source.format {
            SourceFormat::Csv => csv_options(&raw.source.options, path, &text)?,
            _ => {
                if let Some(k) = raw.source.options.keys().next() {
                    return Err(ConfError::at(
                        path,
                        line(k),
                        format!(
                            "source.options.{k}: {:?} sources take no options",
                            raw.source.format
                        ),
                    ));
                }
                CsvOptions::default()
            }
        };
        if raw.source.path.trim().is_empty() {
            return Err(ConfError::at(
                path,
                line("path"),
                "source.path: expected a location",
            ));
        }
        let transform = raw
            .transform
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| "SELECT * FROM source".to_string());

        let mut vars = BTreeMap::new();
        for (k, v) in &raw.vars {
            let value = match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(ConfError::at(
                        path,
                        line_of_key(&text, k),
                        format!("vars.{k}: expected a string, number or boolean"),
                    ));
                }
            };
            if !is_identifier(k) {
                return Err(ConfError::at(
                    path,
                    line_of_key(&text, k),
                    format!("vars.{k}: names are identifiers (letters, digits, `_`)"),
                ));
            }
            vars.insert(k.clone(), value);
        }
        let mut rule_files = Vec::new();
        for audit in &raw.audits {
            let audit_path = resolve_local(&base, audit);
            let audit_text = std::fs::read_to_string(&audit_path).map_err(|e| {
                ConfError::at(
                    path,
                    line_of_value(&text, audit).unwrap_or_else(|| line("audits")),
                    format!(
                        "audits: cannot read rule file {}: {e}",
                        audit_path.display()
                    ),
                )
            })?;
            rule_files.push(RuleFile::parse_with_vars(&audit_path, &audit_text, &vars)?);
        }
        let rules = RuleSet::new(rule_files)?;
        let storage = storage_options(&raw.storage, path, &text)?;

        Ok(JobConf {
            name: raw.name,
            path: path.to_path_buf(),
            text,
            table: resolve_location(&base, &raw.table),
            partition_by: raw.partition_by,
            key: raw.key,
            source: SourceConf {
                format: raw.source.format,
                path: resolve_location(&base, &raw.source.path),
                csv,
            },
            transform,
            rules,
            storage,
            audit_samples: raw.audit_samples,
        })
    }
}

fn csv_options(
    options: &BTreeMap<String, serde_yaml::Value>,
    path: &Path,
    text: &str,
) -> Result<CsvOptions, ConfError> {
    let mut csv = CsvOptions::default();
    for (k, v) in options {
        let err = |expected: &str| {
            ConfError::at(
                path,
                line_of_key(text, k),
                format!("source.options.{k}: expected {expected}"),
            )
        };
        let byte = |v: &serde_yaml::Value| -> Option<u8> {
            let s = v.as_str()?;
            (s.len() == 1 && s.is_ascii()).then(|| s.as_bytes()[0])
        };
        match k.as_str() {
            "has_header" => csv.has_header = v.as_bool().ok_or_else(|| err("true or false"))?,
            "delimiter" => csv.delimiter = byte(v).ok_or_else(|| err("one ASCII character"))?,
            "quote" => csv.quote = byte(v).ok_or_else(|| err("one ASCII character"))?,
            "escape" => csv.escape = Some(byte(v).ok_or_else(|| err("one ASCII character"))?),
            "comment" => csv.comment = Some(byte(v).ok_or_else(|| err("one ASCII character"))?),
            "null_regex" => {
                csv.null_regex = Some(
                    v.as_str()
                        .ok_or_else(|| err("a regular expression"))?
                        .into(),
                )
            }
            _ => {
                return Err(err(
                    "one of has_header, delimiter, quote, escape, comment, null_regex",
                ));
            }
        }
    }
    Ok(csv)
}

/// True for a plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The 1-based line where `key:` first appears in a YAML text, in block or flow style
/// (1 when not found).
pub fn line_of_key(text: &str, key: &str) -> usize {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.lines()
        .position(|l| {
            let code = l.split(" #").next().unwrap_or(l);
            code.match_indices(key).any(|(i, _)| {
                let before_ok = code[..i].chars().next_back().is_none_or(|c| !is_word(c));
                let rest = &code[i + key.len()..];
                before_ok && rest.trim_start().starts_with(':')
            })
        })
        .map_or(1, |i| i + 1)
}

/// The 1-based line where `value` appears as a YAML value.
pub fn line_of_value(text: &str, value: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(value)).map(|i| i + 1)
}

/// True when `s` names a location by URL (`scheme://…`) rather than a local path.
pub fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
    })
}

/// Resolves a location from a config file: URLs stay as they are, paths become absolute
/// (relative to `base`), with `.` and `..` folded.
pub fn resolve_location(base: &Path, location: &str) -> String {
    if is_url(location) {
        return location.to_string();
    }
    let trailing = location.ends_with('/');
    let mut resolved = resolve_local(base, location).display().to_string();
    if trailing && !resolved.ends_with('/') {
        resolved.push('/');
    }
    resolved
}

fn resolve_local(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    normalize(&joined)
}

/// Absolute form of a path, relative to the working directory, with `.` and `..` folded.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        normalize(p)
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        normalize(&cwd.join(p))
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = "name: orders\ntable: ../lake/orders\npartition_by: [order_date]\nkey: [order_id]\nsource:\n  format: csv\n  path: ../data/{date}/\n  options: {has_header: true, delimiter: \";\"}\n";

    #[test]
    fn resolves_relative_paths_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "conf/job.yaml", GOOD);
        let conf = JobConf::load(&p).unwrap();
        let root = absolute(dir.path());
        assert_eq!(conf.table, root.join("lake/orders").display().to_string());
        assert_eq!(
            conf.source.path_for("2024-01-02"),
            format!("{}/data/2024-01-02/", root.display())
        );
        assert_eq!(conf.source.csv.delimiter, b';');
        assert_eq!(conf.transform, "SELECT * FROM source");
        assert!(conf.rules.rules().is_empty());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("key: [order_id]", "key: [order_id]\nkeys: [x]");
        let p = write(dir.path(), "job.yaml", &text);
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(err.contains("job.yaml:5:"), "{err}");
        assert!(err.contains("unknown field `keys`"), "{err}");
    }

    #[test]
    fn missing_key_and_wrong_type_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.yaml", &GOOD.replace("key: [order_id]\n", ""));
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(err.contains("missing field `key`"), "{err}");

        let p = write(
            dir.path(),
            "b.yaml",
            &GOOD.replace("has_header: true", "has_header: 3"),
        );
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(err.contains("b.yaml:8:"), "{err}");
        assert!(err.contains("has_header: expected true or false"), "{err}");

        let p = write(
            dir.path(),
            "c.yaml",
            &GOOD.replace("format: csv", "format: xls"),
        );
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(err.contains("c.yaml:6:"), "{err}");
        assert!(err.contains("unknown variant `xls`"), "{err}");
    }

    #[test]
    fn missing_audit_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{GOOD}audits: [../audits/nope.yaml]\n");
        let p = write(dir.path(), "conf/job.yaml", &text);
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(err.contains("job.yaml:9:"), "{err}");
        assert!(err.contains("nope.yaml"), "{err}");
    }

    #[test]
    fn storage_settings_and_refused_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{GOOD}storage:\n  endpoint: http://127.0.0.1:9000\n  region: eu-west-1\n  allow_http: true\n  path_style: true\n"
        );
        let p = write(dir.path(), "a.yaml", &text);
        let conf = JobConf::load(&p).unwrap();
        assert_eq!(
            conf.storage.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(conf.storage.allow_http, Some(true));

        let text =
            format!("{GOOD}storage:\n  region: x\n  secret_access_key: hunter2-very-secret\n");
        let p = write(dir.path(), "b.yaml", &text);
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("b.yaml:11:") && err.contains("credentials are not read"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");

        let text = format!("{GOOD}storage:\n  endpoint: http://admin:hunter2@host:9000\n");
        let p = write(dir.path(), "c.yaml", &text);
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("without user or password") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn urls_stay_urls() {
        assert_eq!(
            resolve_location(Path::new("/x"), "memory://t"),
            "memory://t"
        );
        assert_eq!(resolve_location(Path::new("/x"), "s3://b/p/"), "s3://b/p/");
        assert_eq!(resolve_location(Path::new("/x/y"), "../d/"), "/x/d/");
        assert!(!is_url("/tmp/a://b"));
        assert!(is_url("file:///tmp/x"));
    }
}
