//! A job run: the three phases in order, and the read-side commands over the same table.
//!
//! ```text
//!  list source ─► run id ─► already published? ──yes──► unchanged (no data read)
//!                               │ no
//!                               ▼
//!  plan transform + compile rules (config errors stop here, nothing written)
//!                               ▼
//!  write staging/<run_id>/ ─► audit staged ─► report.json ─► failed? ──► audit_failed (exit 3)
//!                                                              │ passed
//!                                                              ▼
//!                                               publish (commit manifest, swap pointer)
//! ```
//!
//! The run id is a hash of everything that determines the output: job name, job and rule file
//! contents, logical date, and each source object's path, size and ETag. Same inputs, same run id,
//! same staged bytes, and a re-run finds its own work already published.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use chrono::NaiveDate;
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{Instrument, info};

use crate::audit::{self, AuditReport};
use crate::conf::JobConf;
use crate::engine::{self, EngineOptions};
use crate::manifest::{AuditSummary, Manifest, Partition};
use crate::publish::{Proposal, PublishError, PublishOptions, PublishOutcome, Publisher};
use crate::store::Location;
use crate::table;
use crate::versions;
use crate::write::{self, WriteOptions};
use crate::{Error, Result};

/// Tunables of a job run.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub engine: EngineOptions,
    pub write: WriteOptions,
    pub publish: PublishOptions,
    /// Failing rows kept per failing rule.
    pub sample_limit: usize,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            engine: EngineOptions::default(),
            write: WriteOptions::default(),
            publish: PublishOptions::default(),
            sample_limit: 10,
        }
    }
}

/// Whether a run may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write, audit and publish (`wap run`).
    Publish,
    /// Write and audit only (`wap audit`).
    AuditOnly,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A new version was published.
    Published,
    /// The table already holds this run's output; nothing was written.
    Unchanged,
    /// An error-severity rule failed; nothing was published.
    AuditFailed,
    /// `wap audit` only: every error-severity rule passed.
    AuditPassed,
    /// Another publisher replaced the same partitions first; nothing was published.
    Conflict,
}

impl Status {
    /// The process exit code for this status.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Published | Status::Unchanged | Status::AuditPassed => crate::exit_code::OK,
            Status::AuditFailed => crate::exit_code::AUDIT_FAILED,
            Status::Conflict => crate::exit_code::CONFLICT,
        }
    }
}

/// The result of `run`, `audit` or `rollback` (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub status: Status,
    /// Current version after the run (0: never published).
    pub version: u64,
    pub run_id: String,
    pub logical_date: String,
    /// Rows staged by the run (for a rollback: rows of the restored version).
    pub rows: u64,
    /// Hive paths of the partitions the run produced.
    pub partitions: Vec<String>,
    pub audits: Vec<AuditSummary>,
    /// Where the full audit report is, relative to the table root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Why a run did not publish (conflict details).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The audit report, for rendering.
    #[serde(skip)]
    pub audit_report: Option<AuditReport>,
    /// Wall time by phase.
    pub timings: Timings,
}

/// Milliseconds spent in each phase of a run (0 for phases not reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Listing the source, reading the current version, planning the transform and compiling
    /// the rules.
    pub plan_ms: u64,
    /// Phase 1: transform and staged Parquet files.
    pub write_ms: u64,
    /// Phase 2: the rules (and quarantine, if any).
    pub audit_ms: u64,
    /// Phase 3: the manifest commit and pointer swap.
    pub publish_ms: u64,
    pub total_ms: u64,
}

fn ms_since(t: std::time::Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

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

/// Written to `_wap/runs/<run_id>/unchanged.json` by a re-run of an already published run (its
/// only write): when it ran and which version held the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UnchangedCheck {
    pub version: u64,
    pub checked_at: String,
}

/// Run ids of `wap audit --version N` start with this (then `N-<hash>`).
const VERSION_AUDIT_PREFIX: &str = "audit-v";

fn unchanged_path(run_id: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("_wap/runs/{run_id}/unchanged.json"))
}

/// What a run's rules are judged against.
fn baseline<'a>(
    logical_date: NaiveDate,
    conf: &'a JobConf,
    staged: &'a [(String, u64)],
    published: Option<&'a Manifest>,
) -> audit::run::Baseline<'a> {
    audit::run::Baseline {
        logical_date,
        partition_by: &conf.partition_by,
        staged,
        published,
    }
}

