//! The audit plan: how each rule is evaluated, decided in one place ([`evaluation`]), and the
//! compile step that plans every query a rule will run before any data is written.
//!
//! | evaluation            | kinds                                               | reads                   |
//! |-----------------------|-----------------------------------------------------|-------------------------|
//! | metadata proof, else  | `not_null`, `accepted_values`, `range`, `expression` | staged footers, else    |
//! | the fused scan        | (`row_count`, `freshness`: the scan only)           | one scan per scope      |
//! | the schema            | `schema`                                            | nothing                 |
//! | its own query         | `unique` (see [`super::unique`]), `sql`,            | the rule's query        |
//! |                       | `relationships`                                     |                         |
//! | comparison with       | `schema_change`, `row_count_change`,                | the published manifest; |
//! | history               | `null_rate_change`                                  | for null rates, a query |

use datafusion::prelude::SessionContext;

pub use super::sql::ScanCheck;
use super::{AuditError, STAGED, sql};
use crate::conf::rules::{LogicalType, Rule, RuleKind, Scope};
use crate::table;

/// How one rule is evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation<'r> {
    /// Counted in the fused aggregate scan of its scope's table.
    Scan { scope: Scope, check: ScanCheck<'r> },
    /// Judged from the staged schema alone.
    Schema {
        columns: &'r [(String, LogicalType)],
        allow_extra: bool,
    },
    /// Counted by the `unique` strategies.
    Unique { scope: Scope, columns: &'r [String] },
    /// Counted by its own read-only query: every row it returns fails.
    Query { query: String },
    /// Compared with the published version.
    History(History<'r>),
}

/// The comparisons with history.
#[derive(Debug, Clone, PartialEq)]
pub enum History<'r> {
    SchemaChange {
        additive: bool,
    },
    RowCountChange {
        max_pct: f64,
        window: usize,
    },
    NullRateChange {
        column: &'r str,
        max_points: f64,
        window: usize,
    },
}

/// How `rule` is evaluated: one arm per rule kind.
pub fn evaluation(rule: &Rule) -> Evaluation<'_> {
    let rows = |provable: bool| Evaluation::Scan {
        scope: rule.scope,
        check: ScanCheck::Rows {
            predicate: sql::failing_predicate(&rule.kind).expect("a row-level kind"),
            provable: provable && rule.scope == Scope::Staged,
        },
    };
    match &rule.kind {
        RuleKind::NotNull(_)
        | RuleKind::AcceptedValues { .. }
        | RuleKind::Range { .. }
        | RuleKind::Expression(_) => rows(true),
        RuleKind::RowCount { min, max } => Evaluation::Scan {
            scope: rule.scope,
            check: ScanCheck::RowCount {
                min: *min,
                max: *max,
            },
        },
        // Freshness is judged on `staged` (its scope is always staged).
        RuleKind::Freshness { column, max_age } => Evaluation::Scan {
            scope: Scope::Staged,
            check: ScanCheck::Freshness {
                column,
                max_age: *max_age,
            },
        },
        RuleKind::Schema {
            columns,
            allow_extra,
        } => Evaluation::Schema {
            columns,
            allow_extra: *allow_extra,
        },
        RuleKind::Unique(columns) => Evaluation::Unique {
            scope: rule.scope,
            columns,
        },
        RuleKind::Sql(q) => Evaluation::Query { query: q.clone() },
        RuleKind::Changes(bounds) => Evaluation::Query {
            query: sql::changes_query(bounds),
        },
        RuleKind::Relationships { column, field, .. } => Evaluation::Query {
            query: sql::relationship_query(&rule.name, column, field, rule.scope.table()),
        },
        RuleKind::SchemaChange { additive } => Evaluation::History(History::SchemaChange {
            additive: *additive,
        }),
        RuleKind::RowCountChange { max_pct, window } => {
            Evaluation::History(History::RowCountChange {
                max_pct: *max_pct,
                window: *window,
            })
        }
        RuleKind::NullRateChange {
            column,
            max_points,
            window,
        } => Evaluation::History(History::NullRateChange {
            column,
            max_points: *max_points,
            window: *window,
        }),
    }
}

