//! The read side of a job's table: `wap log` (versions and runs), `show`, `report` and
//! `query` (including the audit history, `wap_audit_results`). Nothing here writes.

use std::sync::Arc;

use datafusion::prelude::DataFrame;
use object_store::ObjectStoreExt;
use serde::Serialize;

use crate::audit::{AuditError, AuditReport};
use crate::conf::TableFormat;
use crate::job::{Job, UnchangedCheck};
use crate::manifest::{ChangeKind, Manifest};
use crate::{Error, Result, layout, run_id, table, versions};

/// What became of one run, as `wap log` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub logical_date: String,
    pub status: RunStatus,
    /// The version that published it (for `published`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub rows: u64,
    pub partitions: Vec<String>,
    /// When its report was written (RFC 3339).
    pub at: String,
    /// The last re-run that found it already published, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_unchanged: Option<UnchangedCheck>,
}

/// One version as another format sees it (`wap show`).
#[derive(Debug, Clone, Serialize)]
pub struct Projection {
    pub format: &'static str,
    /// The table location other engines open.
    pub location: String,
    /// The object that makes this version readable there.
    pub object: String,
    /// That format's version number of this version (Delta: `wap` version - 1; Iceberg: the
    /// `wap` version, whose metadata file `object` names).
    pub version: u64,
    /// False when the commit is still missing (a crash after the commit; the next writer or
    /// `wap doctor --repair` writes it).
    pub written: bool,
}

/// The fate of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A version holds its partitions.
    Published,
    /// An error-severity rule failed.
    AuditFailed,
    /// Audited and passed, but no version holds it: `wap audit`, a conflict, or a run
    /// interrupted before its publish.
    NotPublished,
    /// The transform produced no rows.
    NothingToPublish,
    /// `wap audit --version N`: rules tried on a published version.
    VersionAudit,
}

/// A failed read of the stored reports under `_wap/runs/`.
fn reports_unreadable(source: object_store::Error) -> Error {
    Error::Audit(AuditError::ReadReport {
        path: format!("{}/", layout::runs_folder()),
        source,
    })
}

impl Job {
    /// Every version, newest first.
    pub async fn log(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for v in versions::list_versions(self.store())
            .await?
            .into_iter()
            .rev()
        {
            out.push(versions::read_manifest(self.store(), v).await?);
        }
        Ok(out)
    }

    /// Every run with a stored report, oldest first, with what became of it.
    pub async fn runs(&self) -> Result<Vec<RunRecord>> {
        let reports = AuditReport::load_all_dated(self.store())
            .await
            .map_err(reports_unreadable)?;
        let versions = self.log().await?;
        let mut out = Vec::new();
        for (at, report) in reports {
            let run_id = report.run_id.clone();
            let published = versions
                .iter()
                .rev()
                .find(|m| m.change.run_id == run_id && m.change.kind == ChangeKind::Run)
                .map(|m| m.version);
            let status = if run_id::is_version_audit(&run_id) {
                RunStatus::VersionAudit
            } else if !report.passed() {
                RunStatus::AuditFailed
            } else if published.is_some() {
                RunStatus::Published
            } else if report.partitions.is_empty() {
                RunStatus::NothingToPublish
            } else {
                RunStatus::NotPublished
            };
            // Only a published run can have been re-run as unchanged.
            let last_unchanged = match status {
                RunStatus::Published => self.last_unchanged(&run_id).await?,
                _ => None,
            };
            out.push(RunRecord {
                run_id,
                logical_date: report.logical_date,
                status,
                version: published,
                rows: report.rows,
                partitions: report.partitions,
                at: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                last_unchanged,
            });
        }
        Ok(out)
    }

