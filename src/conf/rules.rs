//! The audit rule model: `audits/*.yaml` parsed into typed [`Rule`]s.
//!
//! A rule has a unique name, a severity and exactly one kind. Rules that check single rows
//! (`not_null`, `accepted_values`, `range`, `expression`) and `row_count` are evaluated together
//! in one aggregate scan; `unique` and `sql` rules run as their own queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfError;

/// What a failing rule does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks publish.
    #[default]
    Error,
    /// Reported only.
    Warn,
}

/// The kinds of rule.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// None of the columns may be NULL.
    NotNull(Vec<String>),
    /// No two rows share these columns (rows with a NULL in them are not compared).
    Unique(Vec<String>),
    /// Non-NULL values of the column are in the list (values are SQL literals).
    AcceptedValues { column: String, values: Vec<String> },
    /// Non-NULL values of the column are within `[min, max]` (SQL literals, both optional).
    Range {
        column: String,
        min: Option<String>,
        max: Option<String>,
    },
    /// The number of staged rows is within `[min, max]`.
    RowCount { min: Option<u64>, max: Option<u64> },
    /// A boolean SQL expression; rows where it is false or NULL fail.
    Expression(String),
    /// A read-only query; every row it returns fails.
    Sql(String),
    /// The newest value of `column` is no older than `max_age` before the logical date.
    Freshness { column: String, max_age: MaxAge },
    /// The staged schema has these columns with these logical types.
    Schema {
        columns: Vec<(String, LogicalType)>,
        allow_extra: bool,
    },
    /// Every non-NULL value of `column` exists in `field` of another table's current published
    /// version; `to` is that table's location or a job file naming it (resolved, absolute).
    Relationships {
        column: String,
        to: String,
        field: String,
    },
    /// The staged schema against the published one: `forbid` any change, or allow `additive`
    /// ones (no column dropped or retyped).
    SchemaChange { additive: bool },
    /// Each staged partition's row count is within `max_pct` percent of the partition it
    /// replaces or, for a new partition, of the mean of the last `window` published partitions.
    RowCountChange { max_pct: f64, window: usize },
    /// Likewise for a column's null rate, in percentage points.
    NullRateChange {
        column: String,
        max_points: f64,
        window: usize,
    },
    /// Merge runs: bounds on what the batch does (rows inserted, updated, deleted, unchanged,
    /// stale), as counts or as percentages of the published rows.
    Changes(Vec<ChangeBound>),
}

/// One bound of a `changes` rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBound {
    /// `insert`, `update`, `delete`, `unchanged` or `stale`.
    #[serde(skip)]
    pub change: String,
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
    #[serde(default)]
    pub min_pct: Option<f64>,
    #[serde(default)]
    pub max_pct: Option<f64>,
}

/// The kinds of change a `changes` rule bounds (the values of `_change`).
pub const CHANGE_KINDS: &[&str] = &["insert", "update", "delete", "unchanged", "stale"];

/// A duration such as `30m`, `12h`, `2d`, `1w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    pub seconds: i64,
    pub text: &'static str,
}

impl MaxAge {
    /// Parses `<n><unit>` with unit `s`, `m`, `h`, `d` or `w`.
    pub fn parse(s: &str) -> Option<MaxAge> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
        let n: i64 = num.parse().ok()?;
        let (mult, text) = match unit {
            "s" => (1, "seconds"),
            "m" => (60, "minutes"),
            "h" => (3600, "hours"),
            "d" => (86_400, "days"),
            "w" => (604_800, "weeks"),
            _ => return None,
        };
        Some(MaxAge {
            seconds: n.checked_mul(mult)?,
            text,
        })
    }
}

/// Logical column types for `schema` rules: SQL or Arrow spellings, case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalType {
    String,
    Int64,
    Int32,
    Float64,
    Decimal(u8, i8),
    Date,
    Timestamp,
    Boolean,
}

impl LogicalType {
    /// Parses `string`/`varchar`/`utf8`, `bigint`/`int64`, `int`/`int32`, `double`/`float64`,
    /// `decimal(p,s)`, `date`, `timestamp`, `boolean`.
    pub fn parse(s: &str) -> Option<LogicalType> {
        let t = s.trim().to_ascii_lowercase().replace(' ', "");
        Some(match t.as_str() {
            "string" | "varchar" | "text" | "utf8" | "largeutf8" | "utf8view" => {
                LogicalType::String
            }
            "bigint" | "int64" | "long" => LogicalType::Int64,
            "int" | "integer" | "int32" => LogicalType::Int32,
            "double" | "float64" => LogicalType::Float64,
            "date" | "date32" => LogicalType::Date,
            "timestamp" => LogicalType::Timestamp,
            "boolean" | "bool" => LogicalType::Boolean,
            other => {
                let inner = other.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, sc) = inner.split_once(',')?;
                LogicalType::Decimal(p.parse().ok()?, sc.parse().ok()?)
            }
        })
    }

    /// True when an Arrow type is of this logical type.
    pub fn matches(&self, t: &arrow::datatypes::DataType) -> bool {
        use arrow::datatypes::DataType as D;
        match self {
            LogicalType::String => matches!(t, D::Utf8 | D::LargeUtf8 | D::Utf8View),
            LogicalType::Int64 => matches!(t, D::Int64),
            LogicalType::Int32 => matches!(t, D::Int32),
            LogicalType::Float64 => matches!(t, D::Float64),
            LogicalType::Decimal(p, s) => {
                matches!(t, D::Decimal128(tp, ts) | D::Decimal256(tp, ts) if tp == p && ts == s)
            }
            LogicalType::Date => matches!(t, D::Date32 | D::Date64),
            LogicalType::Timestamp => matches!(t, D::Timestamp(_, _)),
            LogicalType::Boolean => matches!(t, D::Boolean),
        }
    }
}