/// A date for compiling rules that depend on the logical date.
fn any_date() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("valid date")
}

/// Every query `rule` will run, for compiling.
fn rule_queries(rule: &Rule, key: &[String]) -> Vec<String> {
    match evaluation(rule) {
        Evaluation::Scan { scope, check } => {
            let table = scope.table();
            let sample = match &check {
                ScanCheck::Rows { predicate, .. } => {
                    Some(sql::sample_query(predicate, table, key, 1))
                }
                ScanCheck::RowCount { .. } => None,
                ScanCheck::Freshness { .. } => None,
            };
            let scan = match check {
                ScanCheck::RowCount { .. } => None,
                check => Some(sql::aggregate_query(&[&check], table, any_date())),
            };
            scan.into_iter().chain(sample).collect()
        }
        Evaluation::Schema { .. } => Vec::new(),
        Evaluation::Unique { scope, columns } => vec![
            sql::unique_count_query(columns, scope.table()),
            sql::unique_sample_query(columns, scope.table(), 1),
        ],
        Evaluation::Query { query } => vec![sql::sql_count_query(&query)],
        Evaluation::History(History::NullRateChange { column, .. }) => {
            vec![sql::null_rate_query(column, STAGED, &[])]
        }
        Evaluation::History(History::SchemaChange { .. } | History::RowCountChange { .. }) => {
            Vec::new()
        }
    }
}

/// Plans every rule against the registered tables without reading data, and reports every
/// problem at once: `file:line: rule `name` (kind): what is wrong`.
pub async fn compile(
    ctx: &SessionContext,
    rules: &[&Rule],
    key: &[String],
) -> Result<(), AuditError> {
    let problems = problems(ctx, rules, key).await;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AuditError::Compile { problems })
    }
}

