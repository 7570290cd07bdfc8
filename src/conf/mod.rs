//! Job configuration: `conf/*.yaml` parsed into a [`RawJobConf`] (straight from YAML) and then
//! validated into a [`JobConf`] whose fields cannot be wrong: resolved locations, known formats,
//! loaded and parsed audit rule files. Every error names the file, the line and what was expected.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

pub mod load;
pub mod rules;

pub use load::{Dedupe, IncrementalConf, LoadMode, Lookback, MergeConf};
use rules::{RuleFile, RuleSet};

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
    /// Several problems, each its own error, one per line.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfError>),
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

    /// Wraps a serde_yaml error, keeping its line, and naming the key or value probably meant
    /// when it is an unknown one.
    pub fn yaml(path: &Path, err: &serde_yaml::Error) -> Self {
        let line = err.location().map(|l| l.line()).unwrap_or(1);
        ConfError::at(path, line, yaml_message(err))
    }

    /// `problems` as one error: the problem itself when there is one.
    pub fn many(mut problems: Vec<ConfError>) -> Self {
        if problems.len() == 1 {
            return problems.pop().expect("one problem");
        }
        ConfError::Many(
            problems
                .into_iter()
                .flat_map(|p| match p {
                    ConfError::Many(inner) => inner,
                    one => vec![one],
                })
                .collect(),
        )
    }

    /// Every single problem this error holds.
    pub fn problems(&self) -> Vec<&ConfError> {
        match self {
            ConfError::Many(all) => all.iter().flat_map(|p| p.problems()).collect(),
            one => vec![one],
        }
    }
}

/// A serde_yaml error in words, without its position (the caller says where), with the key or
/// value probably meant when it names an unknown one.
pub(crate) fn yaml_message(err: &serde_yaml::Error) -> String {
    // serde_yaml appends " at line L column C"; the prefix already says where.
    let mut message = err.to_string();
    if let Some(idx) = message.find(" at line ") {
        message.truncate(idx);
    }
    with_suggestion(message)
}

/// Appends "did you mean `x`?" to serde's "unknown field `y`, expected one of `a`, `b`" (and
/// to unknown variants) when one expected word is close to the unknown one.
fn with_suggestion(message: String) -> String {
    let unknown = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|p| message.find(p).map(|at| &message[at + p.len()..]))
        .and_then(|rest| rest.split_once('`'));
    let Some((word, rest)) = unknown else {
        return message;
    };
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match did_you_mean(word, &expected) {
        Some(meant) => format!("{message}; did you mean `{meant}`?"),
        None => message,
    }
}

/// The candidate closest to `word` by edit distance, when close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting a swap of two neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
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
    #[serde(default)]
    pub mode: LoadMode,
    #[serde(default)]
    pub merge: Option<load::RawMerge>,
    #[serde(default)]
    pub incremental: Option<load::RawIncremental>,
    /// Other table formats each version is also published as.
    #[serde(default)]
    pub formats: Vec<TableFormat>,
    /// Iceberg options (`formats: [iceberg]`).
    #[serde(default)]
    pub iceberg: Option<RawIceberg>,
    /// A command (argv) run once per published run.
    #[serde(default)]
    pub on_publish: Option<Vec<String>>,
}

/// The `iceberg:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIceberg {
    /// SQL catalog URL (`sqlite:///relative.db`, `sqlite:////absolute.db`).
    #[serde(default)]
    pub catalog: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub catalog_name: Option<String>,
}

