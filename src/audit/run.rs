//! Running a planned audit against the tables registered in a session (`staged`, `result`,
//! `published`): each rule is evaluated as [`super::plan::evaluation`] says, and every rule
//! ends with exactly one result.

use std::collections::{HashMap, HashSet};

use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use futures::future::try_join_all;

use super::plan::{Evaluation, ScanCheck, evaluation};
use super::report::RuleResult;
use super::{AuditError, StagedFiles, files, history, proof, sql, unique};
use crate::conf::rules::{LogicalType, Rule, RuleKind, Scope};
use crate::progress::Progress;
use crate::table;

use super::exec::{int_at, query, text_at};
pub use super::{Baseline, PUBLISHED, RESULT, STAGED};

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

/// What the failing rows of a row-level rule did, in words (empty for other kinds).
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
        RuleKind::RowCount { .. }
        | RuleKind::Freshness { .. }
        | RuleKind::Schema { .. }
        | RuleKind::SchemaChange { .. }
        | RuleKind::RowCountChange { .. }
        | RuleKind::NullRateChange { .. }
        | RuleKind::Changes(_) => String::new(),
    }
}

/// Differences between the staged schema and a `schema` rule, in words.
fn schema_problems(
    schema: &arrow::datatypes::Schema,
    columns: &[(String, LogicalType)],
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

/// A rule's own query in flight: its result and its sample query, if it failed.
type OwnEvaluation<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<(RuleResult, Option<String>), AuditError>> + Send + 'a>,
>;

/// The results of an audit as it fills in, and the sample queries of failing rules.
struct Results<'a> {
    progress: Option<&'a Progress>,
    by_name: HashMap<String, RuleResult>,
    /// (rule, query) of each failing rule's samples.
    samples: Vec<(String, String)>,
}

impl Results<'_> {
    fn add(&mut self, result: RuleResult, sample: Option<String>) {
        if let Some(p) = self.progress {
            Progress::add(&p.rules_done, 1);
        }
        if let Some(q) = sample {
            self.samples.push((result.name.clone(), q));
        }
        self.by_name.insert(result.name.clone(), result);
    }
}

/// Evaluates every rule: metadata proofs, one fused scan per scope, the schema rules, the
/// comparisons with history, then the rules' own queries concurrently, then the samples of the
/// failing ones. Returns one result per rule, in the order of `rules`.
pub async fn run(
    ctx: &SessionContext,
    rules: &[&Rule],
    key: &[String],
    sample_limit: usize,
    base: &Baseline<'_>,
) -> Result<Vec<RuleResult>, AuditError> {
    let planned: Vec<(&Rule, Evaluation)> = rules.iter().map(|r| (*r, evaluation(r))).collect();
    let footers = read_footers(&planned, base.files).await?;
    let proven = match base.files {
        Some(files) => {
            let provable: Vec<&Rule> = planned
                .iter()
                .filter(|(_, e)| {
                    matches!(
                        e,
                        Evaluation::Scan {
                            check: ScanCheck::Rows { provable: true, .. },
                            ..
                        }
                    )
                })
                .map(|(r, _)| *r)
                .collect();
            proof::proven(ctx, files, footers, &provable).await
        }
        None => HashSet::new(),
    };
    if let Some(p) = base.progress {
        Progress::add(&p.rules_total, rules.len() as u64);
    }
    let mut results = Results {
        progress: base.progress,
        by_name: HashMap::new(),
        samples: Vec::new(),
    };
    let mut rows_in = HashMap::new();
    for scope in [Scope::Staged, Scope::Result] {
        if let Some(rows) = scan(
            ctx,
            scope,
            &planned,
            &proven,
            key,
            sample_limit,
            base,
            &mut results,
        )
        .await?
        {
            rows_in.insert(scope, rows);
        }
    }
    let rows = rows_in[&Scope::Staged];
    judge_without_scan(ctx, &planned, rows, base, &mut results).await?;
    let own = own_queries(ctx, &planned, &rows_in, key, sample_limit, base, footers);
    for (r, sample) in try_join_all(own).await? {
        results.add(r, sample);
    }
    fetch_samples(ctx, &mut results).await?;
    rules
        .iter()
        .map(|r| {
            results
                .by_name
                .remove(&r.name)
                .ok_or_else(|| AuditError::NoResult {
                    rule: r.name.clone(),
                    kind: r.kind.name(),
                })
        })
        .collect()
}