/// The compile problems of `rules`, one line (and a help line) each; empty when all plan.
pub async fn problems(ctx: &SessionContext, rules: &[&Rule], key: &[String]) -> Vec<String> {
    let columns: Vec<String> = match ctx.table_provider(STAGED).await {
        Ok(t) => t
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut problems = Vec::new();
    for rule in rules {
        let own_sql = match &rule.kind {
            RuleKind::Sql(q) => Some(q.to_string()),
            RuleKind::Expression(e) => {
                Some(format!("SELECT 1 FROM {} WHERE {e}", Scope::Staged.table()))
            }
            _ => None,
        };
        if let Some(probe) = own_sql
            && let Err(e) = table::check_single_query(&probe)
        {
            problems.push(problem(rule, &e.to_string(), &columns));
            continue;
        }
        for q in rule_queries(rule, key) {
            if let Err(e) = table::plan_query(ctx, &q).await {
                problems.push(problem(rule, &e.to_string(), &columns));
                break;
            }
        }
    }
    problems
}

/// One compile problem: where, which rule, what is wrong, and the fix to make.
fn problem(rule: &Rule, message: &str, columns: &[String]) -> String {
    let message = message
        .trim_start_matches("query failed: ")
        .trim_start_matches("query refused: ");
    let first = message.lines().next().unwrap_or_default();
    let help = if first.contains("No field named") || first.contains("not found") {
        format!(
            "use a column the transform produces: {}",
            columns.join(", ")
        )
    } else if first.contains("not a query") || first.contains("expected one statement") {
        "rule SQL must be one read-only SELECT (no DDL, DML, COPY or `;`)".to_string()
    } else if matches!(rule.kind, RuleKind::Expression(_)) {
        "an expression is a boolean SQL condition over the staged columns, e.g. `amount > 0`"
            .to_string()
    } else {
        "fix the SQL so that it plans against tables `staged` and `published`".to_string()
    };
    format!(
        "{}: rule `{}` ({}): {first}\n  help: {help}",
        rule.location(),
        rule.name,
        rule.kind.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every kind, each once, with a scope where it takes one.
    const EVERY_KIND: &str = "rules:
  - {name: nn, not_null: [a]}
  - {name: av, accepted_values: {column: s, values: [x, y]}}
  - {name: rg, range: {column: a, min: 0}}
  - {name: ex, expression: a > 0}
  - {name: ex_result, expression: a > 0, scope: result}
  - {name: rc, row_count: {min: 1}}
  - {name: rc_result, row_count: {min: 1}, scope: result}
  - {name: fr, freshness: {column: t, max_age: 2d}}
  - {name: sc, schema: {columns: {a: bigint}}}
  - {name: un, unique: [a]}
  - {name: un_result, unique: [a], scope: result}
  - {name: q, sql: SELECT * FROM staged WHERE a < 0}
  - {name: rel, relationships: {column: a, to: memory://other, field: id}}
  - {name: chg, schema_change: additive}
  - {name: rcc, row_count_change: {max_pct: 10}}
  - {name: nrc, null_rate_change: {column: s, max_points: 5}}
";

    fn route(name: &str) -> String {
        let file = crate::conf::rules::RuleFile::parse(Path::new("r.yaml"), EVERY_KIND).unwrap();
        let rule = file.rules.iter().find(|r| r.name == name).unwrap();
        match evaluation(rule) {
            Evaluation::Scan { scope, check } => {
                let check = match check {
                    ScanCheck::Rows { provable, .. } => format!("rows provable={provable}"),
                    ScanCheck::RowCount { .. } => "row count".into(),
                    ScanCheck::Freshness { column, .. } => format!("freshness of {column}"),
                };
                format!("scan {} {check}", scope.table())
            }
            Evaluation::Schema { columns, .. } => format!("schema of {} column(s)", columns.len()),
            Evaluation::Unique { scope, columns } => {
                format!("unique {} {columns:?}", scope.table())
            }
            Evaluation::Query { query } => format!("query {query}"),
            Evaluation::History(h) => format!("history {h:?}"),
        }
    }

    #[test]
    fn every_kind_is_routed_to_its_evaluation() {
        let expected = [
            ("nn", "scan staged rows provable=true"),
            ("av", "scan staged rows provable=true"),
            ("rg", "scan staged rows provable=true"),
            ("ex", "scan staged rows provable=true"),
            ("ex_result", "scan result rows provable=false"),
            ("rc", "scan staged row count"),
            ("rc_result", "scan result row count"),
            ("fr", "scan staged freshness of t"),
            ("sc", "schema of 1 column(s)"),
            ("un", "unique staged [\"a\"]"),
            ("un_result", "unique result [\"a\"]"),
            ("q", "query SELECT * FROM staged WHERE a < 0"),
            (
                "rel",
                "query SELECT * FROM staged WHERE \"a\" IS NOT NULL AND \"a\" NOT IN \
                 (SELECT \"id\" FROM wap_target_rel WHERE \"id\" IS NOT NULL)",
            ),
            ("chg", "history SchemaChange { additive: true }"),
            ("rcc", "history RowCountChange { max_pct: 10.0, window: 7 }"),
            (
                "nrc",
                "history NullRateChange { column: \"s\", max_points: 5.0, window: 7 }",
            ),
        ];
        let file = crate::conf::rules::RuleFile::parse(Path::new("r.yaml"), EVERY_KIND).unwrap();
        let kinds: std::collections::BTreeSet<&str> =
            file.rules.iter().map(|r| r.kind.name()).collect();
        assert_eq!(kinds.len(), 13, "the test covers every kind: {kinds:?}");
        assert_eq!(expected.len(), file.rules.len());
        for (name, want) in expected {
            assert_eq!(route(name), want, "rule {name}");
        }
    }

    #[test]
    fn row_predicates_come_from_the_rule() {
        let file = crate::conf::rules::RuleFile::parse(Path::new("r.yaml"), EVERY_KIND).unwrap();
        let nn = file.rules.iter().find(|r| r.name == "nn").unwrap();
        assert_eq!(
            evaluation(nn),
            Evaluation::Scan {
                scope: Scope::Staged,
                check: ScanCheck::Rows {
                    predicate: "(\"a\" IS NULL)".into(),
                    provable: true
                }
            }
        );
    }
}
