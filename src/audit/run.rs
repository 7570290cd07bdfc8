//! Compiling and running rules against the tables registered in a session (`staged`,
//! `published`).

use arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::prelude::SessionContext;
use futures::future::try_join_all;

use super::AuditError;
use super::report::RuleResult;
use super::rule::{Rule, RuleKind};
use super::sql;
use crate::table::{self, TableError};

/// Table name of the staged data in rule SQL.
pub const STAGED: &str = "staged";
/// Table name of the current published version in rule SQL.
pub const PUBLISHED: &str = "published";

/// A date for compiling rules that depend on the logical date.
fn any_date() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("valid date")
}

/// Every query a rule will run, for compiling.
fn rule_queries(rule: &Rule, key: &[String]) -> Vec<String> {
    match &rule.kind {
        RuleKind::Freshness { .. } => vec![sql::aggregate_query(&[rule], STAGED, any_date())],
        RuleKind::Schema { .. } => vec![],
        RuleKind::Unique(cols) => vec![
            sql::unique_count_query(cols, STAGED),
            sql::unique_sample_query(cols, STAGED, 1),
        ],
        RuleKind::Sql(q) => vec![sql::sql_count_query(q)],
        RuleKind::RowCount { .. } => vec![],
        kind => {
            let pred = sql::failing_predicate(kind).expect("row-level kind");
            vec![
                sql::aggregate_query(&[rule], STAGED, any_date()),
                sql::sample_query(&pred, STAGED, key, 1),
            ]
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
    let columns: Vec<String> = match ctx.table_provider(STAGED).await {
        Ok(t) => t
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    let problem = |rule: &Rule, message: &str| problem(rule, message, &columns);
    let mut problems = Vec::new();
    for rule in rules {
        let own_sql = match &rule.kind {
            RuleKind::Sql(q) => Some(q.as_str()),
            RuleKind::Expression(e) => Some(e.as_str()),
            _ => None,
        };
        if let Some(text) = own_sql {
            let probe = match &rule.kind {
                RuleKind::Expression(e) => format!("SELECT 1 FROM {STAGED} WHERE {e}"),
                _ => text.to_string(),
            };
            if let Err(e) = table::check_single_query(&probe) {
                problems.push(problem(rule, &e.to_string()));
                continue;
            }
        }
        for q in rule_queries(rule, key) {
            if let Err(e) = table::plan_query(ctx, &q).await {
                problems.push(problem(rule, &e.to_string()));
                break;
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AuditError::Compile { problems })
    }
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
    } else if rule.kind.name() == "expression" {
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

async fn query(
    ctx: &SessionContext,
    rule: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, AuditError> {
    let exec = |e: TableError| AuditError::Execute {
        rule: rule.to_string(),
        message: e.to_string(),
    };
    let df = table::plan_query(ctx, sql).await.map_err(exec)?;
    table::collect(df).await.map_err(exec)
}

fn text_at(batches: &[RecordBatch], col: usize) -> Option<String> {
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let c = b.column(col);
    (!c.is_null(0)).then(|| arrow::util::display::array_value_to_string(c, 0).ok())?
}

fn int_at(batches: &[RecordBatch], col: usize) -> u64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(col)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0)
        .max(0) as u64
}

/// Sample rows as JSON objects (NULLs explicit) and as a text table.
fn samples(batches: &[RecordBatch]) -> (Vec<serde_json::Value>, String) {
    let batches: Vec<RecordBatch> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .cloned()
        .collect();
    if batches.is_empty() {
        return (Vec::new(), String::new());
    }
    let rows = table::json_rows(&batches)
        .ok()
        .and_then(|buf| serde_json::from_slice::<Vec<serde_json::Value>>(&buf).ok())
        .unwrap_or_default();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .map(|t| t.to_string())
        .unwrap_or_default();
    (rows, table)
}

fn result(rule: &Rule, failing: u64, checked: u64, message: String) -> RuleResult {
    RuleResult {
        name: rule.name.clone(),
        kind: rule.kind.name().to_string(),
        severity: rule.severity,
        passed: rule.threshold.allows(failing, checked),
        failing_rows: failing,
        checked_rows: checked,
        message,
        defined_at: rule.location(),
        samples: Vec::new(),
        sample_table: String::new(),
    }
}

fn describe(kind: &RuleKind) -> String {
    match kind {
        RuleKind::NotNull(cols) => format!("have a NULL in {}", cols.join(", ")),
        RuleKind::AcceptedValues { column, values } => {
            format!("have {column} outside [{}]", values.join(", "))
        }
        RuleKind::Range { column, min, max } => format!(
            "have {column} outside [{}, {}]",
            min.as_deref().unwrap_or("-inf"),
            max.as_deref().unwrap_or("+inf")
        ),
        RuleKind::Expression(e) => format!("are not TRUE for `{e}`"),
        RuleKind::Unique(cols) => format!("share their {} with another row", cols.join(", ")),
        RuleKind::Sql(_) => "were returned by the rule's query".into(),
        RuleKind::RowCount { .. } | RuleKind::Freshness { .. } | RuleKind::Schema { .. } => {
            String::new()
        }
    }
}

/// Differences between the staged schema and a `schema` rule, in words.
fn schema_problems(
    schema: &arrow::datatypes::Schema,
    columns: &[(String, super::rule::LogicalType)],
    allow_extra: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, want) in columns {
        match schema.field_with_name(name) {
            Err(_) => problems.push(format!("column `{name}` is missing")),
            Ok(f) if !want.matches(f.data_type()) => problems.push(format!(
                "column `{name}` is {}, expected {want}",
                f.data_type()
            )),
            Ok(_) => {}
        }
    }
    if !allow_extra {
        for f in schema.fields() {
            if !columns.iter().any(|(n, _)| n == f.name()) {
                problems.push(format!(
                    "column `{}` is not in the rule (allow_extra: false)",
                    f.name()
                ));
            }
        }
    }
    problems
}

/// Runs every rule over the registered `staged` table. Row-level rules share one scan.
pub async fn run(
    ctx: &SessionContext,
    rules: &[&Rule],
    key: &[String],
    sample_limit: usize,
    logical_date: chrono::NaiveDate,
) -> Result<Vec<RuleResult>, AuditError> {
    let agg_rules: Vec<&Rule> = rules
        .iter()
        .copied()
        .filter(|r| sql::in_aggregate(r))
        .collect();
    let mut by_name: std::collections::HashMap<String, RuleResult> = Default::default();

    let agg = query(
        ctx,
        "(row-level rules)",
        &sql::aggregate_query(&agg_rules, STAGED, logical_date),
    )
    .await?;
    let rows = int_at(&agg, 0);
    let mut sample_jobs = Vec::new();
    for (i, rule) in agg_rules.iter().enumerate() {
        if let RuleKind::RowCount { min, max } = &rule.kind {
            let low = min.is_some_and(|m| rows < m);
            let high = max.is_some_and(|m| rows > m);
            let message = if low {
                format!("row count {rows} is below the minimum {}", min.unwrap_or(0))
            } else if high {
                format!("row count {rows} is above the maximum {}", max.unwrap_or(0))
            } else {
                format!("row count {rows} is within bounds")
            };
            let mut r = result(rule, 0, rows, message);
            r.passed = !(low || high);
            by_name.insert(rule.name.clone(), r);
            continue;
        }
        let failing = int_at(&agg, 1 + 2 * i);
        if let RuleKind::Freshness { column, max_age } = &rule.kind {
            let newest = text_at(&agg, 2 + 2 * i);
            let cutoff = sql::freshness_cutoff(logical_date, max_age.seconds);
            let message = match &newest {
                Some(n) if failing == 0 => {
                    format!("newest {column} is {n}, not older than {cutoff}")
                }
                Some(n) => format!(
                    "newest {column} is {n}, older than {cutoff} (max_age {}s before {logical_date})",
                    max_age.seconds
                ),
                None => format!("no {column} values to judge freshness by"),
            };
            let mut r = result(rule, 0, rows, message);
            r.passed = failing == 0;
            r.failing_rows = failing;
            by_name.insert(rule.name.clone(), r);
            continue;
        }
        let message = format!("{failing} of {rows} rows {}", describe(&rule.kind));
        by_name.insert(rule.name.clone(), result(rule, failing, rows, message));
        if failing > 0 && sample_limit > 0 {
            let pred = sql::failing_predicate(&rule.kind).expect("row-level kind");
            sample_jobs.push((
                rule.name.clone(),
                sql::sample_query(&pred, STAGED, key, sample_limit),
            ));
        }
    }

    for rule in rules {
        if let RuleKind::Schema {
            columns,
            allow_extra,
        } = &rule.kind
        {
            let provider = ctx
                .table_provider(STAGED)
                .await
                .map_err(|e| AuditError::Execute {
                    rule: rule.name.clone(),
                    message: e.to_string(),
                })?;
            let problems = schema_problems(&provider.schema(), columns, *allow_extra);
            let message = if problems.is_empty() {
                "the staged schema matches".to_string()
            } else {
                problems.join("; ")
            };
            let mut r = result(rule, 0, rows, message);
            r.passed = problems.is_empty();
            by_name.insert(rule.name.clone(), r);
        }
    }

    let own = rules
        .iter()
        .copied()
        .filter(|r| !sql::in_aggregate(r) && !matches!(r.kind, RuleKind::Schema { .. }))
        .map(|rule| async move {
            match &rule.kind {
                RuleKind::Unique(cols) => {
                    let counts =
                        query(ctx, &rule.name, &sql::unique_count_query(cols, STAGED)).await?;
                    let failing = int_at(&counts, 0);
                    let groups = int_at(&counts, 1);
                    let message = format!(
                        "{failing} of {rows} rows {} ({groups} duplicated values)",
                        describe(&rule.kind)
                    );
                    let sample = (failing > 0 && sample_limit > 0)
                        .then(|| sql::unique_sample_query(cols, STAGED, sample_limit));
                    Ok::<_, AuditError>((result(rule, failing, rows, message), sample))
                }
                RuleKind::Sql(q) => {
                    let counts = query(ctx, &rule.name, &sql::sql_count_query(q)).await?;
                    let failing = int_at(&counts, 0);
                    let message = format!("{failing} rows {}", describe(&rule.kind));
                    let sample = (failing > 0 && sample_limit > 0)
                        .then(|| sql::sql_sample_query(q, sample_limit));
                    Ok((result(rule, failing, rows, message), sample))
                }
                _ => unreachable!("aggregate rules are handled above"),
            }
        });
    for (r, sample) in try_join_all(own).await? {
        if let Some(q) = sample {
            sample_jobs.push((r.name.clone(), q));
        }
        by_name.insert(r.name.clone(), r);
    }

    let fetched = try_join_all(sample_jobs.iter().map(|(name, q)| async move {
        Ok::<_, AuditError>((name.clone(), query(ctx, name, q).await?))
    }))
    .await?;
    for (name, batches) in fetched {
        if let Some(r) = by_name.get_mut(&name) {
            let (rows, table) = samples(&batches);
            r.samples = rows;
            r.sample_table = table;
        }
    }
    Ok(rules
        .iter()
        .filter_map(|r| by_name.remove(&r.name))
        .collect())
}