    /// The record of the last re-run that found `run_id` already published (a damaged one
    /// counts as absent: it is bookkeeping).
    async fn last_unchanged(&self, run_id: &str) -> Result<Option<UnchangedCheck>> {
        let path = layout::unchanged_path(run_id);
        let unreadable = |source| {
            Error::Versions(versions::VersionsError::Storage {
                op: "read",
                path: path.to_string(),
                source,
            })
        };
        match self.store().get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(unreadable)?;
                Ok(serde_json::from_slice(&bytes).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unreadable(e)),
        }
    }

    /// One version (default: current) with every partition's file list (read from its
    /// segments).
    pub async fn show_files(&self, version: Option<u64>) -> Result<Manifest> {
        let mut m = self.show(version).await?;
        versions::resolve_files(self.store(), [&mut m]).await?;
        Ok(m)
    }

    /// Where version `version` is readable in the other formats of `formats:` (`wap show`).
    pub async fn projections(&self, version: u64) -> Result<Vec<Projection>> {
        let mut out = Vec::new();
        if self.conf().formats.contains(&TableFormat::Delta) && version > 0 {
            let path = layout::delta_commit(version - 1);
            let written = match self.store().head(&path).await {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(source) => {
                    return Err(crate::delta::DeltaError::Storage {
                        phase: "read",
                        path: path.to_string(),
                        source,
                    }
                    .into());
                }
            };
            out.push(Projection {
                format: "delta",
                location: self.conf().table.trim_end_matches('/').to_string(),
                object: path.to_string(),
                version: version - 1,
                written,
            });
        }
        if let Some(log) = self.iceberg().filter(|_| version > 0) {
            let written = log.metadata(version).await?.is_some();
            out.push(Projection {
                format: "iceberg",
                location: self.conf().table.trim_end_matches('/').to_string(),
                object: log.metadata_location(version),
                version,
                written,
            });
        }
        Ok(out)
    }

    /// One version (default: current): the index, without file lists.
    pub async fn show(&self, version: Option<u64>) -> Result<Manifest> {
        match version {
            Some(v) => Ok(versions::read_manifest(self.store(), v).await?),
            None => versions::current(self.store()).await?.ok_or_else(|| {
                table::TableError::Empty {
                    table: self.conf().table.clone(),
                }
                .into()
            }),
        }
    }

    /// Plans a read-only query over a version (default: current), registered under the job's
    /// name; `wap_audit_results` holds one row per rule per stored audit report.
    pub async fn query(&self, version: Option<u64>, sql: &str) -> Result<DataFrame> {
        let ctx = self.session(None)?;
        let wants_results = sql.to_ascii_lowercase().contains("wap_audit_results");
        if wants_results {
            let reports = AuditReport::load_all(self.store())
                .await
                .map_err(reports_unreadable)?;
            let batch = crate::audit::report::audit_results(&reports);
            let register = |source| table::TableError::Register {
                name: "wap_audit_results".into(),
                source,
            };
            let mem = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])
                .map_err(register)?;
            ctx.register_table("wap_audit_results", Arc::new(mem))
                .map_err(register)?;
        }
        match self.show(version).await {
            Ok(manifest) => table::register_version(
                &ctx,
                &self.conf().name,
                Some(&manifest),
                manifest.schema_ref(),
            )?,
            // The audit history is queryable before anything is published.
            Err(Error::Table(table::TableError::Empty { .. }))
                if wants_results && version.is_none() => {}
            Err(e) => return Err(e),
        }
        Ok(table::plan_query(&ctx, sql).await?)
    }

    /// A stored audit report: of `run_id`, or the most recent one.
    pub async fn report(&self, run_id: Option<&str>) -> Result<AuditReport> {
        let found = match run_id {
            Some(id) => AuditReport::load(self.store(), id).await.map_err(|source| {
                Error::Audit(AuditError::ReadReport {
                    path: layout::report_path(id).to_string(),
                    source,
                })
            }),
            None => AuditReport::last(self.store())
                .await
                .map_err(reports_unreadable),
        };
        found?.ok_or_else(|| {
            Error::Usage(match run_id {
                Some(id) => format!("--run {id}: no report for that run id"),
                None => "no audit report yet: run `wap run` or `wap audit` first".into(),
            })
        })
    }
}