/// A table format that each published version is projected into (`formats:`), besides `wap`'s
/// own manifests, which stay the one commit point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// A Delta Lake log under `_delta_log/`.
    Delta,
    /// Apache Iceberg (format version 2) metadata under `metadata/`.
    Iceberg,
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
    /// `mode: merge`: the batch is upserted by `key` (`None`: overwrite mode).
    pub merge: Option<MergeConf>,
    /// Incremental reads from a watermark (merge mode only).
    pub incremental: Option<IncrementalConf>,
    /// Other formats each version is published as, sorted, without repeats.
    pub formats: Vec<TableFormat>,
    /// The catalog each Iceberg version is registered in (`iceberg.catalog`).
    pub iceberg_catalog: Option<crate::iceberg::catalog::Catalog>,
    /// `on_publish:` the command (program, then arguments) run once per published run, in the
    /// job file's folder.
    pub on_publish: Option<Vec<String>>,
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
    /// The transform SQL for one logical date (and, for an incremental job, the watermark the
    /// run reads from, as the body of a SQL literal).
    pub fn transform_for(&self, date: &str, watermark: Option<&str>) -> String {
        let sql = self.transform.replace("{date}", date);
        match watermark {
            Some(w) => sql.replace("{watermark}", w),
            None => sql,
        }
    }

    /// Reads and validates a job file and every audit file it lists; every problem found is
    /// in the error.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfError> {
        Self::check(path).into_result()
    }

    /// Reads and validates a job file and every audit file it lists, collecting every problem
    /// instead of stopping at the first (`wap check`).
    pub fn check(path: impl AsRef<Path>) -> Checked {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::check_text(path, text),
            Err(source) => Checked {
                conf: None,
                problems: vec![ConfError::Read {
                    path: path.display().to_string(),
                    source,
                }],
            },
        }
    }

    /// Validates a job file's text; `path` locates relative paths and names the file in errors.
    pub fn from_text(path: &Path, text: String) -> Result<Self, ConfError> {
        Self::check_text(path, text).into_result()
    }

    /// [`JobConf::check`] of a job file's text.
    pub fn check_text(path: &Path, text: String) -> Checked {
        let fail = |problem| Checked {
            conf: None,
            problems: vec![problem],
        };
        if text.trim().is_empty() {
            return fail(ConfError::at(
                path,
                1,
                "empty job file: expected keys name, table, key, source",
            ));
        }
        let value: serde_yaml::Value = match serde_yaml::from_str(&text) {
            Ok(v) => v,
            Err(e) => return fail(ConfError::yaml(path, &e)),
        };
        let Some(map) = value.as_mapping() else {
            return fail(ConfError::at(
                path,
                1,
                "expected a mapping with keys name, table, key, source",
            ));
        };
        // Unknown keys are reported each with its line, and left out so that the rest can
        // still be validated.
        let mut problems = Vec::new();
        let mut known = map.clone();
        for k in map.keys() {
            let name = k.as_str().unwrap_or_default();
            if !JOB_KEYS.contains(&name) {
                problems.push(unknown_key(path, line_of_key(&text, name), name, JOB_KEYS));
                known.remove(k);
            }
        }
        let raw: Result<RawJobConf, ConfError> = if problems.is_empty() {
            serde_yaml::from_str(&text).map_err(|e| ConfError::yaml(path, &e))
        } else {
            serde_yaml::from_value(serde_yaml::Value::Mapping(known)).map_err(|e| {
                let message = yaml_message(&e);
                let line = message
                    .split('`')
                    .nth(1)
                    .map_or(1, |key| line_of_key(&text, key));
                ConfError::at(path, line, message)
            })
        };
        let base = absolute(
            &path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        );
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                problems.push(e);
                // The rule files are still checked, with what the job file says of them.
                let listed = |key: &str| map.get(key).cloned().unwrap_or_default();
                let audits: Vec<String> =
                    serde_yaml::from_value(listed("audits")).unwrap_or_default();
                let vars = serde_yaml::from_value(listed("vars")).unwrap_or_default();
                let vars = job_vars(path, &text, &vars, &mut problems);
                rule_files(path, &text, &base, &audits, &vars, &mut problems);
                return Checked {
                    conf: None,
                    problems,
                };
            }
        };
        let job_problems = problems.len();
        problems.extend(key_problems(path, &text, &raw));
        let line = |key: &str| line_of_key(&text, key);
        let csv = match raw.source.format {
            SourceFormat::Csv => match csv_options(&raw.source.options, path, &text) {
                Ok(csv) => csv,
                Err(e) => {
                    problems.push(e);
                    CsvOptions::default()
                }
            },
            _ => {
                if let Some(k) = raw.source.options.keys().next() {
                    problems.push(ConfError::at(
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
            problems.push(ConfError::at(
                path,
                line("path"),
                "source.path: expected a location",
            ));
        }
        let storage = storage_options(&raw.storage, path, &text).unwrap_or_else(|e| {
            problems.push(e);
            StorageOptions::default()
        });
        let vars = job_vars(path, &text, &raw.vars, &mut problems);
        let job_valid = problems.len() == job_problems;
        let rules = rule_files(path, &text, &base, &raw.audits, &vars, &mut problems);
        let transform = raw
            .transform
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| "SELECT * FROM source".to_string());
        let before = problems.len();
        let (merge, incremental) = load::validate(
            path,
            &text,
            raw.mode,
            raw.merge,
            raw.incremental,
            &transform,
            &mut problems,
        );
        let formats = {
            let mut f = raw.formats;
            f.sort();
            f.dedup();
            f
        };
        let iceberg_catalog = match &raw.iceberg {
            None => None,
            Some(_) if !formats.contains(&TableFormat::Iceberg) => {
                problems.push(ConfError::at(
                    path,
                    line("iceberg"),
                    "iceberg: only for a table published as Iceberg: add `formats: [iceberg]`",
                ));
                None
            }
            Some(RawIceberg {
                catalog: None,
                namespace,
                catalog_name,
            }) => {
                if namespace.is_some() || catalog_name.is_some() {
                    problems.push(ConfError::at(
                        path,
                        line("iceberg"),
                        "iceberg: `namespace` and `catalog_name` name the table in a catalog: \
                         expected `catalog` too",
                    ));
                }
                None
            }
            Some(RawIceberg {
                catalog: Some(url),
                namespace,
                catalog_name,
            }) => match crate::iceberg::catalog::Catalog::parse(
                url,
                &base,
                catalog_name.as_deref().unwrap_or("default"),
                namespace.as_deref().unwrap_or("default"),
                &raw.name,
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(ConfError::at(path, line("catalog"), e.to_string()));
                    None
                }
            },
        };
        if let Some(argv) = &raw.on_publish
            && argv.first().is_none_or(|p| p.trim().is_empty())
        {
            problems.push(ConfError::at(
                path,
                line("on_publish"),
                "on_publish: expected a command as a list, program first, e.g. \
                 [/usr/local/bin/notify, --channel, data]",
            ));
        }
        let job_valid = job_valid && problems.len() == before;
        let conf = job_valid.then(|| JobConf {
            name: raw.name,
            path: path.to_path_buf(),
            text: text.clone(),
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
            merge,
            incremental,
            formats,
            iceberg_catalog,
            on_publish: raw.on_publish,
        });
        Checked { conf, problems }
    }
}