impl std::fmt::Display for LogicalType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogicalType::String => write!(f, "string"),
            LogicalType::Int64 => write!(f, "bigint"),
            LogicalType::Int32 => write!(f, "int"),
            LogicalType::Float64 => write!(f, "double"),
            LogicalType::Decimal(p, s) => write!(f, "decimal({p},{s})"),
            LogicalType::Date => write!(f, "date"),
            LogicalType::Timestamp => write!(f, "timestamp"),
            LogicalType::Boolean => write!(f, "boolean"),
        }
    }
}

/// Which rows a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The run's new data only (table `staged`).
    #[default]
    Staged,
    /// The table as it would be after publishing: published minus replaced partitions plus
    /// staged (table `result`), for table-wide uniqueness and totals.
    Result,
}

impl Scope {
    /// The SQL table the rule reads.
    pub fn table(self) -> &'static str {
        match self {
            Scope::Staged => "staged",
            Scope::Result => "result",
        }
    }
}

/// How many failing rows a row-level rule tolerates (both bounds, when given, must hold).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Threshold {
    /// The rule passes while failing rows are at most this many.
    pub max_failing_rows: Option<u64>,
    /// The rule passes while failing rows are at most this percentage of checked rows.
    pub max_failing_pct: Option<f64>,
}

impl Threshold {
    /// True when `failing` of `checked` rows is within the threshold (zero failures by default).
    pub fn allows(&self, failing: u64, checked: u64) -> bool {
        if self.max_failing_rows.is_none() && self.max_failing_pct.is_none() {
            return failing == 0;
        }
        let rows_ok = self.max_failing_rows.is_none_or(|m| failing <= m);
        let pct_ok = self.max_failing_pct.is_none_or(|p| {
            let pct = if checked == 0 {
                0.0
            } else {
                failing as f64 * 100.0 / checked as f64
            };
            pct <= p
        });
        rows_ok && pct_ok
    }
}

impl RuleKind {
    /// The YAML key of this kind.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::NotNull(_) => "not_null",
            RuleKind::Unique(_) => "unique",
            RuleKind::AcceptedValues { .. } => "accepted_values",
            RuleKind::Range { .. } => "range",
            RuleKind::RowCount { .. } => "row_count",
            RuleKind::Expression(_) => "expression",
            RuleKind::Sql(_) => "sql",
            RuleKind::Freshness { .. } => "freshness",
            RuleKind::Schema { .. } => "schema",
            RuleKind::SchemaChange { .. } => "schema_change",
            RuleKind::Relationships { .. } => "relationships",
            RuleKind::RowCountChange { .. } => "row_count_change",
            RuleKind::NullRateChange { .. } => "null_rate_change",
            RuleKind::Changes(_) => "changes",
        }
    }
}

/// One validated audit rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub kind: RuleKind,
    pub threshold: Threshold,
    pub scope: Scope,
    /// `on_fail: quarantine`: failing rows are held back and the others publish.
    pub quarantine: bool,
    /// The rule file and the line where the rule starts, for error messages.
    pub file: PathBuf,
    pub line: usize,
}

