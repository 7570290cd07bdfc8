//! Phase 2, audit: YAML rules run as DataFusion SQL over the staged data (table `staged`), with
//! the current published version as table `published`.
//!
//! Invariants:
//! - Rules are compiled against the transform's schema before anything is written; a rule that
//!   does not plan is a configuration error.
//! - Rule SQL is read-only: one query per rule, no DDL, DML, COPY or statements.
//! - All row-level rules share ONE aggregate scan of `staged`; `unique` and `sql` rules run as
//!   their own queries, concurrently. A `unique` rule over `staged` on integer columns whose
//!   footers bound them to a small range marks a bitmap of that range instead; one on the key
//!   merges the sorted files (bounded memory). Samples are fetched only for failing rules.
//! - This phase writes nothing but `_wap/runs/<run_id>/report.json`.

mod dense;
mod merge;
mod proof;
pub mod report;
pub mod rule;
pub mod run;
pub mod sql;
#[cfg(test)]
mod testing;

pub use report::{AuditReport, RuleResult};
pub use rule::{Rule, RuleKind, RuleSet, Severity};

/// Errors of phase 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit rules do not compile:\n{}", problems.join("\n"))]
    Compile { problems: Vec<String> },
    #[error("audit rule `{rule}` failed to run: {message}")]
    Execute { rule: String, message: String },
    #[error("unable to write audit report {path}: {source}")]
    Report {
        path: String,
        source: object_store::Error,
    },
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
}

impl AuditError {
    /// True when the rules themselves are at fault (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(self, AuditError::Compile { .. })
    }
}