/// What is wrong with the name, table and key columns of a job file as written.
fn key_problems(path: &Path, text: &str, raw: &RawJobConf) -> Vec<ConfError> {
    let line = |key: &str| line_of_key(text, key);
    let mut problems = Vec::new();
    let mut problem =
        |line: usize, message: String| problems.push(ConfError::at(path, line, message));
    if !is_identifier(&raw.name) {
        problem(
            line("name"),
            format!(
                "name: `{}` is not a SQL identifier: expected letters, digits and `_`, not starting with a digit",
                raw.name
            ),
        );
    } else if ["staged", "published", "source", "result"].contains(&raw.name.as_str()) {
        problem(
            line("name"),
            format!(
                "name: `{}` is reserved for audit SQL; choose another",
                raw.name
            ),
        );
    }
    if raw.table.trim().is_empty() {
        problem(line("table"), "table: expected a URL or a path".into());
    }
    if raw.key.is_empty() {
        problem(
            line("key"),
            "key: expected at least one column (the natural key rows are sorted by)".into(),
        );
    }
    for (field, cols) in [("partition_by", &raw.partition_by), ("key", &raw.key)] {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(c) = cols.iter().find(|c| c.is_empty() || !seen.insert(*c)) {
            problem(
                line(field),
                format!("{field}: column `{c}` is empty or listed twice"),
            );
        }
    }
    if let Some(c) = raw
        .key
        .iter()
        .find(|c| raw.mode == LoadMode::Overwrite && raw.partition_by.contains(c))
    {
        problem(
            line("key"),
            format!(
                "key: `{c}` is also a partition column; the key identifies rows within a partition \
                 (a `mode: merge` table may have partition columns in its key)"
            ),
        );
    }
    problems
}