/// (Hive path, rows) of each staged partition.
fn staged_rows(staged: &write::StagedRun) -> Vec<(String, u64)> {
    staged
        .partitions
        .iter()
        .map(|p| (p.path.clone(), p.rows))
        .collect()
}

/// Registers `staged` (the run's files) and `result` (the table as it would be after
/// publishing: the current version minus the partitions the run replaces, plus the run's files).
fn register_staged(
    ctx: &SessionContext,
    staged: &write::StagedRun,
    current: Option<&Manifest>,
) -> Result<()> {
    let replaced: std::collections::BTreeSet<&str> =
        staged.partitions.iter().map(|p| p.path.as_str()).collect();
    let kept = current.into_iter().flat_map(|m| {
        m.partitions
            .values()
            .filter(|p| !replaced.contains(p.path.as_str()))
    });
    let result = table::VersionTable::new(
        crate::engine::TABLE_URL,
        Arc::clone(&staged.schema),
        staged.objects(),
        kept,
    )?;
    let staged_table = table::files_table(Arc::clone(&staged.schema), staged.objects())?;
    let providers: [(&str, Arc<dyn datafusion::datasource::TableProvider>); 2] = [
        (audit::run::STAGED, Arc::new(staged_table)),
        (audit::run::RESULT, Arc::new(result)),
    ];
    for (name, provider) in providers {
        let register = ctx
            .deregister_table(name)
            .and_then(|_| ctx.register_table(name, provider));
        register.map_err(|source| table::TableError::Register {
            name: name.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// What `wap check` verified.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub rules: usize,
    pub rule_files: usize,
    /// The transform's output columns with their types.
    pub columns: Vec<String>,
    /// The source location whose schema was used.
    pub source: String,
}

/// Validates a logical date: `YYYY-MM-DD`, a real day.
pub fn parse_date(date: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .filter(|d| d.format("%Y-%m-%d").to_string() == date)
        .ok_or_else(|| {
            Error::Usage(format!(
                "--date `{date}` is not a date: expected YYYY-MM-DD, e.g. 2024-01-31"
            ))
        })
}

/// The run id of a job run: a hash of what determines its output, never a uuid or a clock.
pub fn run_id(conf: &JobConf, date: &str, source: &[ObjectMeta]) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("wap-run", b"1");
    field("name", conf.name.as_bytes());
    field("conf", conf.text.as_bytes());
    for f in conf.rules.files() {
        field("rules", f.text.as_bytes());
    }
    field("date", date.as_bytes());
    for o in source {
        field("object", o.location.as_ref().as_bytes());
        field("size", &o.size.to_le_bytes());
        let tag = o.e_tag.clone().unwrap_or_else(|| {
            o.last_modified
                .timestamp_nanos_opt()
                .unwrap_or(0)
                .to_string()
        });
        field("etag", tag.as_bytes());
    }
    let digest = h.finalize();
    crate::manifest::hex(&digest[..12])
}

/// A configured job bound to its table store.
#[derive(Debug, Clone)]
pub struct Job {
    conf: JobConf,
    table: Arc<dyn ObjectStore>,
    options: JobOptions,
}

impl Job {
    /// Opens the table the configuration names.
    pub fn open(conf: JobConf, mut options: JobOptions) -> Result<Self> {
        let location = Location::parse(&conf.table, &conf.storage)?;
        options.publish.compare_and_swap &= location.compare_and_swap;
        let table = location.scoped()?;
        Ok(Job::with_store(conf, table, options))
    }

    /// A job over an explicit table store (tests wrap stores this way).
    pub fn with_store(conf: JobConf, table: Arc<dyn ObjectStore>, options: JobOptions) -> Self {
        Job {
            conf,
            table,
            options,
        }
    }

    /// The configuration.
    pub fn conf(&self) -> &JobConf {
        &self.conf
    }

    /// The table store (rooted at the table).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.table
    }

    fn session(&self, source: Option<Arc<dyn ObjectStore>>) -> Result<SessionContext> {
        // Not the user's query at fault: an engine failure (exit 1).
        engine::session(&self.options.engine, Arc::clone(&self.table), source).map_err(|e| {
            Error::Table(table::TableError::Execute {
                message: e.to_string(),
            })
        })
    }

    /// Runs the job for one logical date.
    pub async fn run(&self, date: &str, mode: Mode) -> Result<RunOutcome> {
        let started = std::time::Instant::now();
        parse_date(date)?;
        let conf = &self.conf;
        let source = write::list_source(conf, date).await?;
        let run_id = run_id(conf, date, &source.objects);
        let span = tracing::info_span!("run", job = %conf.name, run_id = %run_id, date);
        let mut timings = Timings::default();
        let mut outcome = self
            .run_phases(date, mode, source, run_id, &mut timings)
            .instrument(span)
            .await?;
        timings.total_ms = ms_since(started);
        outcome.timings = timings;
        Ok(outcome)
    }

    async fn run_phases(
        &self,
        date: &str,
        mode: Mode,
        source: write::SourceObjects,
        run_id: String,
        timings: &mut Timings,
    ) -> Result<RunOutcome> {
        let conf = &self.conf;
        let mut phase = std::time::Instant::now();
        let current = versions::current(&self.table).await?;
        let current_version = current.as_ref().map_or(0, |m| m.version);

        if mode == Mode::Publish
            && let Some(done) = self.already_published(&run_id, current.as_ref()).await?
        {
            info!(
                version = current_version,
                "run already published; nothing to do"
            );
            // Bookkeeping for `wap log` only: a failure here does not fail an idempotent re-run.
            let check = UnchangedCheck {
                version: current_version,
                checked_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            };
            let path = unchanged_path(&run_id);
            let body = serde_json::to_vec_pretty(&check).expect("serializable");
            if let Err(e) = self.table.put(&path, body.into()).await {
                tracing::warn!(path = %path, error = %e, "unable to record the unchanged re-run");
            }
            return Ok(done);
        }

        // Plan everything before writing anything.
        let (ctx, df) = self.prepare(date, &source, current.as_ref()).await?;
        timings.plan_ms = ms_since(phase);
        phase = std::time::Instant::now();
        let rules = conf.rules.rules();

        // Phase 1.
        let staged = write::write_staging(
            &ctx,
            df,
            conf,
            &run_id,
            &self.table,
            &self.options.write,
            &source.location,
        )
        .instrument(tracing::info_span!("write"))
        .await?;
        info!(
            rows = staged.rows,
            partitions = staged.partitions.len(),
            "staged"
        );

        timings.write_ms = ms_since(phase);
        phase = std::time::Instant::now();
        // Phase 2.
        register_staged(&ctx, &staged, current.as_ref())?;
        let logical_date = parse_date(date)?;
        let samples = conf.audit_samples.unwrap_or(self.options.sample_limit);
        let (quarantining, others): (Vec<&audit::Rule>, Vec<&audit::Rule>) =
            rules.iter().copied().partition(|r| r.quarantine);
        let mut results = Vec::new();
        let mut quarantine = None;
        let mut staged = staged;
        if !quarantining.is_empty() {
            let staged_rows = staged_rows(&staged);
            let baseline = baseline(logical_date, conf, &staged_rows, current.as_ref());
            let found = audit::run::run(&ctx, &quarantining, &conf.key, samples, &baseline)
                .instrument(tracing::info_span!("audit", quarantine = true))
                .await?;
            if found.iter().any(|r| r.failing_rows > 0) {
                let (clean, q) = self
                    .quarantine(&ctx, &quarantining, &staged, &source.location)
                    .await?;
                staged = clean;
                register_staged(&ctx, &staged, current.as_ref())?;
                quarantine = Some(q);
            }
            results.extend(found);
        }
        let staged_rows = staged_rows(&staged);
        let baseline = baseline(logical_date, conf, &staged_rows, current.as_ref());
        results.extend(
            audit::run::run(&ctx, &others, &conf.key, samples, &baseline)
                .instrument(tracing::info_span!("audit"))
                .await?,
        );
        results.sort_by_key(|r| rules.iter().position(|x| x.name == r.name));
        let partitions: Vec<String> = staged.partitions.iter().map(|p| p.path.clone()).collect();
        let mut report = AuditReport::new(
            &conf.name,
            &run_id,
            date,
            staged.rows,
            partitions.clone(),
            results,
        );
        report.quarantine = quarantine;
        report.save(&self.table).await?;
        timings.audit_ms = ms_since(phase);
        phase = std::time::Instant::now();
        let mut outcome = RunOutcome {
            status: Status::AuditPassed,
            version: current_version,
            run_id: run_id.clone(),
            logical_date: date.to_string(),
            rows: staged.rows,
            partitions,
            audits: report.summaries(),
            report: Some(crate::manifest::report_path(&run_id).to_string()),
            message: None,
            audit_report: Some(report.clone()),
            timings: Timings::default(),
        };
        if !report.passed() {
            outcome.status = Status::AuditFailed;
            return Ok(outcome);
        }
        if mode == Mode::AuditOnly {
            return Ok(outcome);
        }

        if staged.partitions.is_empty() {
            outcome.status = Status::Unchanged;
            outcome.message = Some(format!(
                "the transform produced no rows for {date}: no partition to replace, nothing published"
            ));
            return Ok(outcome);
        }

        // Phase 3: the run's file lists go up as one segment, then the manifest names it.
        let segment = write::write_segment(&self.table, &staged).await?;
        let proposal = Proposal::Replace {
            run_id: run_id.clone(),
            logical_date: date.to_string(),
            table: conf.name.clone(),
            schema: staged.schema.as_ref().clone(),
            partition_by: conf.partition_by.clone(),
            key: conf.key.clone(),
            partitions: staged
                .partitions
                .iter()
                .map(|p| {
                    let values = conf
                        .partition_by
                        .iter()
                        .cloned()
                        .zip(p.values.iter().cloned())
                        .collect();
                    Partition::new(&p.path, values, &p.files, &run_id, date, &segment)
                })
                .collect(),
            audits: report.summaries(),
        };
        let outcome = self.publish(proposal, current_version, outcome).await;
        timings.publish_ms = ms_since(phase);
        outcome
    }

    /// Splits the staged rows: rows failing any quarantining rule go to
    /// `_wap/runs/<run_id>/quarantine/` (Hive partitions, Parquet), the others are rewritten to
    /// `staging/<run_id>-clean/` and become what the run publishes. Both are deterministic. A
    /// partition whose every row is quarantined stays in the clean run, empty, so that publishing
    /// replaces its old content with nothing.
    async fn quarantine(
        &self,
        ctx: &SessionContext,
        rules: &[&audit::Rule],
        staged: &write::StagedRun,
        source: &str,
    ) -> Result<(write::StagedRun, audit::report::Quarantine)> {
        let run_id = staged.run_id.as_str();
        let failing = rules
            .iter()
            .filter_map(|r| audit::sql::failing_predicate(&r.kind))
            .collect::<Vec<_>>()
            .join(" OR ");
        let plan =
            |sql: String| async move { table::plan_query(ctx, &sql).await.map_err(Error::Table) };
        let path = format!("_wap/runs/{run_id}/quarantine");
        let bad = plan(format!("SELECT * FROM staged WHERE {failing}")).await?;
        let held = write::write_partitions(
            ctx,
            bad,
            &self.conf,
            run_id,
            &path,
            &self.table,
            &self.options.write,
            source,
        )
        .await?;
        let good = plan(format!("SELECT * FROM staged WHERE NOT ({failing})")).await?;
        let mut clean = write::write_partitions(
            ctx,
            good,
            &self.conf,
            run_id,
            &format!("staging/{run_id}-clean"),
            &self.table,
            &self.options.write,
            source,
        )
        .await?;
        for p in &staged.partitions {
            if !clean.partitions.iter().any(|c| c.path == p.path) {
                clean.partitions.push(write::StagedPartition {
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
            audit::report::Quarantine {
                rows: held.rows,
                path: format!("{path}/"),
            },
        ))
    }

    /// Plans the transform and compiles every rule against its schema, reading no data: the
    /// session has `source`, `published` and an empty `staged` registered.
    async fn prepare(
        &self,
        date: &str,
        source: &write::SourceObjects,
        current: Option<&Manifest>,
    ) -> Result<(SessionContext, DataFrame)> {
        let ctx = self.session(Some(Arc::clone(&source.store)))?;
        let df = write::plan_transform(&ctx, &self.conf, date, source).await?;
        let schema = write::table_schema(df.schema().inner());
        table::register_version(&ctx, audit::run::PUBLISHED, current, Arc::clone(&schema))?;
        table::register_version(&ctx, audit::run::STAGED, None, Arc::clone(&schema))?;
        table::register_version(&ctx, audit::run::RESULT, None, Arc::clone(&schema))?;
        self.register_targets(&ctx, &schema).await?;
        audit::run::compile(&ctx, &self.conf.rules.rules(), &self.conf.key).await?;
        Ok((ctx, df))
    }

    /// Registers the current published version of every `relationships` target (a table
    /// location, or a job file naming one). An unpublished target is an empty table, so every
    /// non-NULL value fails the rule.
    async fn register_targets(&self, ctx: &SessionContext, staged: &SchemaRef) -> Result<()> {
        let rules = self.conf.rules.rules();
        for (i, rule) in rules.iter().enumerate() {
            let audit::RuleKind::Relationships { column, to, field } = &rule.kind else {
                continue;
            };
            let (location, storage) = if to.ends_with(".yaml") || to.ends_with(".yml") {
                let target = JobConf::load(to)?;
                (target.table, target.storage)
            } else {
                (to.clone(), self.conf.storage.clone())
            };
            let store = Location::parse(&location, &storage)?.scoped()?;
            let manifest = versions::current(&store).await?;
            let url = format!("wap://target-{i}/");
            ctx.register_object_store(
                &url::Url::parse(&url).expect("valid url"),
                Arc::clone(&store),
            );
            let provider = match &manifest {
                Some(m) => table::VersionTable::new(
                    &url,
                    m.schema_ref(),
                    Vec::new(),
                    m.partitions.values(),
                )?,
                None => {
                    let data_type = staged
                        .field_with_name(column)
                        .map(|f| f.data_type().clone())
                        .unwrap_or(arrow::datatypes::DataType::Utf8);
                    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
                        arrow::datatypes::Field::new(field, data_type, true),
                    ]));
                    table::VersionTable::new(&url, schema, Vec::new(), [])?
                }
            };
            let name = audit::sql::relationship_table(&rule.name);
            ctx.register_table(name.as_str(), Arc::new(provider))
                .map_err(|source| table::TableError::Register { name, source })?;
        }
        Ok(())
    }

    /// `wap check`: plans the transform against the source's schema (for `date`, or any date the
    /// source has) and compiles every rule, reporting every problem at once. Reads no data
    /// beyond what schema inference needs.
    pub async fn check(&self, date: Option<&str>) -> Result<CheckReport> {
        let (date, source) = match date {
            Some(d) => {
                parse_date(d)?;
                (d.to_string(), write::list_source(&self.conf, d).await?)
            }
            None => (
                "2000-01-01".to_string(),
                write::list_source_sample(&self.conf).await?,
            ),
        };
        let current = versions::current(&self.table).await?;
        let (_, df) = self.prepare(&date, &source, current.as_ref()).await?;
        Ok(CheckReport {
            rules: self.conf.rules.rules().len(),
            rule_files: self.conf.rules.files().len(),
            columns: df
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect(),
            source: source.location,
        })
    }

    async fn publish(
        &self,
        proposal: Proposal,
        base: u64,
        mut outcome: RunOutcome,
    ) -> Result<RunOutcome> {
        let publisher = Publisher::new(Arc::clone(&self.table), self.options.publish.clone());
        let span = tracing::info_span!("publish", base);
        match publisher
            .publish(&proposal, Some(base))
            .instrument(span)
            .await
        {
            Ok(PublishOutcome::Published { version }) => {
                outcome.status = Status::Published;
                outcome.version = version;
            }
            Ok(PublishOutcome::Unchanged { version }) => {
                outcome.status = Status::Unchanged;
                outcome.version = version;
            }
            Err(
                e @ (PublishError::Conflict { version, .. }
                | PublishError::RollbackConflict { version, .. }),
            ) => {
                outcome.status = Status::Conflict;
                outcome.version = version;
                outcome.message = Some(e.to_string());
            }
            Err(e) => return Err(e.into()),
        }
        Ok(outcome)
    }

    /// The outcome of a re-run whose partitions the current version already holds from this very
    /// run id, found from its report and the manifest alone (no data is read).
    async fn already_published(
        &self,
        run_id: &str,
        current: Option<&Manifest>,
    ) -> Result<Option<RunOutcome>> {
        let Some(current) = current else {
            return Ok(None);
        };
        let report = AuditReport::load(&self.table, run_id).await.map_err(|e| {
            Error::Audit(audit::AuditError::Execute {
                rule: "(report)".into(),
                message: e.to_string(),
            })
        })?;
        let Some(report) = report.filter(|r| r.passed() && !r.partitions.is_empty()) else {
            return Ok(None);
        };
        let all_ours = report.partitions.iter().all(|p| {
            current
                .partitions
                .get(p)
                .is_some_and(|q| q.run_id == run_id)
        });
        if !all_ours {
            return Ok(None);
        }
        Ok(Some(RunOutcome {
            status: Status::Unchanged,
            version: current.version,
            run_id: run_id.to_string(),
            logical_date: report.logical_date.clone(),
            rows: report.rows,
            partitions: report.partitions.clone(),
            audits: report.summaries(),
            report: Some(crate::manifest::report_path(run_id).to_string()),
            message: None,
            audit_report: Some(report),
            timings: Timings::default(),
        }))
    }

    /// `wap audit --version N` (default: current): runs the rules over a published version, as
    /// table `staged` (and `result`), with its parent as `published`, so that a new rule can be
    /// tried on production data before it gates anything. Writes only the report.
    pub async fn audit_version(&self, version: Option<u64>) -> Result<RunOutcome> {
        let target = self.show(version).await?;
        let parent = match target.parent {
            0 => None,
            v => Some(versions::read_manifest(&self.table, v).await?),
        };
        let rules = self.conf.rules.rules();
        let run_id = {
            let mut h = Sha256::new();
            h.update(format!("wap-audit-version/1 v={}\n", target.version));
            for f in self.conf.rules.files() {
                h.update(f.text.as_bytes());
            }
            format!(
                "{VERSION_AUDIT_PREFIX}{}-{}",
                target.version,
                crate::manifest::hex(&h.finalize()[..6])
            )
        };
        let date = target
            .watermarks
            .get("max_logical_date")
            .cloned()
            .unwrap_or_else(|| "1970-01-01".to_string());
        let logical_date = parse_date(&date)?;
        let ctx = self.session(None)?;
        let schema = target.schema_ref();
        for name in [audit::run::STAGED, audit::run::RESULT] {
            table::register_version(&ctx, name, Some(&target), Arc::clone(&schema))?;
        }
        table::register_version(
            &ctx,
            audit::run::PUBLISHED,
            parent.as_ref(),
            Arc::clone(&schema),
        )?;
        self.register_targets(&ctx, &schema).await?;
        audit::run::compile(&ctx, &rules, &self.conf.key).await?;
        let partitions: Vec<(String, u64)> = target
            .partitions
            .values()
            .map(|p| (p.path.clone(), p.rows))
            .collect();
        let baseline = audit::run::Baseline {
            logical_date,
            partition_by: &self.conf.partition_by,
            staged: &partitions,
            published: parent.as_ref(),
        };
        let samples = self.conf.audit_samples.unwrap_or(self.options.sample_limit);
        let results = audit::run::run(&ctx, &rules, &self.conf.key, samples, &baseline).await?;
        let paths: Vec<String> = partitions.iter().map(|(p, _)| p.clone()).collect();
        let report = AuditReport::new(
            &self.conf.name,
            &run_id,
            &date,
            target.rows(),
            paths.clone(),
            results,
        );
        report.save(&self.table).await?;
        Ok(RunOutcome {
            status: if report.passed() {
                Status::AuditPassed
            } else {
                Status::AuditFailed
            },
            version: target.version,
            run_id: run_id.clone(),
            logical_date: date,
            rows: target.rows(),
            partitions: paths,
            audits: report.summaries(),
            report: Some(crate::manifest::report_path(&run_id).to_string()),
            message: None,
            audit_report: Some(report),
            timings: Timings::default(),
        })
    }

    /// `wap gc`: deletes staged files no retained version references and expired manifests,
    /// once older than the retention (see [`crate::gc`]).
    pub async fn gc(&self, options: &crate::gc::GcOptions) -> Result<crate::gc::GcReport> {
        Ok(crate::gc::gc(&self.table, options).await?)
    }

    /// Publishes a new version whose content equals version `to`.
    pub async fn rollback(&self, to: u64) -> Result<RunOutcome> {
        let latest = versions::latest_version(&self.table).await?;
        if to == 0 || to > latest {
            return Err(Error::Usage(format!(
                "--to {to}: no such version (versions are 1 to {latest})"
            )));
        }
        let target = versions::read_manifest(&self.table, to).await?;
        // A retried rollback (its first attempt landed) has nothing left to do.
        let current = versions::read_manifest(&self.table, latest).await?;
        if current.partitions == target.partitions && current.schema == target.schema {
            return Ok(RunOutcome {
                status: Status::Unchanged,
                version: latest,
                run_id: current.change.run_id.clone(),
                logical_date: String::new(),
                rows: target.rows(),
                partitions: target.partitions.keys().cloned().collect(),
                audits: target.audits.clone(),
                report: None,
                message: Some(format!(
                    "version {latest} already holds the content of version {to}"
                )),
                audit_report: None,
                timings: Timings::default(),
            });
        }
        let run_id = {
            let mut h = Sha256::new();
            h.update(format!("wap-rollback/1 to={to} from={latest}"));
            let d = h.finalize();
            format!("rollback-{}", crate::manifest::hex(&d[..8]))
        };
        let outcome = RunOutcome {
            status: Status::Published,
            version: latest,
            run_id: run_id.clone(),
            logical_date: String::new(),
            rows: target.rows(),
            partitions: target.partitions.keys().cloned().collect(),
            audits: target.audits.clone(),
            report: None,
            message: None,
            audit_report: None,
            timings: Timings::default(),
        };
        self.publish(Proposal::Restore { run_id, target }, latest, outcome)
            .await
    }

    /// Checks that the table's store supports the conditional writes publishing relies on.
    pub async fn doctor(&self) -> crate::doctor::Diagnosis {
        crate::doctor::diagnose(&self.table, &self.conf.table).await
    }

    /// Every version, newest first.
    pub async fn log(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for v in versions::list_versions(&self.table)
            .await?
            .into_iter()
            .rev()
        {
            out.push(versions::read_manifest(&self.table, v).await?);
        }
        Ok(out)
    }

    /// Every run with a stored report, oldest first, with what became of it.
    pub async fn runs(&self) -> Result<Vec<RunRecord>> {
        let storage = |source| {
            Error::Versions(versions::VersionsError::Storage {
                op: "read",
                path: "_wap/runs/".into(),
                source,
            })
        };
        let reports = AuditReport::load_all_dated(&self.table)
            .await
            .map_err(storage)?;
        let versions = self.log().await?;
        let mut out = Vec::new();
        for (at, report) in reports {
            let run_id = report.run_id.clone();
            let published = versions
                .iter()
                .rev()
                .find(|m| {
                    m.change.run_id == run_id && m.change.kind == crate::manifest::ChangeKind::Run
                })
                .map(|m| m.version);
            let status = if run_id.starts_with(VERSION_AUDIT_PREFIX) {
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
                RunStatus::Published => match self.table.get(&unchanged_path(&run_id)).await {
                    Ok(got) => serde_json::from_slice(&got.bytes().await.map_err(storage)?).ok(),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => return Err(storage(e)),
                },
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

    /// One version (default: current) with every partition's file list (read from its
    /// segments).
    pub async fn show_files(&self, version: Option<u64>) -> Result<Manifest> {
        let mut m = self.show(version).await?;
        versions::resolve_files(&self.table, [&mut m]).await?;
        Ok(m)
    }

    /// One version (default: current): the index, without file lists.
    pub async fn show(&self, version: Option<u64>) -> Result<Manifest> {
        match version {
            Some(v) => Ok(versions::read_manifest(&self.table, v).await?),
            None => versions::current(&self.table).await?.ok_or_else(|| {
                table::TableError::Empty {
                    table: self.conf.table.clone(),
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
            let reports = AuditReport::load_all(&self.table).await.map_err(|e| {
                Error::Audit(audit::AuditError::Report {
                    path: "_wap/runs/".into(),
                    source: e,
                })
            })?;
            let batch = audit::report::audit_results(&reports);
            let mem = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])
                .map_err(|source| table::TableError::Register {
                    name: "wap_audit_results".into(),
                    source,
                })?;
            ctx.register_table("wap_audit_results", Arc::new(mem))
                .map_err(|source| table::TableError::Register {
                    name: "wap_audit_results".into(),
                    source,
                })?;
        }
        match self.show(version).await {
            Ok(manifest) => table::register_version(
                &ctx,
                &self.conf.name,
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
            Some(id) => AuditReport::load(&self.table, id).await,
            None => AuditReport::last(&self.table).await,
        };
        let report = found.map_err(|e| {
            Error::Audit(audit::AuditError::Report {
                path: "_wap/runs/".into(),
                source: e,
            })
        })?;
        report.ok_or_else(|| {
            Error::Usage(match run_id {
                Some(id) => format!("--run {id}: no report for that run id"),
                None => "no audit report yet: run `wap run` or `wap audit` first".into(),
            })
        })
    }
}
