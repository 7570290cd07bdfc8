//! The audit report: what each rule found, with sample failing rows. Every run keeps one at
//! `_wap/runs/<run_id>/report.json`, pass or fail.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::AuditError;
use crate::conf::rules::Severity;
use crate::layout;
use crate::manifest::AuditSummary;

/// Format tag of report files.
pub const FORMAT: &str = "wap-report/1";

async fn put(table: &Arc<dyn ObjectStore>, path: &Path, body: Vec<u8>) -> Result<(), AuditError> {
    table
        .put(path, PutPayload::from(body))
        .await
        .map_err(|source| AuditError::WriteReport {
            path: path.to_string(),
            source,
        })?;
    Ok(())
}

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
    /// Column order of the samples.
    #[serde(default)]
    pub sample_columns: Vec<String>,
    /// The same samples rendered as a text table, for people.
    #[serde(skip)]
    pub sample_table: String,
    /// The same samples as Arrow, saved as Parquet beside the report.
    #[serde(skip)]
    pub sample_batches: Vec<arrow::record_batch::RecordBatch>,
    /// Time spent evaluating the rule (for rules sharing one scan: the scan's time).
    #[serde(default)]
    pub duration_ms: u64,
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
    /// Rows held back by `on_fail: quarantine` rules, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// Merge runs: the version the batch was merged onto (a re-run looks for its own version
    /// after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
}

/// Rows a run held back instead of publishing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub rows: u64,
    /// Folder of the quarantined rows (Hive partitions of Parquet), relative to the table root.
    pub path: String,
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
            quarantine: None,
            base: None,
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

    /// Writes the report under `_wap/runs/<run_id>/`, with each failing rule's samples as
    /// Parquet in `samples/`. Samples that cannot be encoded are skipped with a warning: they
    /// are also in the report itself.
    pub async fn save(&self, table: &Arc<dyn ObjectStore>) -> Result<(), AuditError> {
        for r in self.rules.iter().filter(|r| !r.sample_batches.is_empty()) {
            let path = layout::samples_path(&self.run_id, &r.name);
            let mut buf = Vec::new();
            let encoded = (|| {
                let schema = r.sample_batches[0].schema();
                let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None)?;
                for b in &r.sample_batches {
                    w.write(b)?;
                }
                w.close().map(|_| ())
            })();
            match encoded {
                Ok(()) => put(table, &path, buf).await?,
                Err(e) => tracing::warn!(%path, error = %e, "samples not saved as Parquet"),
            }
        }
        let body = serde_json::to_vec_pretty(self).expect("report serializes");
        put(table, &layout::report_path(&self.run_id), body).await
    }

    /// Reads the report of `run_id`, if one was written (a damaged one counts as absent).
    pub async fn load(
        table: &Arc<dyn ObjectStore>,
        run_id: &str,
    ) -> Result<Option<Self>, object_store::Error> {
        let path = layout::report_path(run_id);
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

impl AuditReport {
    /// Every stored report's metadata (one listing of `_wap/runs/`).
    pub async fn list(
        table: &Arc<dyn ObjectStore>,
    ) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
        use futures::TryStreamExt;
        let all: Vec<_> = table
            .list(Some(&layout::runs_folder()))
            .try_collect()
            .await?;
        Ok(all
            .into_iter()
            .filter(|m| layout::is_report(&m.location))
            .collect())
    }

    /// Every stored report, oldest first.
    pub async fn load_all(table: &Arc<dyn ObjectStore>) -> Result<Vec<Self>, object_store::Error> {
        Ok(Self::load_all_dated(table)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Every stored report with the time it was written, oldest first (one listing, one read
    /// each; an unreadable report is skipped with a warning).
    pub async fn load_all_dated(
        table: &Arc<dyn ObjectStore>,
    ) -> Result<Vec<(chrono::DateTime<chrono::Utc>, Self)>, object_store::Error> {
        let mut metas = Self::list(table).await?;
        metas.sort_by(|a, b| (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location)));
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let bytes = table.get(&m.location).await?.bytes().await?;
            match serde_json::from_slice::<AuditReport>(&bytes) {
                Ok(r) => out.push((m.last_modified, r)),
                Err(e) => {
                    tracing::warn!(path = %m.location, error = %e, "unreadable audit report skipped")
                }
            }
        }
        Ok(out)
    }

    /// The most recently written report.
    pub async fn last(table: &Arc<dyn ObjectStore>) -> Result<Option<Self>, object_store::Error> {
        let metas = Self::list(table).await?;
        let Some(newest) = metas
            .into_iter()
            .max_by(|a, b| (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location)))
        else {
            return Ok(None);
        };
        let bytes = table.get(&newest.location).await?.bytes().await?;
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Failing rules that kept sample rows.
    fn failing_with_samples(&self) -> impl Iterator<Item = &RuleResult> {
        self.rules
            .iter()
            .filter(|r| !r.passed && !r.samples.is_empty())
    }

    fn verdict(r: &RuleResult) -> &'static str {
        match (r.passed, r.blocks()) {
            (true, _) => "pass",
            (false, true) => "FAIL",
            (false, false) => "warn",
        }
    }

    fn sample_rows(r: &RuleResult) -> (Vec<String>, Vec<Vec<String>>) {
        let mut columns: Vec<String> = r.sample_columns.clone();
        for s in &r.samples {
            if let Some(o) = s.as_object() {
                for k in o.keys() {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
            }
        }
        let rows = r
            .samples
            .iter()
            .map(|s| {
                columns
                    .iter()
                    .map(|c| match s.get(c) {
                        None | Some(serde_json::Value::Null) => "NULL".to_string(),
                        Some(serde_json::Value::String(v)) => v.clone(),
                        Some(v) => v.to_string(),
                    })
                    .collect()
            })
            .collect();
        (columns, rows)
    }

    /// A readable text rendering: one line per rule, then the samples of failing rules.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "report of run {} ({} {}): {} ({} rows in {} partition(s))\n",
            self.run_id,
            self.job,
            self.logical_date,
            self.status,
            self.rows,
            self.partitions.len()
        );
        let width = self
            .rules
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        out.push_str(&format!(
            "  {:<4}  {:<width$}  {:<16}  {:<8}  {:>12}  message\n",
            "", "rule", "kind", "severity", "failing rows"
        ));
        for r in &self.rules {
            out.push_str(&format!(
                "  {:<4}  {:<width$}  {:<16}  {:<8}  {:>12}  {}\n",
                Self::verdict(r),
                r.name,
                r.kind,
                format!("{:?}", r.severity).to_lowercase(),
                r.failing_rows,
                r.message
            ));
        }
        for r in self.failing_with_samples() {
            let (cols, rows) = Self::sample_rows(r);
            out.push_str(&format!(
                "\nsamples of {} ({}):\n  {}\n",
                r.name,
                r.defined_at,
                cols.join(" | ")
            ));
            for row in rows {
                out.push_str(&format!("  {}\n", row.join(" | ")));
            }
        }
        out
    }

    /// Markdown for pasting into a ticket.
    pub fn render_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut out = format!(
            "### Audit of `{}` for {}: **{}**\n\nRun `{}`, {} rows in {} partition(s).\n\n",
            self.job,
            self.logical_date,
            self.status,
            self.run_id,
            self.rows,
            self.partitions.len()
        );
        out.push_str(
            "| | rule | kind | severity | failing rows | message |\n|---|---|---|---|---:|---|\n",
        );
        for r in &self.rules {
            out.push_str(&format!(
                "| {} | `{}` | {} | {} | {} | {} |\n",
                Self::verdict(r),
                esc(&r.name),
                r.kind,
                format!("{:?}", r.severity).to_lowercase(),
                r.failing_rows,
                esc(&r.message)
            ));
        }
        for r in self.failing_with_samples() {
            let (cols, rows) = Self::sample_rows(r);
            out.push_str(&format!(
                "\n**Samples of `{}`** ({})\n\n",
                esc(&r.name),
                esc(&r.defined_at)
            ));
            out.push_str(&format!(
                "| {} |\n|{}\n",
                cols.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | "),
                "---|".repeat(cols.len())
            ));
            for row in rows {
                out.push_str(&format!(
                    "| {} |\n",
                    row.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
                ));
            }
        }
        out
    }
}

