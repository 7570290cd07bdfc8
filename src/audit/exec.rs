//! Running one query of a rule to completion, and reading its counts.

use arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::prelude::SessionContext;

use super::AuditError;
use crate::table;

/// Runs a query of `rule` to completion.
pub(super) async fn query(
    ctx: &SessionContext,
    rule: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, AuditError> {
    let exec = |source| AuditError::Execute {
        rule: rule.to_string(),
        source,
    };
    let df = table::plan_query(ctx, sql).await.map_err(exec)?;
    table::collect(df).await.map_err(exec)
}

/// The value at row 0 of column `col` as text (`None` when NULL or absent).
pub(super) fn text_at(batches: &[RecordBatch], col: usize) -> Option<String> {
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let c = b.column(col);
    (!c.is_null(0)).then(|| arrow::util::display::array_value_to_string(c, 0).ok())?
}

/// The BIGINT at row 0 of column `col` (0 when absent or negative).
pub(super) fn int_at(batches: &[RecordBatch], col: usize) -> u64 {
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
