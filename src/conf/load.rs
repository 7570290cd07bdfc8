//! How a job loads its table: `mode: overwrite` (each run replaces the partitions it writes) or
//! `mode: merge` (an upsert of the batch by the natural key, `merge:`), optionally reading
//! incrementally from a watermark that moves with the data (`incremental:`).

use std::path::Path;

use serde::Deserialize;

use super::rules::MaxAge;
use super::{ConfError, line_of_key};

/// `mode:` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMode {
    /// Each run replaces the partitions it produces.
    #[default]
    Overwrite,
    /// Each run upserts its batch into the table by `key`.
    Merge,
}

/// What to do with two batch rows of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dedupe {
    /// Fail the run (exit 3), listing the keys.
    #[default]
    Error,
    /// Keep the row with the greatest `sequence_by`.
    Latest,
}

/// `merge:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMerge {
    #[serde(default)]
    pub sequence_by: Option<String>,
    #[serde(default)]
    pub dedupe: Dedupe,
    #[serde(default)]
    pub delete_when: Option<String>,
    #[serde(default)]
    pub control_columns: Vec<String>,
    #[serde(default)]
    pub update_columns: Option<Vec<String>>,
}

/// `incremental:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncremental {
    pub cursor: String,
    #[serde(default)]
    pub lookback: Option<serde_yaml::Value>,
    pub initial: serde_yaml::Value,
}

/// The validated `merge:` section of a `mode: merge` job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeConf {
    /// A batch row changes a published row only when its value here is greater.
    pub sequence_by: Option<String>,
    pub dedupe: Dedupe,
    /// A SQL predicate over batch rows: such a row deletes its key.
    pub delete_when: Option<String>,
    /// Batch columns the merge uses and the table does not store.
    pub control_columns: Vec<String>,
    /// The columns an update changes (`None`: every column of the batch).
    pub update_columns: Option<Vec<String>>,
}

/// How far before the watermark an incremental run reads again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    /// A duration, for a timestamp or date cursor (`2h`, `1d`).
    Duration(MaxAge),
    /// A count, for an integer cursor.
    Count(i64),
}

/// The validated `incremental:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalConf {
    /// A column of the transform's output.
    pub cursor: String,
    pub lookback: Lookback,
    /// The watermark before the first publish, as the body of a SQL literal.
    pub initial: String,
}

/// `lookback:` text: `<n><s|m|h|d|w>` or a whole number.
pub fn parse_lookback(text: &str) -> Option<Lookback> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return (n >= 0).then_some(Lookback::Count(n));
    }
    MaxAge::parse(t).map(Lookback::Duration)
}

fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Validates `mode`, `merge` and `incremental` of a job file (the column checks need the
/// transform's schema and happen when it is planned). Problems are pushed, with their lines.
pub(super) fn validate(
    path: &Path,
    text: &str,
    mode: LoadMode,
    merge: Option<RawMerge>,
    incremental: Option<RawIncremental>,
    transform: &str,
    problems: &mut Vec<ConfError>,
) -> (Option<MergeConf>, Option<IncrementalConf>) {
    let line = |key: &str| line_of_key(text, key);
    let mut problem =
        |key: &str, message: String| problems.push(ConfError::at(path, line(key), message));
    if mode == LoadMode::Overwrite && merge.is_some() {
        problem(
            "merge",
            "merge: only read by `mode: merge`; add `mode: merge` or remove the section".into(),
        );
    }
    if mode == LoadMode::Overwrite && incremental.is_some() {
        problem(
            "incremental",
            "incremental: needs `mode: merge` (an incremental batch is upserted by key; replacing \
             partitions with a window of rows would drop the rest)"
                .into(),
        );
    }
    let merge = (mode == LoadMode::Merge).then(|| merge.unwrap_or_default());
    let merge = merge.map(|m| {
        if m.dedupe == Dedupe::Latest && m.sequence_by.is_none() {
            problem(
                "dedupe",
                "merge.dedupe: `latest` needs `sequence_by` (the column that says which row is \
                 the latest); add it or use `dedupe: error`"
                    .into(),
            );
        }
        if m.delete_when
            .as_deref()
            .is_some_and(|d| d.trim().is_empty())
        {
            problem(
                "delete_when",
                "merge.delete_when: expected a SQL predicate such as \"op = 'D'\"".into(),
            );
        }
        if let Some(u) = &m.update_columns
            && u.is_empty()
        {
            problem(
                "update_columns",
                "merge.update_columns: expected at least one column (leave it out to update \
                 every column)"
                    .into(),
            );
        }
        for (field, cols) in [
            ("control_columns", &m.control_columns),
            (
                "update_columns",
                m.update_columns.as_ref().unwrap_or(&Vec::new()),
            ),
        ] {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(c) = cols.iter().find(|c| c.is_empty() || !seen.insert(*c)) {
                problem(
                    field,
                    format!("merge.{field}: column `{c}` is empty or listed twice"),
                );
            }
        }
        MergeConf {
            sequence_by: m.sequence_by,
            dedupe: m.dedupe,
            delete_when: m.delete_when,
            control_columns: m.control_columns,
            update_columns: m.update_columns,
        }
    });
    let incremental = incremental.and_then(|inc| {
        let lookback_text = inc.lookback.as_ref().map(scalar_text);
        let lookback = match lookback_text {
            None => Some(Lookback::Count(0)),
            Some(Some(t)) => parse_lookback(&t),
            Some(None) => None,
        };
        if lookback.is_none() {
            problem(
                "lookback",
                "incremental.lookback: expected a duration such as 2h, 30m or 1d (timestamp and \
                 date cursors) or a whole number (integer cursors)"
                    .into(),
            );
        }
        let initial = scalar_text(&inc.initial).filter(|s| !s.trim().is_empty());
        if initial.is_none() {
            problem(
                "initial",
                "incremental.initial: expected the watermark before the first publish, such as \
                 \"2024-01-01T00:00:00\", \"2024-01-01\" or 0"
                    .into(),
            );
        }
        if inc.cursor.trim().is_empty() {
            problem(
                "cursor",
                "incremental.cursor: expected a column of the transform's output".into(),
            );
        }
        Some(IncrementalConf {
            cursor: inc.cursor,
            lookback: lookback?,
            initial: initial?,
        })
    });
    if incremental.is_none() && transform.contains("{watermark}") {
        problem(
            "transform",
            "transform: `{watermark}` is only filled in for an `incremental:` job; add the \
             section or remove the placeholder"
                .into(),
        );
    }
    (merge, incremental)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookback_spellings() {
        assert_eq!(parse_lookback("0"), Some(Lookback::Count(0)));
        assert_eq!(parse_lookback("100"), Some(Lookback::Count(100)));
        assert!(matches!(parse_lookback("2h"), Some(Lookback::Duration(d)) if d.seconds == 7200));
        assert_eq!(parse_lookback("-1"), None);
        assert_eq!(parse_lookback("2 hours"), None);
    }
}