/// One row per rule per run, for `wap query` over table `wap_audit_results`.
pub fn audit_results(reports: &[AuditReport]) -> arrow::record_batch::RecordBatch {
    use arrow::array::{ArrayRef, BooleanArray, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let rows: Vec<(&AuditReport, &RuleResult)> = reports
        .iter()
        .flat_map(|r| r.rules.iter().map(move |x| (r, x)))
        .collect();
    let strings = |f: &dyn Fn(&(&AuditReport, &RuleResult)) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|(r, _)| r.run_id.clone()),
        strings(&|(r, _)| r.logical_date.clone()),
        strings(&|(r, _)| r.job.clone()),
        strings(&|(_, x)| x.name.clone()),
        strings(&|(_, x)| x.kind.clone()),
        strings(&|(_, x)| format!("{:?}", x.severity).to_lowercase()),
        Arc::new(BooleanArray::from(
            rows.iter().map(|(_, x)| x.passed).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            rows.iter().map(|(_, x)| x.failing_rows).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            rows.iter().map(|(_, x)| x.checked_rows).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            rows.iter().map(|(_, x)| x.duration_ms).collect::<Vec<_>>(),
        )),
        strings(&|(_, x)| x.message.clone()),
    ];
    let schema = Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("logical_date", DataType::Utf8, false),
        Field::new("job", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("passed", DataType::Boolean, false),
        Field::new("failing_rows", DataType::UInt64, false),
        Field::new("checked_rows", DataType::UInt64, false),
        Field::new("duration_ms", DataType::UInt64, false),
        Field::new("message", DataType::Utf8, false),
    ]);
    arrow::record_batch::RecordBatch::try_new(Arc::new(schema), columns)
        .expect("columns match the schema")
}