impl Rule {
    /// `file:line` of the rule.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    severity: Severity,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    not_null: Option<Vec<String>>,
    unique: Option<Vec<String>>,
    accepted_values: Option<RawAcceptedValues>,
    range: Option<RawRange>,
    row_count: Option<RawRowCount>,
    expression: Option<String>,
    sql: Option<String>,
    freshness: Option<RawFreshness>,
    schema: Option<RawSchema>,
    schema_change: Option<String>,
    relationships: Option<RawRelationships>,
    row_count_change: Option<RawRowCountChange>,
    null_rate_change: Option<RawNullRateChange>,
    changes: Option<BTreeMap<String, ChangeBound>>,
    max_failing_rows: Option<u64>,
    max_failing_pct: Option<f64>,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    on_fail: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreshness {
    column: String,
    max_age: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelationships {
    column: String,
    to: String,
    field: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRowCountChange {
    max_pct: f64,
    #[serde(default = "default_window")]
    window: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNullRateChange {
    column: String,
    max_points: f64,
    #[serde(default = "default_window")]
    window: usize,
}

fn default_window() -> usize {
    7
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    /// Kept in file order (serde_yaml mappings are ordered).
    columns: serde_yaml::Mapping,
    #[serde(default)]
    allow_extra: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcceptedValues {
    column: String,
    values: Vec<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    column: String,
    #[serde(default)]
    min: Option<serde_yaml::Value>,
    #[serde(default)]
    max: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRowCount {
    #[serde(default)]
    min: Option<u64>,
    #[serde(default)]
    max: Option<u64>,
}

/// One parsed rule file.
#[derive(Debug, Clone)]
pub struct RuleFile {
    pub path: PathBuf,
    /// The file's bytes, hashed into every run id.
    pub text: String,
    pub rules: Vec<Rule>,
}

const KINDS: &str = "not_null, unique, accepted_values, range, row_count, expression, sql, \
                     freshness, relationships, schema, schema_change, row_count_change, \
                     null_rate_change or changes";

impl RuleFile {
    /// Parses and validates one rule file with no variables.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfError> {
        Self::parse_with_vars(path, text, &BTreeMap::new())
    }

    /// Parses and validates one rule file, filling `{name}` placeholders from `vars` (the job's
    /// `vars:`), so one rule file can serve several jobs.
    pub fn parse_with_vars(
        path: &Path,
        raw_text: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<Self, ConfError> {
        let (file, problems) = Self::check(path, raw_text, vars);
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(ConfError::many(problems))
        }
    }

    /// Parses and validates one rule file, rule by rule: the valid rules, and every problem of
    /// the others (one bad rule hides nothing of the rest).
    pub fn check(
        path: &Path,
        raw_text: &str,
        vars: &BTreeMap<String, String>,
    ) -> (Self, Vec<ConfError>) {
        let mut problems = Vec::new();
        let text = &fill_vars(path, raw_text, vars, &mut problems);
        // Lines with a placeholder left unfilled: their rules are not valid, only reported.
        let unfilled: Vec<usize> = problems.iter().filter_map(problem_line).collect();
        let mut file = RuleFile {
            path: path.to_path_buf(),
            text: raw_text.to_string(),
            rules: Vec::new(),
        };
        if text.trim().is_empty() {
            problems.push(ConfError::at(
                path,
                1,
                "empty rule file: expected `rules:` with a list of rules",
            ));
            return (file, problems);
        }
        for (line, stop, raw) in raw_rules(path, text, &mut problems) {
            if unfilled.iter().any(|l| (line..stop).contains(l)) {
                continue;
            }
            match validate(path, line, raw) {
                Ok(rule) => file.rules.push(rule),
                Err(e) => problems.push(e),
            }
        }
        (file, problems)
    }
}

/// The line of a problem at a line.
fn problem_line(problem: &ConfError) -> Option<usize> {
    match problem {
        ConfError::Invalid { line, .. } => Some(*line),
        _ => None,
    }
}

/// The rules of a rule file as written, each with the line it starts at and the line after its
/// last. Each rule is read on its own, so a problem in one (reported in `problems`) leaves the
/// others readable.
fn raw_rules(
    path: &Path,
    text: &str,
    problems: &mut Vec<ConfError>,
) -> Vec<(usize, usize, RawRule)> {
    let value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            problems.push(ConfError::yaml(path, &e));
            return Vec::new();
        }
    };
    let Some(map) = value.as_mapping() else {
        problems.push(ConfError::at(
            path,
            1,
            "expected `rules:` with a list of rules",
        ));
        return Vec::new();
    };
    for k in map.keys() {
        let key = k.as_str().unwrap_or_default();
        if key != "rules" {
            let line = super::line_of_key(text, key);
            problems.push(super::unknown_key(path, line, key, &["rules"]));
        }
    }
    let items = match map.get("rules") {
        Some(serde_yaml::Value::Sequence(items)) => items,
        Some(_) => {
            let line = super::line_of_key(text, "rules");
            problems.push(ConfError::at(path, line, "rules: expected a list of rules"));
            return Vec::new();
        }
        None => {
            problems.push(ConfError::at(path, 1, "missing field `rules`"));
            return Vec::new();
        }
    };
    let (starts, end) = rule_lines(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = item
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!("rule `{}`: ", n.trim()))
            .unwrap_or_default();
        let Some(&start) = starts.get(i).filter(|_| starts.len() == items.len()) else {
            // Rules not one per block item (a flow-style list): read from the parsed value,
            // which has no positions.
            let line = starts.get(i).copied().unwrap_or(1);
            match serde_yaml::from_value::<RawRule>(item.clone()) {
                Ok(raw) => out.push((line, line + 1, raw)),
                Err(e) => problems.push(ConfError::at(
                    path,
                    line,
                    format!("{name}{}", super::yaml_message(&e)),
                )),
            }
            continue;
        };
        let stop = starts.get(i + 1).copied().unwrap_or(end);
        let chunk: String = lines[start - 1..stop - 1].concat();
        match serde_yaml::from_str::<Vec<RawRule>>(&chunk) {
            Ok(mut raw) if raw.len() == 1 => out.push((start, stop, raw.remove(0))),
            Ok(_) => problems.push(ConfError::at(
                path,
                start,
                format!("{name}expected one rule"),
            )),
            Err(e) => {
                let line = start - 1 + e.location().map_or(1, |l| l.line());
                // The chunk is a list of one rule: serde's path starts with its index.
                let message = super::yaml_message(&e);
                let message = [".[0].", ".[0]: ", "[0].", "[0]: "]
                    .iter()
                    .find_map(|p| message.strip_prefix(p))
                    .unwrap_or(&message);
                problems.push(ConfError::at(path, line, format!("{name}{message}")));
            }
        }
    }
    out
}

/// Replaces `{name}` by `vars[name]`; a placeholder with no value is a problem at its line (and
/// stays as it is).
fn fill_vars(
    path: &Path,
    text: &str,
    vars: &BTreeMap<String, String>,
    problems: &mut Vec<ConfError>,
) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_len];
            let is_placeholder =
                name_len > 0 && after[name_len..].starts_with('}') && super::is_identifier(name);
            if !is_placeholder {
                out.push('{');
                rest = after;
                continue;
            }
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    problems.push(ConfError::at(
                        path,
                        i + 1,
                        format!(
                            "`{{{name}}}` has no value: define it under `vars:` in the job file"
                        ),
                    ));
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            }
            rest = &after[name_len + 1..];
        }
        out.push_str(rest);
    }
    out
}

