//! Rules judged against the published version: `schema_change`, `row_count_change` (from the
//! manifests alone) and `null_rate_change` (one query per side).

use std::collections::HashMap;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;

use super::AuditError;
use super::exec::query;
use super::plan::History;
use super::sql;
use super::{Baseline, STAGED};
use crate::manifest::Partition;

/// A judged comparison: passed, and the message saying why.
pub(super) struct Verdict {
    pub(super) passed: bool,
    pub(super) message: String,
}

/// Judges one comparison with history for rule `rule`.
pub(super) async fn judge(
    ctx: &SessionContext,
    rule: &str,
    history: &History<'_>,
    staged_schema: &Schema,
    base: &Baseline<'_>,
) -> Result<Verdict, AuditError> {
    Ok(match history {
        History::SchemaChange { additive } => schema_change(*additive, staged_schema, base),
        History::RowCountChange { max_pct, window } => row_count_change(*max_pct, *window, base),
        History::NullRateChange {
            column,
            max_points,
            window,
        } => null_rate_change(ctx, rule, column, *max_points, *window, base).await?,
    })
}

fn nothing_to_compare() -> Verdict {
    Verdict {
        passed: true,
        message: "nothing published to compare with".into(),
    }
}

fn schema_change(additive: bool, staged: &Schema, base: &Baseline<'_>) -> Verdict {
    let Some(m) = base.published else {
        return nothing_to_compare();
    };
    let mut problems = Vec::new();
    for f in m.schema.fields() {
        match staged.field_with_name(f.name()) {
            Err(_) => problems.push(format!("column `{}` was dropped", f.name())),
            Ok(n) if !crate::publish::same_column_type(n.data_type(), f.data_type()) => problems
                .push(format!(
                    "column `{}` changed type from {} to {}",
                    f.name(),
                    f.data_type(),
                    n.data_type()
                )),
            Ok(_) => {}
        }
    }
    if !additive {
        for f in staged.fields() {
            if m.schema.field_with_name(f.name()).is_err() {
                problems.push(format!("column `{}` was added", f.name()));
            }
        }
    }
    Verdict {
        passed: problems.is_empty(),
        message: if problems.is_empty() {
            format!("schema unchanged from version {}", m.version)
        } else {
            format!("against version {}: {}", m.version, problems.join("; "))
        },
    }
}

fn pct_change(now: f64, before: f64) -> f64 {
    if before == 0.0 {
        if now == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (now - before).abs() * 100.0 / before
    }
}

fn row_count_change(max_pct: f64, window: usize, base: &Baseline<'_>) -> Verdict {
    let mut worst = Vec::new();
    let mut compared = 0;
    for (path, now) in base.staged {
        let refs = base.reference(path, window);
        if refs.is_empty() {
            continue;
        }
        compared += 1;
        let before = refs.iter().map(|p| p.rows as f64).sum::<f64>() / refs.len() as f64;
        let change = pct_change(*now as f64, before);
        if change > max_pct {
            worst.push(format!(
                "{path}: {now} rows against {before:.1} ({change:.1}%)"
            ));
        }
    }
    if compared == 0 {
        nothing_to_compare()
    } else if worst.is_empty() {
        Verdict {
            passed: true,
            message: format!("{compared} partition(s) within {max_pct}% of their reference"),
        }
    } else {
        Verdict {
            passed: false,
            message: format!(
                "row count changed more than {max_pct}%: {}",
                worst.join("; ")
            ),
        }
    }
}

/// Null rates of `column` by partition path in `table`: path -> (rows, nulls).
async fn null_rates(
    ctx: &SessionContext,
    rule: &str,
    table: &str,
    column: &str,
    partition_by: &[String],
) -> Result<HashMap<String, (u64, u64)>, AuditError> {
    let batches = query(
        ctx,
        rule,
        &sql::null_rate_query(column, table, partition_by),
    )
    .await?;
    let mut out = HashMap::new();
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
                crate::layout::hive_path(partition_by, &values),
                (int(n), int(n + 1)),
            );
        }
    }
    Ok(out)
}

async fn null_rate_change(
    ctx: &SessionContext,
    rule: &str,
    column: &str,
    max_points: f64,
    window: usize,
    base: &Baseline<'_>,
) -> Result<Verdict, AuditError> {
    let mut needed: Vec<&Partition> = Vec::new();
    for (path, _) in base.staged {
        for p in base.reference(path, window) {
            if !needed.iter().any(|q| q.path == p.path) {
                needed.push(p);
            }
        }
    }
    let Some(m) = base.published.filter(|_| !needed.is_empty()) else {
        return Ok(nothing_to_compare());
    };
    if m.schema.field_with_name(column).is_err() {
        return Ok(Verdict {
            passed: true,
            message: format!("column `{column}` is new: nothing to compare with"),
        });
    }
    let reference_table = format!(
        "wap_reference_{}",
        rule.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let provider = crate::table::VersionTable::new(
        crate::engine::TABLE_URL,
        m.schema_ref(),
        Vec::new(),
        needed.iter().copied(),
    )?;
    ctx.register_table(&reference_table, std::sync::Arc::new(provider))
        .map_err(|source| crate::table::TableError::Register {
            name: reference_table.clone(),
            source,
        })?;
    let before = null_rates(ctx, rule, &reference_table, column, base.partition_by).await;
    let _ = ctx.deregister_table(&reference_table);
    let before = before?;
    let now = null_rates(ctx, rule, STAGED, column, base.partition_by).await?;
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
        let refs = base.reference(path, window);
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
        if points > max_points {
            worst.push(format!(
                "{path}: {current:.1}% NULL against {reference:.1}% ({points:.1} points)"
            ));
        }
    }
    Ok(if compared == 0 {
        nothing_to_compare()
    } else if worst.is_empty() {
        Verdict {
            passed: true,
            message: format!(
                "{compared} partition(s) within {max_points} points of their reference null rate for {column}"
            ),
        }
    } else {
        Verdict {
            passed: false,
            message: format!(
                "null rate of {column} changed more than {max_points} points: {}",
                worst.join("; ")
            ),
        }
    })
}
