//! Rules to SQL. Column names from YAML are quoted identifiers; `expression` and `sql` rules are
//! the author's own SQL, checked to be a single read-only query before use.

use crate::conf::rules::{MaxAge, RuleKind};

/// What the fused scan computes for a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanCheck<'r> {
    /// Rows for which `predicate` is TRUE fail. `provable`: the staged files' metadata may
    /// prove that no row does, and the scan then leaves the rule out.
    Rows { predicate: String, provable: bool },
    /// The table's row count is within bounds.
    RowCount { min: Option<u64>, max: Option<u64> },
    /// The newest value of `column` is recent enough.
    Freshness { column: &'r str, max_age: MaxAge },
}

/// A double-quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// For a row-level rule: the predicate that is TRUE for a failing row (never NULL).
pub fn failing_predicate(kind: &RuleKind) -> Option<String> {
    match kind {
        RuleKind::NotNull(cols) => Some(format!(
            "({})",
            cols.iter()
                .map(|c| format!("{} IS NULL", ident(c)))
                .collect::<Vec<_>>()
                .join(" OR ")
        )),
        RuleKind::AcceptedValues { column, values } => Some(format!(
            "({c} IS NOT NULL AND {c} NOT IN ({}))",
            values.join(", "),
            c = ident(column)
        )),
        RuleKind::Range { column, min, max } => {
            let c = ident(column);
            let mut out_of = Vec::new();
            if let Some(min) = min {
                out_of.push(format!("{c} < {min}"));
            }
            if let Some(max) = max {
                out_of.push(format!("{c} > {max}"));
            }
            Some(format!("({c} IS NOT NULL AND ({}))", out_of.join(" OR ")))
        }
        RuleKind::Expression(e) => Some(format!("(({e}) IS NOT TRUE)")),
        RuleKind::Unique(_)
        | RuleKind::RowCount { .. }
        | RuleKind::Sql(_)
        | RuleKind::Freshness { .. }
        | RuleKind::Schema { .. }
        | RuleKind::Relationships { .. }
        | RuleKind::SchemaChange { .. }
        | RuleKind::RowCountChange { .. }
        | RuleKind::NullRateChange { .. }
        | RuleKind::Changes(_) => None,
    }
}

/// The oldest acceptable newest value of a freshness rule: the logical date's midnight minus
/// `max_age`, as a timestamp literal.
pub fn freshness_cutoff(logical_date: chrono::NaiveDate, max_age_seconds: i64) -> String {
    let midnight = logical_date.and_hms_opt(0, 0, 0).expect("midnight exists");
    let cutoff = midnight - chrono::Duration::seconds(max_age_seconds);
    format!("TIMESTAMP '{}'", cutoff.format("%Y-%m-%d %H:%M:%S"))
}

/// One scan for all of a table's scan checks. Column 0 is the row count; for `checks[i]`,
/// column `1 + 2i` is its failing-row count (0 for `row_count`, judged on column 0; 1 for a
/// stale `freshness`) and column `2 + 2i` a value worth reporting as text (the newest value for
/// `freshness`, NULL otherwise).
pub fn aggregate_query(
    checks: &[&ScanCheck<'_>],
    table: &str,
    logical_date: chrono::NaiveDate,
) -> String {
    let mut cols = vec!["CAST(COUNT(*) AS BIGINT) AS \"__rows\"".to_string()];
    for (i, check) in checks.iter().enumerate() {
        let (failing, value) = match check {
            ScanCheck::Rows { predicate, .. } => (
                format!("{}({predicate})", crate::engine::COUNT_TRUE),
                "CAST(NULL AS VARCHAR)".to_string(),
            ),
            ScanCheck::Freshness { column, max_age } => {
                let newest = format!("MAX(CAST({} AS TIMESTAMP))", ident(column));
                let cutoff = freshness_cutoff(logical_date, max_age.seconds);
                (
                    format!("CAST(CASE WHEN {newest} >= {cutoff} THEN 0 ELSE 1 END AS BIGINT)"),
                    format!("CAST({newest} AS VARCHAR)"),
                )
            }
            ScanCheck::RowCount { .. } => (
                "CAST(0 AS BIGINT)".to_string(),
                "CAST(NULL AS VARCHAR)".to_string(),
            ),
        };
        cols.push(format!("{failing} AS \"r{i}\""));
        cols.push(format!("{value} AS \"v{i}\""));
    }
    format!("SELECT {} FROM {table}", cols.join(", "))
}

fn order_by(key: &[String]) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(
            " ORDER BY {}",
            key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
        )
    }
}

/// Sample rows failing a row-level rule, in key order.
pub fn sample_query(predicate: &str, table: &str, key: &[String], limit: usize) -> String {
    format!(
        "SELECT * FROM {table} WHERE {predicate}{} LIMIT {limit}",
        order_by(key)
    )
}