/// The top-level keys of a job file.
const JOB_KEYS: &[&str] = &[
    "name",
    "table",
    "partition_by",
    "key",
    "source",
    "transform",
    "audits",
    "storage",
    "vars",
    "audit_samples",
    "mode",
    "merge",
    "incremental",
    "formats",
    "iceberg",
    "on_publish",
];

/// An unknown key at `line`, with the known key probably meant.
pub(crate) fn unknown_key(path: &Path, line: usize, key: &str, known: &[&str]) -> ConfError {
    let meant = match did_you_mean(key, known) {
        Some(m) => format!("; did you mean `{m}`?"),
        None => String::new(),
    };
    ConfError::at(
        path,
        line,
        format!(
            "unknown key `{key}`{meant} (expected one of {})",
            known.join(", ")
        ),
    )
}

/// A job file validated as far as it could be, and every problem found in it and its rule
/// files.
#[derive(Debug)]
pub struct Checked {
    /// The configuration, with the rules that are valid; `None` when the job file itself is
    /// too broken to give one.
    pub conf: Option<JobConf>,
    /// Every problem, in the order found.
    pub problems: Vec<ConfError>,
}

impl Checked {
    /// The configuration when nothing is wrong, else every problem as one error.
    pub fn into_result(self) -> Result<JobConf, ConfError> {
        match (self.conf, self.problems.is_empty()) {
            (Some(conf), true) => Ok(conf),
            (None, true) => unreachable!("a job file without a configuration has a problem"),
            (_, false) => Err(ConfError::many(self.problems)),
        }
    }
}

/// The job's `vars:` as text, each bad one a problem.
fn job_vars(
    path: &Path,
    text: &str,
    raw: &BTreeMap<String, serde_yaml::Value>,
    problems: &mut Vec<ConfError>,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for (k, v) in raw {
        let value = match v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                problems.push(ConfError::at(
                    path,
                    line_of_key(text, k),
                    format!("vars.{k}: expected a string, number or boolean"),
                ));
                continue;
            }
        };
        if !is_identifier(k) {
            problems.push(ConfError::at(
                path,
                line_of_key(text, k),
                format!("vars.{k}: names are identifiers (letters, digits, `_`)"),
            ));
            continue;
        }
        vars.insert(k.clone(), value);
    }
    vars
}

