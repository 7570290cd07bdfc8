//! The audit report: what each rule found, with sample failing rows. Every run keeps one at
//! `_wap/runs/<run_id>/report.json`, pass or fail.

use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::AuditError;
use super::rule::Severity;
use crate::manifest::{self, AuditSummary};

/// Format tag of report files.
pub const FORMAT: &str = "wap-report/1";

/// The outcome of one rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleResult {
    pub name: String,
    pub kind: String,
    pub severity: Severity,
    pub passed: bool,
    /// Rows that failed (for `unique`: rows sharing a key with another row; for `row_count`: 0).
    pub failing_rows: u64,
    /// Rows the rule looked at.
    pub checked_rows: u64,
    /// What was found, in words ("3 of 120 rows have a NULL in order_id, customer_id").
    pub message: String,
    /// Where the rule is defined (`file:line`).
    pub defined_at: String,
    /// Up to N failing rows as JSON objects (NULLs kept).
    pub samples: Vec<serde_json::Value>,
    /// The same samples rendered as a text table, for people.
    #[serde(skip)]
    pub sample_table: String,
}

impl RuleResult {
    /// True when this result blocks publishing.
    pub fn blocks(&self) -> bool {
        !self.passed && self.severity == Severity::Error
    }

    /// The summary kept in the manifest and printed by `run --json`.
    pub fn summary(&self) -> AuditSummary {
        AuditSummary {
            name: self.name.clone(),
            severity: match self.severity {
                Severity::Error => "error".into(),
                Severity::Warn => "warn".into(),
            },
            passed: self.passed,
            failing_rows: self.failing_rows,
        }
    }
}

/// The report of one run's audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub format: String,
    pub job: String,
    pub run_id: String,
    pub logical_date: String,
    /// `passed` or `failed` (an error-severity rule failed).
    pub status: String,
    /// Rows staged by the run.
    pub rows: u64,
    /// Partitions staged by the run (Hive paths).
    pub partitions: Vec<String>,
    pub rules: Vec<RuleResult>,
}

impl AuditReport {
    /// A report over `rules` results.
    pub fn new(
        job: &str,
        run_id: &str,
        logical_date: &str,
        rows: u64,
        partitions: Vec<String>,
        rules: Vec<RuleResult>,
    ) -> Self {
        let status = if rules.iter().any(RuleResult::blocks) {
            "failed"
        } else {
            "passed"
        };
        AuditReport {
            format: FORMAT.into(),
            job: job.into(),
            run_id: run_id.into(),
            logical_date: logical_date.into(),
            status: status.into(),
            rows,
            partitions,
            rules,
        }
    }

    /// True when no error-severity rule failed.
    pub fn passed(&self) -> bool {
        self.status == "passed"
    }

    /// Summaries of every rule.
    pub fn summaries(&self) -> Vec<AuditSummary> {
        self.rules.iter().map(RuleResult::summary).collect()
    }

    /// Writes the report under `_wap/runs/<run_id>/`.
    pub async fn save(&self, table: &Arc<dyn ObjectStore>) -> Result<(), AuditError> {
        let path = manifest::report_path(&self.run_id);
        let body = serde_json::to_vec_pretty(self).expect("report serializes");
        table
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|source| AuditError::Report {
                path: path.to_string(),
                source,
            })?;
        Ok(())
    }

    /// Reads the report of `run_id`, if one was written (a damaged one counts as absent).
    pub async fn load(
        table: &Arc<dyn ObjectStore>,
        run_id: &str,
    ) -> Result<Option<Self>, object_store::Error> {
        let path = manifest::report_path(run_id);
        match table.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                Ok(serde_json::from_slice(&bytes).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