fn duplicates(cols: &[String], table: &str) -> String {
    let list = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let not_null = cols
        .iter()
        .map(|c| format!("{} IS NOT NULL", ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT {list}, CAST(COUNT(*) AS BIGINT) AS duplicate_rows FROM {table} WHERE {not_null} \
         GROUP BY {list} HAVING COUNT(*) > 1"
    )
}

/// Rows that share their `unique` columns with another row: (failing rows, duplicate groups).
pub fn unique_count_query(cols: &[String], table: &str) -> String {
    format!(
        "SELECT CAST(COALESCE(SUM(duplicate_rows), 0) AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM ({})",
        duplicates(cols, table)
    )
}

/// Sample duplicate groups with their row counts, in key order.
pub fn unique_sample_query(cols: &[String], table: &str, limit: usize) -> String {
    format!(
        "{}{} LIMIT {limit}",
        duplicates(cols, table),
        order_by(cols)
    )
}

/// Per partition: the partition columns, then rows and NULLs of `column` (BIGINT).
pub fn null_rate_query(column: &str, table: &str, partition_by: &[String]) -> String {
    let cols: Vec<String> = partition_by.iter().map(|c| ident(c)).collect();
    let mut select = cols.clone();
    select.push("CAST(COUNT(*) AS BIGINT)".into());
    select.push(format!(
        "CAST(COALESCE(SUM(CASE WHEN {} IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT)",
        ident(column)
    ));
    let group = if cols.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", cols.join(", "))
    };
    format!("SELECT {} FROM {table}{group}", select.join(", "))
}

/// The table name a `relationships` rule's target is registered under.
pub fn relationship_table(rule: &str) -> String {
    format!(
        "wap_target_{}",
        rule.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// The failing rows of a `relationships` rule: non-NULL values with no match in the target.
pub fn relationship_query(rule: &str, column: &str, field: &str, table: &str) -> String {
    format!(
        "SELECT * FROM {table} WHERE {c} IS NOT NULL AND {c} NOT IN \
         (SELECT {f} FROM {t} WHERE {f} IS NOT NULL)",
        c = ident(column),
        f = ident(field),
        t = relationship_table(rule)
    )
}

/// Rows returned by a `sql` rule.
pub fn sql_count_query(query: &str) -> String {
    format!("SELECT CAST(COUNT(*) AS BIGINT) FROM ({query}) AS failing")
}

/// Sample rows of a `sql` rule.
pub fn sql_sample_query(query: &str, limit: usize) -> String {
    format!("SELECT * FROM ({query}) AS failing LIMIT {limit}")
}

/// The query of a `changes` rule: one row per bound the merge's changes break, with the count
/// and the bound in words.
pub fn changes_query(bounds: &[crate::conf::rules::ChangeBound]) -> String {
    use crate::write::merge::{CHANGE_COLUMN, CHANGES};
    let mut parts = Vec::new();
    for b in bounds {
        let n = format!(
            "(SELECT count(*) FROM {CHANGES} WHERE {CHANGE_COLUMN} = '{}')",
            b.change
        );
        let published = "(SELECT count(*) FROM published)";
        let mut check = |broken: String, bound: String| {
            parts.push(format!(
                "SELECT '{}' AS change, {n} AS rows, {published} AS published_rows, '{bound}' AS bound \
                 WHERE {broken}",
                b.change
            ))
        };
        if let Some(min) = b.min {
            check(format!("{n} < {min}"), format!("at least {min}"));
        }
        if let Some(max) = b.max {
            check(format!("{n} > {max}"), format!("at most {max}"));
        }
        if let Some(p) = b.min_pct {
            check(
                format!("{n} * 100.0 < {p} * {published}"),
                format!("at least {p}% of the published rows"),
            );
        }
        if let Some(p) = b.max_pct {
            check(
                format!("{n} * 100.0 > {p} * {published}"),
                format!("at most {p}% of the published rows"),
            );
        }
    }
    parts.join(" UNION ALL ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates() {
        assert_eq!(
            failing_predicate(&RuleKind::NotNull(vec!["a".into(), "b\"c".into()])).unwrap(),
            "(\"a\" IS NULL OR \"b\"\"c\" IS NULL)"
        );
        assert_eq!(
            failing_predicate(&RuleKind::Range {
                column: "x".into(),
                min: Some("0".into()),
                max: None
            })
            .unwrap(),
            "(\"x\" IS NOT NULL AND (\"x\" < 0))"
        );
        assert_eq!(
            failing_predicate(&RuleKind::Expression("a > 0".into())).unwrap(),
            "((a > 0) IS NOT TRUE)"
        );
        assert!(failing_predicate(&RuleKind::Unique(vec!["a".into()])).is_none());
    }
}
