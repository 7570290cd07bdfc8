//! Compiling and running rules against the tables registered in a session (`staged`,
//! `published`).

use arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::prelude::SessionContext;
use futures::future::try_join_all;

use super::AuditError;
use super::report::RuleResult;
use super::rule::{Rule, RuleKind, Scope};
use super::sql;
use crate::manifest::{Manifest, Partition};
use crate::table::{self, TableError};

/// Table name of the staged data in rule SQL.
pub const STAGED: &str = "staged";
/// Table name of the table as it would be after publishing, in rule SQL.
pub const RESULT: &str = "result";
/// Table name of the current published version in rule SQL.
pub const PUBLISHED: &str = "published";

/// A date for compiling rules that depend on the logical date.
fn any_date() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("valid date")
}

/// Every query a rule will run, for compiling.
fn rule_queries(rule: &Rule, key: &[String]) -> Vec<String> {
    let table = rule.scope.table();
    match &rule.kind {
        RuleKind::Freshness { .. } => vec![sql::aggregate_query(&[rule], STAGED, any_date())],
        RuleKind::Schema { .. }
        | RuleKind::SchemaChange { .. }
        | RuleKind::RowCountChange { .. } => {
            vec![]
        }
        RuleKind::NullRateChange { column, .. } => vec![sql::null_rate_query(column, STAGED, &[])],
        RuleKind::Unique(cols) => vec![
            sql::unique_count_query(cols, table),
            sql::unique_sample_query(cols, table, 1),
        ],
        RuleKind::Sql(q) => vec![sql::sql_count_query(q)],
        RuleKind::Relationships { column, field, .. } => vec![sql::sql_count_query(
            &sql::relationship_query(&rule.name, column, field, table),
        )],
        RuleKind::RowCount { .. } => vec![],
        kind => {
            let pred = sql::failing_predicate(kind).expect("row-level kind");
            vec![
                sql::aggregate_query(&[rule], table, any_date()),
                sql::sample_query(&pred, table, key, 1),
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
        sample_columns: Vec::new(),
        sample_table: String::new(),
        sample_batches: Vec::new(),
        duration_ms: 0,
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
        RuleKind::Relationships { column, to, field } => {
            format!("have a {column} with no {field} in {to}")
        }
        _ => String::new(),
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

/// What a run is judged against besides its own rows: the logical date, the partitions it
/// staged, and the published version (for the change rules).
#[derive(Debug, Clone, Copy)]
pub struct Baseline<'a> {
    pub logical_date: chrono::NaiveDate,
    pub partition_by: &'a [String],
    /// (Hive path, rows) of each staged partition.
    pub staged: &'a [(String, u64)],
    pub published: Option<&'a Manifest>,
}

impl Baseline<'_> {
    /// The published partitions a staged partition is compared with: the one it replaces, or
    /// the last `window` published partitions (by path) for a new one. Empty: nothing to compare.
    fn reference(&self, path: &str, window: usize) -> Vec<&Partition> {
        let Some(m) = self.published else {
            return Vec::new();
        };
        if let Some(p) = m.partitions.get(path) {
            return vec![p];
        }
        m.partitions.values().rev().take(window).collect()
    }
}

fn pct_change(now: f64, before: f64) -> f64 {
    if before == 0.0 {
        if now == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (now - before).abs() * 100.0 / before
    }
}

/// Rules judged from metadata alone (schemas, row counts): no scan.
fn judge_metadata(
    rule: &Rule,
    staged_schema: &arrow::datatypes::Schema,
    base: &Baseline,
    rows: u64,
) -> Option<RuleResult> {
    let (passed, message) = match &rule.kind {
        RuleKind::Schema {
            columns,
            allow_extra,
        } => {
            let problems = schema_problems(staged_schema, columns, *allow_extra);
            (
                problems.is_empty(),
                if problems.is_empty() {
                    "the staged schema matches".to_string()
                } else {
                    problems.join("; ")
                },
            )
        }
        RuleKind::SchemaChange { additive } => match base.published {
            None => (true, "nothing published to compare with".to_string()),
            Some(m) => {
                let mut problems = Vec::new();
                for f in m.schema.fields() {
                    match staged_schema.field_with_name(f.name()) {
                        Err(_) => problems.push(format!("column `{}` was dropped", f.name())),
                        Ok(n)
                            if !crate::publish::same_column_type(n.data_type(), f.data_type()) =>
                        {
                            problems.push(format!(
                                "column `{}` changed type from {} to {}",
                                f.name(),
                                f.data_type(),
                                n.data_type()
                            ))
                        }
                        Ok(_) => {}
                    }
                }
                if !additive {
                    for f in staged_schema.fields() {
                        if m.schema.field_with_name(f.name()).is_err() {
                            problems.push(format!("column `{}` was added", f.name()));
                        }
                    }
                }
                (
                    problems.is_empty(),
                    if problems.is_empty() {
                        format!("schema unchanged from version {}", m.version)
                    } else {
                        format!("against version {}: {}", m.version, problems.join("; "))
                    },
                )
            }
        },
        RuleKind::RowCountChange { max_pct, window } => {
            let mut worst = Vec::new();
            let mut compared = 0;
            for (path, now) in base.staged {
                let refs = base.reference(path, *window);
                if refs.is_empty() {
                    continue;
                }
                compared += 1;
                let before = refs.iter().map(|p| p.rows as f64).sum::<f64>() / refs.len() as f64;
                let change = pct_change(*now as f64, before);
                if change > *max_pct {
                    worst.push(format!(
                        "{path}: {now} rows against {before:.1} ({change:.1}%)"
                    ));
                }
            }
            if compared == 0 {
                (true, "nothing published to compare with".to_string())
            } else if worst.is_empty() {
                (
                    true,
                    format!("{compared} partition(s) within {max_pct}% of their reference"),
                )
            } else {
                (
                    false,
                    format!(
                        "row count changed more than {max_pct}%: {}",
                        worst.join("; ")
                    ),
                )
            }
        }
        _ => return None,
    };
    let mut r = result(rule, 0, rows, message);
    r.passed = passed;
    Some(r)
}

/// Null rates of `column` by partition path in `table`: path -> (rows, nulls).
async fn null_rates(
    ctx: &SessionContext,
    rule: &str,
    table: &str,
    column: &str,
    partition_by: &[String],
) -> Result<std::collections::HashMap<String, (u64, u64)>, AuditError> {
    let batches = query(
        ctx,
        rule,
        &sql::null_rate_query(column, table, partition_by),
    )
    .await?;
    let mut out = std::collections::HashMap::new();
    let n = partition_by.len();
    for b in &batches {
        for row in 0..b.num_rows() {
            let values: Vec<Option<String>> = (0..n)
                .map(|i| {
                    let c = b.column(i);
                    (!c.is_null(row)).then(|| {
                        arrow::util::display::array_value_to_string(c, row).unwrap_or_default()
                    })
                })
                .collect();
            let int = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .map_or(0, |a| a.value(row).max(0) as u64)
            };
            out.insert(
                crate::write::hive_path(partition_by, &values),
                (int(n), int(n + 1)),
            );
        }
    }
    Ok(out)
}

async fn judge_null_rate(
    ctx: &SessionContext,
    rule: &Rule,
    base: &Baseline<'_>,
    rows: u64,
) -> Result<RuleResult, AuditError> {
    let RuleKind::NullRateChange {
        column,
        max_points,
        window,
    } = &rule.kind
    else {
        unreachable!("called for null_rate_change rules")
    };
    let mut needed: Vec<&Partition> = Vec::new();
    for (path, _) in base.staged {
        for p in base.reference(path, *window) {
            if !needed.iter().any(|q| q.path == p.path) {
                needed.push(p);
            }
        }
    }
    let pass = |message: String| {
        let mut r = result(rule, 0, rows, message);
        r.passed = true;
        r
    };
    if needed.is_empty() {
        return Ok(pass("nothing published to compare with".into()));
    }
    let m = base
        .published
        .expect("references come from the published version");
    if m.schema.field_with_name(column).is_err() {
        return Ok(pass(format!(
            "column `{column}` is new: nothing to compare with"
        )));
    }
    let reference_table = format!(
        "wap_reference_{}",
        rule.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let provider = table::VersionTable::new(
        crate::engine::TABLE_URL,
        m.schema_ref(),
        Vec::new(),
        needed.iter().copied(),
    )?;
    ctx.register_table(&reference_table, std::sync::Arc::new(provider))
        .map_err(|e| AuditError::Execute {
            rule: rule.name.clone(),
            message: e.to_string(),
        })?;
    let before = null_rates(ctx, &rule.name, &reference_table, column, base.partition_by).await;
    let _ = ctx.deregister_table(&reference_table);
    let before = before?;
    let now = null_rates(ctx, &rule.name, STAGED, column, base.partition_by).await?;
    let rate = |(rows, nulls): (u64, u64)| {
        if rows == 0 {
            0.0
        } else {
            nulls as f64 * 100.0 / rows as f64
        }
    };
    let mut worst = Vec::new();
    let mut compared = 0;
    for (path, _) in base.staged {
        let refs = base.reference(path, *window);
        let rates: Vec<f64> = refs
            .iter()
            .filter_map(|p| before.get(&p.path).copied().map(rate))
            .collect();
        if rates.is_empty() {
            continue;
        }
        compared += 1;
        let reference = rates.iter().sum::<f64>() / rates.len() as f64;
        let current = now.get(path).copied().map_or(0.0, rate);
        let points = (current - reference).abs();
        if points > *max_points {
            worst.push(format!(
                "{path}: {current:.1}% NULL against {reference:.1}% ({points:.1} points)"
            ));
        }
    }
    let mut r = result(rule, 0, rows, String::new());
    r.passed = worst.is_empty();
    r.message = if compared == 0 {
        "nothing published to compare with".into()
    } else if worst.is_empty() {
        format!(
            "{compared} partition(s) within {max_points} points of their reference null rate for {column}"
        )
    } else {
        format!(
            "null rate of {column} changed more than {max_points} points: {}",
            worst.join("; ")
        )
    };
    Ok(r)
}

/// Runs every rule over the registered `staged` table. Row-level rules share one scan.
pub async fn run(
    ctx: &SessionContext,
    rules: &[&Rule],
    key: &[String],
    sample_limit: usize,
    base: &Baseline<'_>,
) -> Result<Vec<RuleResult>, AuditError> {
    let logical_date = base.logical_date;
    let mut by_name: std::collections::HashMap<String, RuleResult> = Default::default();
    let mut sample_jobs = Vec::new();
    let mut rows_in = std::collections::HashMap::new();
    // Footers of the staged files, read by the proofs and reused by the `unique` merge.
    let mut footers = Vec::new();
    // One scan per scope (the staged one always: it counts the run's rows).
    for scope in [Scope::Staged, Scope::Result] {
        let proven = if scope == Scope::Staged {
            let (proven, read) = super::proof::proven(ctx, scope.table(), rules).await;
            footers = read;
            proven
        } else {
            Default::default()
        };
        let agg_rules: Vec<&Rule> = rules
            .iter()
            .copied()
            .filter(|r| sql::in_aggregate(r) && r.scope == scope && !proven.contains(&r.name))
            .collect();
        if agg_rules.is_empty() && scope != Scope::Staged {
            continue;
        }
        let table = scope.table();
        let started = std::time::Instant::now();
        let agg = query(
            ctx,
            &format!("(rules over {table})"),
            &sql::aggregate_query(&agg_rules, table, logical_date),
        )
        .await?;
        let rows = int_at(&agg, 0);
        rows_in.insert(scope, rows);
        let scan_ms = started.elapsed().as_millis() as u64;
        for rule in rules.iter().filter(|r| proven.contains(&r.name)) {
            let message = format!(
                "0 of {rows} rows {} (proven from Parquet metadata)",
                describe(&rule.kind)
            );
            let mut r = result(rule, 0, rows, message);
            r.duration_ms = scan_ms;
            by_name.insert(rule.name.clone(), r);
        }
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
                r.duration_ms = scan_ms;
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
                r.duration_ms = scan_ms;
                by_name.insert(rule.name.clone(), r);
                continue;
            }
            let message = format!("{failing} of {rows} rows {}", describe(&rule.kind));
            let mut r = result(rule, failing, rows, message);
            r.duration_ms = scan_ms;
            by_name.insert(rule.name.clone(), r);
            if failing > 0 && sample_limit > 0 {
                let pred = sql::failing_predicate(&rule.kind).expect("row-level kind");
                sample_jobs.push((
                    rule.name.clone(),
                    sql::sample_query(&pred, table, key, sample_limit),
                ));
            }
        }
    }
    let rows = rows_in[&Scope::Staged];
    let rows_in = &rows_in;

    let staged_schema = ctx
        .table_provider(STAGED)
        .await
        .map_err(|e| AuditError::Execute {
            rule: "(schema)".into(),
            message: e.to_string(),
        })?
        .schema();
    for rule in rules {
        let started = std::time::Instant::now();
        let judged = if let Some(r) = judge_metadata(rule, &staged_schema, base, rows) {
            Some(r)
        } else if matches!(rule.kind, RuleKind::NullRateChange { .. }) {
            Some(judge_null_rate(ctx, rule, base, rows).await?)
        } else {
            None
        };
        if let Some(mut r) = judged {
            r.duration_ms = started.elapsed().as_millis() as u64;
            by_name.insert(rule.name.clone(), r);
        }
    }

    // The proofs read no footers when no rule needed them: a `unique` rule on `staged` still
    // does (the bitmap's bounds, the merge's readers), so they are read here, once.
    let unique_on_staged = rules
        .iter()
        .any(|r| r.scope == Scope::Staged && matches!(r.kind, RuleKind::Unique(_)));
    if footers.is_empty() && unique_on_staged {
        footers = super::proof::table_footers(ctx, Scope::Staged.table()).await;
    }
    let footers = footers.as_slice();
    let own = rules
        .iter()
        .copied()
        .filter(|r| {
            matches!(
                r.kind,
                RuleKind::Unique(_) | RuleKind::Sql(_) | RuleKind::Relationships { .. }
            )
        })
        .map(|rule| async move {
            let started = std::time::Instant::now();
            let (mut r, sample) = match &rule.kind {
                RuleKind::Unique(cols) => {
                    let table = rule.scope.table();
                    let rows = rows_in.get(&rule.scope).copied().unwrap_or(rows);
                    // On staged files: integer keys in a small range, by a bitmap of that
                    // range; keys the files are sorted by, by a merge with bounded memory; else
                    // SQL.
                    let dense = match rule.scope {
                        Scope::Staged => {
                            super::dense::unique_by_bitmap(ctx, table, cols, footers).await
                        }
                        _ => None,
                    };
                    let merged = match (dense, rule.scope, super::merge::key_prefix(cols, key)) {
                        (Some(found), ..) => Some(found),
                        (None, Scope::Staged, Some(prefix)) => {
                            super::merge::unique_by_merge(ctx, table, &prefix, footers).await
                        }
                        _ => None,
                    };
                    let (failing, groups) = match merged {
                        Some(found) => found,
                        None => {
                            let counts =
                                query(ctx, &rule.name, &sql::unique_count_query(cols, table))
                                    .await?;
                            (int_at(&counts, 0), int_at(&counts, 1))
                        }
                    };
                    let message = format!(
                        "{failing} of {rows} rows {} ({groups} duplicated values)",
                        describe(&rule.kind)
                    );
                    let sample = (failing > 0 && sample_limit > 0)
                        .then(|| sql::unique_sample_query(cols, table, sample_limit));
                    (result(rule, failing, rows, message), sample)
                }
                RuleKind::Sql(_) | RuleKind::Relationships { .. } => {
                    let q = match &rule.kind {
                        RuleKind::Relationships { column, field, .. } => {
                            sql::relationship_query(&rule.name, column, field, rule.scope.table())
                        }
                        RuleKind::Sql(q) => q.clone(),
                        _ => unreachable!(),
                    };
                    let q = &q;
                    let counts = query(ctx, &rule.name, &sql::sql_count_query(q)).await?;
                    let failing = int_at(&counts, 0);
                    let message = format!("{failing} rows {}", describe(&rule.kind));
                    let sample = (failing > 0 && sample_limit > 0)
                        .then(|| sql::sql_sample_query(q, sample_limit));
                    (result(rule, failing, rows, message), sample)
                }
                _ => unreachable!("aggregate rules are handled above"),
            };
            r.duration_ms = started.elapsed().as_millis() as u64;
            Ok::<_, AuditError>((r, sample))
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
            r.sample_batches = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
            if let Some(b) = r.sample_batches.first() {
                r.sample_columns = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
            }
        }
    }
    Ok(rules
        .iter()
        .filter_map(|r| by_name.remove(&r.name))
        .collect())
}