/// Lines where list items under `rules:` begin (one per rule, in order), and the line after
/// the last one's block (the next top-level key, or past the end).
fn rule_lines(text: &str) -> (Vec<usize>, usize) {
    let mut out = Vec::new();
    let mut indent: Option<usize> = None;
    let mut in_rules = false;
    let mut end = text.split_inclusive('\n').count() + 1;
    for (i, l) in text.lines().enumerate() {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let ind = l.len() - trimmed.len();
        if ind == 0 && !trimmed.starts_with('-') {
            if in_rules && !out.is_empty() {
                end = end.min(i + 1);
            }
            in_rules = trimmed.starts_with("rules:");
            continue;
        }
        if in_rules && trimmed.starts_with('-') {
            match indent {
                None => {
                    indent = Some(ind);
                    out.push(i + 1);
                }
                Some(x) if x == ind => out.push(i + 1),
                _ => {}
            }
        }
    }
    (out, end)
}

fn literal(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A rule as written, validated: its one kind and the options that kind takes.
fn validate(path: &Path, line: usize, mut r: RawRule) -> Result<Rule, ConfError> {
    let name = r.name.trim().to_string();
    let err = |msg: String| ConfError::at(path, line, format!("rule `{name}`: {msg}"));
    if name.is_empty() {
        return Err(ConfError::at(path, line, "rule name is empty"));
    }
    let mut kinds = row_kinds(&mut r, &err)?;
    kinds.extend(table_kinds(path, &mut r, &err)?);
    let threshold = Threshold {
        max_failing_rows: r.max_failing_rows,
        max_failing_pct: r.max_failing_pct,
    };
    if let Some(p) = threshold.max_failing_pct
        && !(0.0..=100.0).contains(&p)
    {
        return Err(err(format!(
            "max_failing_pct: {p} is not a percentage between 0 and 100"
        )));
    }
    match kinds.len() {
        1 => {
            let kind = kinds.pop().expect("one kind");
            let row_level = matches!(
                kind,
                RuleKind::NotNull(_)
                    | RuleKind::Unique(_)
                    | RuleKind::AcceptedValues { .. }
                    | RuleKind::Range { .. }
                    | RuleKind::Expression(_)
                    | RuleKind::Sql(_)
                    | RuleKind::Relationships { .. }
            );
            if !row_level && threshold != Threshold::default() {
                return Err(err(format!(
                    "max_failing_rows / max_failing_pct apply to row-level rules, not to `{}`",
                    kind.name()
                )));
            }
            let scoped = row_level || matches!(kind, RuleKind::RowCount { .. });
            if !scoped && r.scope != Scope::Staged {
                return Err(err(format!(
                    "scope applies to row-level rules and row_count, not to `{}`",
                    kind.name()
                )));
            }
            let quarantine = match r.on_fail.as_deref() {
                None | Some("fail") => false,
                Some("quarantine") => {
                    let predicate = matches!(
                        kind,
                        RuleKind::NotNull(_)
                            | RuleKind::AcceptedValues { .. }
                            | RuleKind::Range { .. }
                            | RuleKind::Expression(_)
                    );
                    if !predicate || r.scope != Scope::Staged {
                        return Err(err(format!(
                            "on_fail: quarantine applies to not_null, accepted_values, range and \
                             expression rules over staged data, not to `{}`",
                            kind.name()
                        )));
                    }
                    true
                }
                Some(other) => {
                    return Err(err(format!(
                        "on_fail: `{other}`; expected fail or quarantine"
                    )));
                }
            };
            Ok(Rule {
                name,
                severity: r.severity,
                kind,
                threshold,
                scope: r.scope,
                quarantine,
                file: path.to_path_buf(),
                line,
            })
        }
        0 => Err(err(format!("expected one of {KINDS}"))),
        _ => Err(err(format!(
            "has {} kinds ({}); a rule has exactly one",
            kinds.len(),
            kinds
                .iter()
                .map(RuleKind::name)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The kinds that judge rows or counts (`not_null` … `sql`) a rule as written has, taken out.
fn row_kinds(
    r: &mut RawRule,
    err: &dyn Fn(String) -> ConfError,
) -> Result<Vec<RuleKind>, ConfError> {
    let mut kinds: Vec<RuleKind> = Vec::new();
    let nonempty = |cols: Vec<String>, what: &str| -> Result<Vec<String>, ConfError> {
        if cols.is_empty() || cols.iter().any(|c| c.trim().is_empty()) {
            Err(err(format!("{what}: expected a list of column names")))
        } else {
            Ok(cols)
        }
    };
    if let Some(c) = r.not_null.take() {
        kinds.push(RuleKind::NotNull(nonempty(c, "not_null")?));
    }
    if let Some(c) = r.unique.take() {
        kinds.push(RuleKind::Unique(nonempty(c, "unique")?));
    }
    if let Some(a) = r.accepted_values.take() {
        if a.values.is_empty() {
            return Err(err(
                "accepted_values.values: expected at least one value".into()
            ));
        }
        let values = a
            .values
            .iter()
            .map(|v| {
                literal(v).ok_or_else(|| {
                    err("accepted_values.values: expected strings, numbers or booleans".into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        kinds.push(RuleKind::AcceptedValues {
            column: a.column,
            values,
        });
    }
    if let Some(rg) = r.range.take() {
        let bound =
            |v: Option<serde_yaml::Value>, which: &str| -> Result<Option<String>, ConfError> {
                match v {
                    None | Some(serde_yaml::Value::Null) => Ok(None),
                    Some(v) => literal(&v).map(Some).ok_or_else(|| {
                        err(format!(
                            "range.{which}: expected a number, a date or a string"
                        ))
                    }),
                }
            };
        let min = bound(rg.min, "min")?;
        let max = bound(rg.max, "max")?;
        if min.is_none() && max.is_none() {
            return Err(err("range: expected min, max or both".into()));
        }
        kinds.push(RuleKind::Range {
            column: rg.column,
            min,
            max,
        });
    }
    if let Some(rc) = r.row_count.take() {
        if rc.min.is_none() && rc.max.is_none() {
            return Err(err("row_count: expected min, max or both".into()));
        }
        if let (Some(a), Some(b)) = (rc.min, rc.max)
            && a > b
        {
            return Err(err(format!("row_count: min {a} is above max {b}")));
        }
        kinds.push(RuleKind::RowCount {
            min: rc.min,
            max: rc.max,
        });
    }
    if let Some(e) = r.expression.take() {
        if e.trim().is_empty() {
            return Err(err("expression: expected a boolean SQL expression".into()));
        }
        kinds.push(RuleKind::Expression(e.trim().to_string()));
    }
    if let Some(q) = r.sql.take() {
        if q.trim().is_empty() {
            return Err(err("sql: expected a SELECT query".into()));
        }
        kinds.push(RuleKind::Sql(q.trim().trim_end_matches(';').to_string()));
    }
    Ok(kinds)
}

/// The kinds that judge the table against time, schemas, other tables or history
/// (`freshness` … `null_rate_change`) a rule as written has, taken out.
fn table_kinds(
    path: &Path,
    r: &mut RawRule,
    err: &dyn Fn(String) -> ConfError,
) -> Result<Vec<RuleKind>, ConfError> {
    let mut kinds: Vec<RuleKind> = Vec::new();
    if let Some(f) = r.freshness.take() {
        let max_age = MaxAge::parse(&f.max_age).ok_or_else(|| {
            err(format!(
                "freshness.max_age: `{}` is not a duration; expected e.g. 30m, 12h, 2d or 1w",
                f.max_age
            ))
        })?;
        kinds.push(RuleKind::Freshness {
            column: f.column,
            max_age,
        });
    }
    if let Some(sc) = r.schema.take() {
        if sc.columns.is_empty() {
            return Err(err(
                "schema.columns: expected at least one `name: type`".into()
            ));
        }
        let columns =
            sc.columns
                .iter()
                .map(|(c, t)| match (c.as_str(), t.as_str()) {
                    (Some(c), Some(t)) => Ok((c.to_string(), t.to_string())),
                    _ => Err(err(
                        "schema.columns: expected `name: type` pairs of strings".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|(c, t)| {
                    LogicalType::parse(&t).map(|lt| (c.clone(), lt)).ok_or_else(|| {
                    err(format!(
                        "schema.columns.{c}: unknown type `{t}`; expected string, bigint, int, \
                         double, decimal(p,s), date, timestamp or boolean"
                    ))
                })
                })
                .collect::<Result<Vec<_>, _>>()?;
        kinds.push(RuleKind::Schema {
            columns,
            allow_extra: sc.allow_extra,
        });
    }
    if let Some(rel) = r.relationships.take() {
        if rel.to.trim().is_empty() {
            return Err(err(
                "relationships.to: expected a table location or a job file".into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        kinds.push(RuleKind::Relationships {
            column: rel.column,
            to: super::resolve_location(&super::absolute(base), &rel.to),
            field: rel.field,
        });
    }
    if let Some(mode) = r.schema_change.take() {
        let additive = match mode.as_str() {
            "forbid" => false,
            "additive" => true,
            other => {
                return Err(err(format!(
                    "schema_change: `{other}`; expected forbid or additive"
                )));
            }
        };
        kinds.push(RuleKind::SchemaChange { additive });
    }
    if let Some(c) = r.row_count_change.take() {
        if c.max_pct < 0.0 || c.window == 0 {
            return Err(err(
                "row_count_change: expected max_pct >= 0 and window >= 1".into(),
            ));
        }
        kinds.push(RuleKind::RowCountChange {
            max_pct: c.max_pct,
            window: c.window,
        });
    }
    if let Some(c) = r.null_rate_change.take() {
        if !(0.0..=100.0).contains(&c.max_points) || c.window == 0 {
            return Err(err(
                "null_rate_change: expected max_points in 0..=100 and window >= 1".into(),
            ));
        }
        kinds.push(RuleKind::NullRateChange {
            column: c.column,
            max_points: c.max_points,
            window: c.window,
        });
    }
    if let Some(bounds) = r.changes.take() {
        let mut out = Vec::new();
        for (change, mut b) in bounds {
            if !CHANGE_KINDS.contains(&change.as_str()) {
                return Err(err(format!(
                    "changes: `{change}` is not a kind of change; expected {}",
                    CHANGE_KINDS.join(", ")
                )));
            }
            let pcts = [b.min_pct, b.max_pct];
            if pcts.iter().flatten().any(|p| !(0.0..=100.0).contains(p))
                || [b.min, b.max, b.min_pct.map(|_| 0), b.max_pct.map(|_| 0)]
                    .iter()
                    .all(Option::is_none)
            {
                return Err(err(format!(
                    "changes.{change}: expected min, max (rows) or min_pct, max_pct (0..=100, of \
                     the published rows)"
                )));
            }
            b.change = change;
            out.push(b);
        }
        if out.is_empty() {
            return Err(err(format!(
                "changes: expected bounds for at least one of {}",
                CHANGE_KINDS.join(", ")
            )));
        }
        kinds.push(RuleKind::Changes(out));
    }
    Ok(kinds)
}

/// Every rule of a job, with names unique across its files.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    files: Vec<RuleFile>,
}

impl RuleSet {
    /// Checks that rule names are unique across files.
    pub fn new(files: Vec<RuleFile>) -> Result<Self, ConfError> {
        let (set, problems) = Self::check(files);
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(ConfError::many(problems))
        }
    }

    /// The rules of `files` with names unique across them: a rule whose name is already used
    /// is a problem, and left out.
    pub fn check(mut files: Vec<RuleFile>) -> (Self, Vec<ConfError>) {
        let mut problems = Vec::new();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for file in &mut files {
            file.rules.retain(|rule| match seen.get(&rule.name) {
                Some(first) => {
                    problems.push(ConfError::at(
                        &rule.file,
                        rule.line,
                        format!(
                            "rule name `{}` is already used at {first}; names must be unique within a job",
                            rule.name,
                        ),
                    ));
                    false
                }
                None => {
                    seen.insert(rule.name.clone(), rule.location());
                    true
                }
            });
        }
        (RuleSet { files }, problems)
    }

    /// All rules, in file order.
    pub fn rules(&self) -> Vec<&Rule> {
        self.files.iter().flat_map(|f| &f.rules).collect()
    }

    /// The rule files.
    pub fn files(&self) -> &[RuleFile] {
        &self.files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "rules:
  - name: order_id_present
    not_null: [order_id, customer_id]
  - name: one_row_per_order
    unique: [order_id]
  - name: known_status
    accepted_values: {column: status, values: [placed, shipped, returned]}
  - name: sane_amount
    range: {column: amount, min: 0, max: 100000}
  - name: not_empty
    row_count: {min: 1}
  - name: positive_amount
    expression: amount > 0
  - name: no_future_orders
    severity: warn
    sql: SELECT * FROM staged WHERE order_date > DATE '2030-01-01'
";

    #[test]
    fn parses_every_kind_with_its_line() {
        let f = RuleFile::parse(Path::new("a.yaml"), RULES).unwrap();
        let kinds: Vec<_> = f.rules.iter().map(|r| r.kind.name()).collect();
        assert_eq!(
            kinds,
            [
                "not_null",
                "unique",
                "accepted_values",
                "range",
                "row_count",
                "expression",
                "sql"
            ]
        );
        assert_eq!(f.rules[0].line, 2);
        assert_eq!(f.rules[6].line, 14);
        assert_eq!(f.rules[6].severity, Severity::Warn);
        assert_eq!(
            f.rules[2].kind,
            RuleKind::AcceptedValues {
                column: "status".into(),
                values: vec!["'placed'".into(), "'shipped'".into(), "'returned'".into()]
            }
        );
    }

    #[test]
    fn two_kinds_in_one_rule_is_an_error_at_its_line() {
        let text = "rules:\n  - name: a\n    not_null: [x]\n  - name: b\n    not_null: [x]\n    unique: [x]\n";
        let err = RuleFile::parse(Path::new("r.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.yaml:4: rule `b`: has 2 kinds"), "{err}");
    }

    #[test]
    fn no_kind_unknown_key_and_bad_severity() {
        let err = RuleFile::parse(Path::new("r.yaml"), "rules:\n  - name: a\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected one of not_null"), "{err}");
        let err = RuleFile::parse(
            Path::new("r.yaml"),
            "rules:\n  - name: a\n    not_nul: [x]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.yaml:3:") && err.contains("unknown field `not_nul`"),
            "{err}"
        );
        let err = RuleFile::parse(
            Path::new("r.yaml"),
            "rules:\n  - name: a\n    severity: fatal\n    not_null: [x]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("r.yaml:3:") && err.contains("unknown variant `fatal`"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_across_files_are_refused() {
        let a = RuleFile::parse(
            Path::new("a.yaml"),
            "rules:\n  - name: x\n    not_null: [c]\n",
        )
        .unwrap();
        let b = RuleFile::parse(
            Path::new("b.yaml"),
            "rules:\n  - name: y\n    not_null: [c]\n  - name: x\n    unique: [c]\n",
        )
        .unwrap();
        let err = RuleSet::new(vec![a, b]).unwrap_err().to_string();
        assert!(
            err.starts_with("b.yaml:4:") && err.contains("a.yaml:2"),
            "{err}"
        );
    }

    #[test]
    fn thresholds_freshness_and_schema() {
        let text = "rules:
  - name: mostly_present
    not_null: [a]
    max_failing_pct: 5
  - name: fresh
    freshness: {column: ts, max_age: 2d}
  - name: shape
    schema: {columns: {id: BIGINT, name: Utf8, amount: 'decimal(18, 2)'}, allow_extra: true}
";
        let f = RuleFile::parse(Path::new("r.yaml"), text).unwrap();
        assert_eq!(f.rules[0].threshold.max_failing_pct, Some(5.0));
        assert!(f.rules[0].threshold.allows(5, 100));
        assert!(!f.rules[0].threshold.allows(6, 100));
        assert!(Threshold::default().allows(0, 10) && !Threshold::default().allows(1, 10));
        let rows = Threshold {
            max_failing_rows: Some(3),
            max_failing_pct: None,
        };
        assert!(rows.allows(2, 10) && rows.allows(3, 10) && !rows.allows(4, 10));
        assert_eq!(
            f.rules[1].kind,
            RuleKind::Freshness {
                column: "ts".into(),
                max_age: MaxAge {
                    seconds: 172_800,
                    text: "days"
                }
            }
        );
        assert_eq!(
            f.rules[2].kind,
            RuleKind::Schema {
                columns: vec![
                    ("id".into(), LogicalType::Int64),
                    ("name".into(), LogicalType::String),
                    ("amount".into(), LogicalType::Decimal(18, 2)),
                ],
                allow_extra: true
            }
        );
        let bad = |t: &str| {
            RuleFile::parse(Path::new("r.yaml"), t)
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad("rules:\n  - name: x\n    row_count: {min: 1}\n    max_failing_rows: 2\n")
                .contains("apply to row-level rules")
        );
        assert!(
            bad("rules:\n  - name: x\n    freshness: {column: t, max_age: soon}\n")
                .contains("not a duration")
        );
        assert!(
            bad("rules:\n  - name: x\n    schema: {columns: {a: blob}}\n")
                .contains("unknown type `blob`")
        );
        assert!(
            bad("rules:\n  - name: x\n    not_null: [a]\n    max_failing_pct: 150\n")
                .contains("not a percentage")
        );
    }

    #[test]
    fn vars_fill_placeholders_and_missing_ones_are_errors() {
        let vars: BTreeMap<String, String> = [
            ("min".to_string(), "5".to_string()),
            ("col".to_string(), "amount".to_string()),
        ]
        .into();
        let text = "rules:\n  - name: r\n    range: {column: {col}, min: {min}}\n";
        let f = RuleFile::parse_with_vars(Path::new("r.yaml"), text, &vars).unwrap();
        assert_eq!(
            f.rules[0].kind,
            RuleKind::Range {
                column: "amount".into(),
                min: Some("5".into()),
                max: None
            }
        );
        assert_eq!(f.text, text, "the run id hashes the file as written");
        let err = RuleFile::parse_with_vars(
            Path::new("r.yaml"),
            "rules:\n  - name: r\n    expression: x > {limit}\n",
            &vars,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("r.yaml:3:") && err.contains("`{limit}` has no value"),
            "{err}"
        );
    }

    #[test]
    fn every_bad_rule_is_reported_and_the_good_ones_kept() {
        let text = "rules:
  - name: ranged
    rnage: {column: a, min: 0}
  - name: fine
    not_null: [a]
  - name: typed
    not_null: 3
  - name: doubled
    not_null: [a]
    unique: [a]
  - name: placeholder
    expression: a > {limit}
  # a comment between rules
  - {name: flow, unique: [b]}
";
        let (file, problems) = RuleFile::check(Path::new("r.yaml"), text, &BTreeMap::new());
        let names: Vec<&str> = file.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["fine", "flow"]);
        let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(
            messages[0].starts_with("r.yaml:12: `{limit}` has no value"),
            "{messages:#?}"
        );
        assert!(
            messages[1].starts_with("r.yaml:3: rule `ranged`: unknown field `rnage`")
                && messages[1].ends_with("did you mean `range`?"),
            "{messages:#?}"
        );
        assert!(
            messages[2].starts_with("r.yaml:7: rule `typed`: not_null: invalid type"),
            "{messages:#?}"
        );
        assert!(
            messages[3].starts_with("r.yaml:8: rule `doubled`: has 2 kinds"),
            "{messages:#?}"
        );
        // The strict parse gives them all too, as one error.
        let err = RuleFile::parse(Path::new("r.yaml"), text).unwrap_err();
        assert_eq!(err.problems().len(), 4, "{err}");
    }

    #[test]
    fn structural_problems_of_the_file() {
        let bad = |t: &str| {
            let (_, problems) = RuleFile::check(Path::new("r.yaml"), t, &BTreeMap::new());
            problems.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            bad("rules: [\n"),
            [bad("rules: [\n")[0].clone()],
            "a syntax error is one problem"
        );
        assert!(bad("rules: [\n")[0].starts_with("r.yaml:"));
        let top = bad("rule:\n  - name: a\n    not_null: [a]\n");
        assert!(
            top.iter()
                .any(|m| m.starts_with("r.yaml:1: unknown key `rule`; did you mean `rules`?")),
            "{top:?}"
        );
        assert!(bad("rules: 3\n")[0].contains("expected a list of rules"));
        // Rules after a top-level key that follows them are still found by their lines.
        let (file, problems) = RuleFile::check(
            Path::new("r.yaml"),
            "rules:\n  - name: a\n    not_null: [a]\nextra: 1\n",
            &BTreeMap::new(),
        );
        assert_eq!(file.rules.len(), 1);
        assert_eq!(file.rules[0].line, 2);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .starts_with("r.yaml:4: unknown key `extra`")
        );
    }

    #[test]
    fn every_duplicate_name_is_reported() {
        let a = RuleFile::parse(
            Path::new("a.yaml"),
            "rules:\n  - name: x\n    not_null: [c]\n  - name: y\n    not_null: [c]\n",
        )
        .unwrap();
        let b = RuleFile::parse(
            Path::new("b.yaml"),
            "rules:\n  - name: y\n    not_null: [c]\n  - name: x\n    unique: [c]\n",
        )
        .unwrap();
        let (set, problems) = RuleSet::check(vec![a, b]);
        assert_eq!(set.rules().len(), 2);
        let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].starts_with("b.yaml:2:") && messages[0].contains("a.yaml:4"));
        assert!(messages[1].starts_with("b.yaml:4:") && messages[1].contains("a.yaml:2"));
    }

    #[test]
    fn literals_are_quoted() {
        let text =
            "rules:\n  - name: a\n    accepted_values: {column: s, values: [\"o'k\", 3, true]}\n";
        let f = RuleFile::parse(Path::new("r.yaml"), text).unwrap();
        assert_eq!(
            f.rules[0].kind,
            RuleKind::AcceptedValues {
                column: "s".into(),
                values: vec!["'o''k'".into(), "3".into(), "true".into()]
            }
        );
    }
}
