//! Phase 2, audit: validated rules (from [`crate::conf::rules`]) evaluated over the staged data
//! (table `staged`), with the current published version as table `published`.
//!
//! ```text
//!  rules ──► plan (one evaluation per rule kind) ──► metadata proofs (staged footers)
//!                                                 ├► one fused scan per scope (staged, result)
//!                                                 ├► own queries (unique strategies, sql,
//!                                                 │   relationships), concurrently
//!                                                 └► comparisons with the published history
//!        ──► every rule has a result (or the audit fails) ──► samples of failing rules
//! ```
//!
//! Invariants:
//! - Rules are compiled against the transform's schema before anything is written; a rule that
//!   does not plan is a configuration error.
//! - Rule SQL is read-only: one query per rule, no DDL, DML, COPY or statements.
//! - How a rule kind is evaluated is decided in one place ([`plan::evaluation`]); every rule
//!   gets exactly one result, or the audit fails naming it.
//! - The staged files and their footers are handed to the audit explicitly ([`StagedFiles`]),
//!   whether they are a run's staged files or a published version's (`wap audit --version`).
//! - This phase writes nothing but `_wap/runs/<run_id>/` (the report and samples).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use object_store::{ObjectMeta, ObjectStore};

use crate::manifest::{Manifest, Partition};

mod dense;
mod exec;
mod files;
mod history;
mod merge;
pub mod plan;
mod proof;
pub mod report;
pub mod run;
pub mod sql;
pub mod tables;
#[cfg(test)]
mod testing;
pub mod unique;

pub use crate::conf::rules::{Rule, RuleKind, RuleSet, Severity};
pub use files::ReadFault;
pub use report::{AuditReport, RuleResult};

/// Table name of the staged data in rule SQL.
pub const STAGED: &str = "staged";
/// Table name of the table as it would be after publishing, in rule SQL.
pub const RESULT: &str = "result";
/// Table name of the current published version in rule SQL.
pub const PUBLISHED: &str = "published";

/// The files behind table `staged`, with the store they are in: the audit reads their footers
/// (metadata proofs, `unique` bounds) and key columns directly. Clones share the footers once
/// read, so the two passes of a quarantining run read each footer once.
#[derive(Debug, Clone)]
pub struct StagedFiles {
    pub store: Arc<dyn ObjectStore>,
    pub schema: SchemaRef,
    pub files: Vec<ObjectMeta>,
    footers: Arc<tokio::sync::OnceCell<Vec<files::Footer>>>,
}

impl StagedFiles {
    /// The files `files` of `store`, of schema `schema`.
    pub fn new(store: Arc<dyn ObjectStore>, schema: SchemaRef, files: Vec<ObjectMeta>) -> Self {
        StagedFiles {
            store,
            schema,
            files,
            footers: Default::default(),
        }
    }

    /// Every file's footer, read at the first call (one ranged read each, concurrently) and
    /// kept; a failed read is not kept, so a later call tries again.
    async fn footers(&self) -> Result<&[files::Footer], ReadFault> {
        self.footers
            .get_or_try_init(|| files::footers(&self.store, &self.files))
            .await
            .map(Vec::as_slice)
    }
}

/// What a run is judged against besides its own rows: the logical date, the partitions it
/// staged (and their files), and the published version (for the comparisons with history).
#[derive(Debug, Clone, Copy)]
pub struct Baseline<'a> {
    pub logical_date: chrono::NaiveDate,
    pub partition_by: &'a [String],
    /// (Hive path, rows) of each staged partition.
    pub staged: &'a [(String, u64)],
    /// The files behind table `staged`, when it is a list of files the audit may read itself
    /// (metadata proofs, `unique` strategies). `None`: everything goes through SQL.
    pub files: Option<&'a StagedFiles>,
    pub published: Option<&'a Manifest>,
    /// Counters of rules done, for a display.
    pub progress: Option<&'a crate::progress::Progress>,
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

/// Errors of phase 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit rules do not compile:\n{}", problems.join("\n"))]
    Compile { problems: Vec<String> },
    #[error("audit: rule `{rule}` failed to run: {source}")]
    Execute {
        rule: String,
        source: crate::table::TableError,
    },
    #[error("audit: the scan of table `{table}` failed: {source}")]
    Scan {
        table: String,
        source: crate::table::TableError,
    },
    #[error("audit: rule `{rule}`: {source}")]
    Read { rule: String, source: ReadFault },
    #[error("audit: unable to read the footers of the staged files: {source}")]
    Footers { source: ReadFault },
    #[error(
        "audit: rule `{rule}` ({kind}) got no result from its evaluation; this is a bug in wap"
    )]
    NoResult { rule: String, kind: &'static str },
    #[error("audit: relationships rule `{rule}`: target {target}: {source}")]
    Target {
        rule: String,
        target: String,
        source: Box<crate::Error>,
    },
    #[error("unable to write audit report {path}: {source}")]
    WriteReport {
        path: String,
        source: object_store::Error,
    },
    #[error("unable to read audit report {path}: {source}")]
    ReadReport {
        path: String,
        source: object_store::Error,
    },
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
}

impl AuditError {
    /// True when the rules themselves are at fault (exit code 2).
    pub fn is_config(&self) -> bool {
        match self {
            AuditError::Compile { .. } => true,
            AuditError::Target { source, .. } => source.exit_code() == crate::exit_code::CONFIG,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch};
    use object_store::ObjectStoreExt;

    use super::*;

    fn batch_schema() -> SchemaRef {
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, true),
        ]))
    }

    #[tokio::test]
    async fn footers_are_read_once_and_shared_by_clones() {
        let batch = RecordBatch::try_from_iter([(
            "k",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let props = parquet::file::properties::WriterProperties::builder();
        let (_, store, metas) =
            testing::staged_files(&[batch.clone(), batch], props, &Default::default()).await;
        let files = StagedFiles::new(Arc::clone(&store), batch_schema(), metas.clone());
        let again = files.clone();
        assert_eq!(files.footers().await.unwrap().len(), 2);
        // Gone from the store: only footers already read can still be had.
        for m in &metas {
            store.delete(&m.location).await.unwrap();
        }
        assert_eq!(again.footers().await.unwrap().len(), 2);
        let fresh = StagedFiles::new(store, batch_schema(), metas);
        assert!(fresh.footers().await.is_err());
    }
}