/// The rules judged without a scan or a query of their own: `schema` rules, and the
/// comparisons with history, into `results` (each checked against the staged `rows`).
async fn judge_without_scan(
    ctx: &SessionContext,
    planned: &[(&Rule, Evaluation<'_>)],
    rows: u64,
    base: &Baseline<'_>,
    results: &mut Results<'_>,
) -> Result<(), AuditError> {
    let staged_schema = ctx
        .table_provider(STAGED)
        .await
        .map_err(|source| table::TableError::Register {
            name: STAGED.into(),
            source,
        })?
        .schema();
    for (rule, e) in planned {
        let started = std::time::Instant::now();
        let verdict = match e {
            Evaluation::Schema {
                columns,
                allow_extra,
            } => {
                let problems = schema_problems(&staged_schema, columns, *allow_extra);
                history::Verdict {
                    passed: problems.is_empty(),
                    message: if problems.is_empty() {
                        "the staged schema matches".to_string()
                    } else {
                        problems.join("; ")
                    },
                }
            }
            Evaluation::History(h) => {
                history::judge(ctx, &rule.name, h, &staged_schema, base).await?
            }
            Evaluation::Scan { .. } | Evaluation::Unique { .. } | Evaluation::Query { .. } => {
                continue;
            }
        };
        let mut r = result(rule, 0, rows, verdict.message);
        r.passed = verdict.passed;
        r.duration_ms = started.elapsed().as_millis() as u64;
        results.add(r, None);
    }

    Ok(())
}

/// The rules' own queries (the `unique` strategies, `sql`, `relationships`), ready to run
/// concurrently; `rows_in` holds each scanned table's row count.
fn own_queries<'a>(
    ctx: &'a SessionContext,
    planned: &'a [(&'a Rule, Evaluation<'a>)],
    rows_in: &'a HashMap<Scope, u64>,
    key: &'a [String],
    sample_limit: usize,
    base: &'a Baseline<'a>,
    footers: &'a [files::Footer],
) -> impl Iterator<Item = OwnEvaluation<'a>> + 'a {
    let rows = rows_in[&Scope::Staged];
    planned.iter().filter_map(move |(rule, e)| {
        let rows = move |scope: Scope| rows_in.get(&scope).copied().unwrap_or(rows);
        match e {
            Evaluation::Unique { scope, columns } => Some(Box::pin(async move {
                let started = std::time::Instant::now();
                let ((failing, groups), _) =
                    unique::count(ctx, &rule.name, *scope, columns, key, base.files, footers)
                        .await?;
                let rows = rows(*scope);
                let message = format!(
                    "{failing} of {rows} rows {} ({groups} duplicated values)",
                    describe(&rule.kind)
                );
                let sample = (failing > 0 && sample_limit > 0)
                    .then(|| sql::unique_sample_query(columns, scope.table(), sample_limit));
                let mut r = result(rule, failing, rows, message);
                r.duration_ms = started.elapsed().as_millis() as u64;
                Ok::<_, AuditError>((r, sample))
            }) as OwnEvaluation<'_>),
            Evaluation::Query { query: q } => Some(Box::pin(async move {
                let started = std::time::Instant::now();
                let counts = query(ctx, &rule.name, &sql::sql_count_query(q)).await?;
                let failing = int_at(&counts, 0);
                let message = format!("{failing} rows {}", describe(&rule.kind));
                let sample = (failing > 0 && sample_limit > 0)
                    .then(|| sql::sql_sample_query(q, sample_limit));
                // Counted against the run's rows, whatever the query reads.
                let mut r = result(rule, failing, rows(Scope::Staged), message);
                r.duration_ms = started.elapsed().as_millis() as u64;
                Ok((r, sample))
            }) as OwnEvaluation<'_>),
            Evaluation::Scan { .. } | Evaluation::Schema { .. } | Evaluation::History(_) => None,
        }
    })
}

/// The staged files' footers, read once when a metadata proof or a `unique` strategy may use
/// them (empty otherwise).
async fn read_footers<'a>(
    planned: &[(&Rule, Evaluation<'_>)],
    files: Option<&'a StagedFiles>,
) -> Result<&'a [files::Footer], AuditError> {
    let Some(files) = files else {
        return Ok(&[]);
    };
    let wanted = planned.iter().any(|(_, e)| match e {
        Evaluation::Scan { check, .. } => {
            matches!(check, ScanCheck::Rows { provable: true, .. })
        }
        Evaluation::Unique { scope, .. } => *scope == Scope::Staged,
        Evaluation::Schema { .. } | Evaluation::Query { .. } | Evaluation::History(_) => false,
    });
    if !wanted {
        return Ok(&[]);
    }
    files
        .footers()
        .await
        .map_err(|source| AuditError::Footers { source })
}

/// The fused scan of `scope`'s table: every scan rule of that scope not already proven, and
/// the proven ones' results. Returns the table's row count, or `None` when the `result` scope
/// has no scan rule (the `staged` scan always runs: it counts the run's rows).
#[allow(clippy::too_many_arguments)]
async fn scan(
    ctx: &SessionContext,
    scope: Scope,
    planned: &[(&Rule, Evaluation<'_>)],
    proven: &HashSet<String>,
    key: &[String],
    sample_limit: usize,
    base: &Baseline<'_>,
    results: &mut Results<'_>,
) -> Result<Option<u64>, AuditError> {
    let checks: Vec<(&Rule, &ScanCheck)> = planned
        .iter()
        .filter_map(|(r, e)| match e {
            Evaluation::Scan { scope: s, check } if *s == scope && !proven.contains(&r.name) => {
                Some((*r, check))
            }
            _ => None,
        })
        .collect();
    if checks.is_empty() && scope != Scope::Staged {
        return Ok(None);
    }
    let table = scope.table();
    let started = std::time::Instant::now();
    let q = sql::aggregate_query(
        &checks.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
        table,
        base.logical_date,
    );
    let agg = match table::plan_query(ctx, &q).await {
        Ok(df) => table::collect(df).await,
        Err(e) => Err(e),
    }
    .map_err(|source| AuditError::Scan {
        table: table.to_string(),
        source,
    })?;
    let rows = int_at(&agg, 0);
    let scan_ms = started.elapsed().as_millis() as u64;
    if scope == Scope::Staged {
        for (rule, _) in planned.iter().filter(|(r, _)| proven.contains(&r.name)) {
            let message = format!(
                "0 of {rows} rows {} (proven from Parquet metadata)",
                describe(&rule.kind)
            );
            let mut r = result(rule, 0, rows, message);
            r.duration_ms = scan_ms;
            results.add(r, None);
        }
    }
    let logical_date = base.logical_date;
    for (i, (rule, check)) in checks.iter().enumerate() {
        let failing = int_at(&agg, 1 + 2 * i);
        let (mut r, sample) = match check {
            ScanCheck::RowCount { min, max } => {
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
                (r, None)
            }
            ScanCheck::Freshness { column, max_age } => {
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
                (r, None)
            }
            ScanCheck::Rows { predicate, .. } => {
                let message = format!("{failing} of {rows} rows {}", describe(&rule.kind));
                let sample = (failing > 0 && sample_limit > 0)
                    .then(|| sql::sample_query(predicate, table, key, sample_limit));
                (result(rule, failing, rows, message), sample)
            }
        };
        r.duration_ms = scan_ms;
        results.add(r, sample);
    }
    Ok(Some(rows))
}

/// Runs the sample queries of the failing rules, concurrently, into their results.
async fn fetch_samples(ctx: &SessionContext, results: &mut Results<'_>) -> Result<(), AuditError> {
    let fetched = try_join_all(results.samples.iter().map(|(name, q)| async move {
        Ok::<_, AuditError>((name.clone(), query(ctx, name, q).await?))
    }))
    .await?;
    for (name, batches) in fetched {
        let Some(r) = results.by_name.get_mut(&name) else {
            continue;
        };
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
    Ok(())
}