/// Every listed rule file, parsed with the job's `vars`: the valid rules, each problem pushed.
fn rule_files(
    path: &Path,
    text: &str,
    base: &Path,
    audits: &[String],
    vars: &BTreeMap<String, String>,
    problems: &mut Vec<ConfError>,
) -> RuleSet {
    let mut files = Vec::new();
    for audit in audits {
        let audit_path = resolve_local(base, audit);
        match std::fs::read_to_string(&audit_path) {
            Ok(audit_text) => {
                let (file, found) = RuleFile::check(&audit_path, &audit_text, vars);
                problems.extend(found);
                files.push(file);
            }
            Err(e) => problems.push(ConfError::at(
                path,
                line_of_value(text, audit).unwrap_or_else(|| line_of_key(text, "audits")),
                format!(
                    "audits: cannot read rule file {}: {e}",
                    audit_path.display()
                ),
            )),
        }
    }
    let (rules, found) = RuleSet::check(files);
    problems.extend(found);
    rules
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

/// The job file's text as run ids hash it: without its top-level `on_publish:` entry, so that
/// adding or changing a notification does not make every run look new (and publish again).
/// Files without one hash as written.
pub fn run_text(text: &str) -> std::borrow::Cow<'_, str> {
    let mut lines = text.split_inclusive('\n').peekable();
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    while let Some(l) = lines.next() {
        if !l.starts_with("on_publish:") {
            out.push_str(l);
            continue;
        }
        found = true;
        // The entry goes on while lines are indented, blank, comments or top-level list items.
        while let Some(next) = lines.peek() {
            let t = next.trim_end();
            if t.is_empty() || next.starts_with([' ', '\t', '#']) || t == "-" || t.starts_with("- ")
            {
                lines.next();
            } else {
                break;
            }
        }
    }
    if found {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(text)
    }
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
        assert!(
            err.contains("unknown key `keys`; did you mean `key`?"),
            "{err}"
        );
        // Nested keys are serde's: the same suggestion.
        let p = write(
            dir.path(),
            "nested.yaml",
            &GOOD.replace("format: csv", "format: csv\n  pth: x"),
        );
        let err = JobConf::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("nested.yaml:7:")
                && err.contains("unknown field `pth`")
                && err.ends_with("did you mean `path`?"),
            "{err}"
        );
    }

    #[test]
    fn check_collects_the_problems_of_the_job_and_every_rule_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "audits/a.yaml",
            "rules:\n  - name: a\n    not_nul: [order_id]\n  - name: ok\n    unique: [order_id]\n",
        );
        write(
            dir.path(),
            "audits/b.yaml",
            "rules:\n  - name: b\n    range: {column: amount, min: [1]}\n",
        );
        let text = GOOD.replace("partition_by:", "partiton_by:")
            + "audits: [../audits/a.yaml, ../audits/b.yaml, ../audits/missing.yaml]\n";
        let p = write(dir.path(), "conf/job.yaml", &text);
        let checked = JobConf::check(&p);
        let messages: Vec<String> = checked.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(
            messages[0]
                .contains("job.yaml:3: unknown key `partiton_by`; did you mean `partition_by`?"),
            "{messages:#?}"
        );
        assert!(
            messages[1].contains("a.yaml:3: rule `a`: unknown field `not_nul`")
                && messages[1].ends_with("did you mean `not_null`?"),
            "{messages:#?}"
        );
        assert!(
            messages[2].contains("b.yaml:2: rule `b`: range.min"),
            "{messages:#?}"
        );
        assert!(
            messages[3].contains("job.yaml:9: audits: cannot read rule file")
                && messages[3].contains("missing.yaml"),
            "{messages:#?}"
        );
        // The job itself is still usable, with the rules that are valid.
        let conf = checked.conf.expect("an unknown key leaves the job valid");
        let names: Vec<&str> = conf.rules.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ok"]);
        assert!(conf.partition_by.is_empty());
        // Loading strictly gives the same problems in one error.
        assert_eq!(JobConf::load(&p).unwrap_err().problems().len(), 4);
    }

    #[test]
    fn suggestions_are_for_near_misses_only() {
        assert_eq!(did_you_mean("rnage", &["range", "unique"]), Some("range"));
        assert_eq!(did_you_mean("uniqe", &["range", "unique"]), Some("unique"));
        assert_eq!(did_you_mean("colour", &["range", "unique"]), None);
        assert_eq!(did_you_mean("ky", &["key", "keys"]), Some("key"));
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
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
