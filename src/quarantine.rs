//! Quarantine: the step between the audit's two passes when a rule says `on_fail: quarantine`.
//!
//! ```text
//!  staged ─► quarantining rules find failing rows? ──no──► staged publishes as it is
//!                      │ yes
//!                      ▼
//!  rows failing any of them ─► _wap/runs/<run_id>/quarantine/   (kept, never published)
//!  the other rows           ─► staging/<run_id>-clean/          (audited again, published)
//! ```
//!
//! Both outputs are deterministic (the same writer as phase 1), so a re-run rewrites the same
//! bytes. A partition whose every row is quarantined stays in the clean run, empty, so that
//! publishing replaces its old content with nothing.
//!
//! In merge mode the split is of the batch, before the merge: the quarantined batch rows never
//! reach the table, and the clean batch (`<merge folder>/_batch-clean`) is what merges.

use std::sync::Arc;

use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use tracing::info;

use crate::audit::report::Quarantine;
use crate::conf::JobConf;
use crate::conf::rules::Rule;
use crate::write::{self, StagedPartition, StagedRun, WriteOptions};
use crate::{Error, Result, layout, table};

/// Where a quarantine writes, and with what.
pub struct QuarantineTarget<'a> {
    /// The job as the rows are written (in merge mode, unpartitioned like the batch).
    pub conf: &'a JobConf,
    /// The folder of the clean rows.
    pub clean_folder: String,
    pub table: &'a Arc<dyn ObjectStore>,
    pub options: &'a WriteOptions,
    /// The source location, for error messages.
    pub source: &'a str,
}

/// Splits the rows of `staged` (registered as table `staged` in `ctx`) by the quarantining
/// `rules`: the failing rows are written to the run's quarantine folder, the others to its
/// clean folder, which is returned as the run to audit and publish.
pub async fn split(
    ctx: &SessionContext,
    target: &QuarantineTarget<'_>,
    rules: &[&Rule],
    staged: &StagedRun,
) -> Result<(StagedRun, Quarantine)> {
    let run_id = staged.run_id.as_str();
    let failing = rules
        .iter()
        .filter_map(|r| crate::audit::sql::failing_predicate(&r.kind))
        .collect::<Vec<_>>()
        .join(" OR ");
    let plan =
        |sql: String| async move { table::plan_query(ctx, &sql).await.map_err(Error::Table) };
    let write = |df, folder: String| async move {
        write::write_partitions(
            ctx,
            df,
            target.conf,
            run_id,
            &folder,
            target.table,
            target.options,
            target.source,
        )
        .await
        .map_err(Error::Write)
    };
    let held_folder = layout::quarantine_folder(run_id);
    let bad = plan(format!("SELECT * FROM staged WHERE {failing}")).await?;
    let held = write(bad, held_folder.clone()).await?;
    let good = plan(format!("SELECT * FROM staged WHERE NOT ({failing})")).await?;
    let mut clean = write(good, target.clean_folder.clone()).await?;
    for p in &staged.partitions {
        if !clean.partitions.iter().any(|c| c.path == p.path) {
            clean.partitions.push(StagedPartition {
                path: p.path.clone(),
                values: p.values.clone(),
                rows: 0,
                files: Vec::new(),
            });
        }
    }
    clean.partitions.sort_by(|a, b| a.path.cmp(&b.path));
    info!(
        quarantined = held.rows,
        kept = clean.rows,
        "quarantined failing rows"
    );
    Ok((
        clean,
        Quarantine {
            rows: held.rows,
            path: format!("{held_folder}/"),
        },
    ))
}
