//! A job run: the three phases in order (and `wap audit --version`, `wap rollback` and
//! `wap check`, which run some of them). The read-side commands are in [`crate::inspect`].
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
//! The run id ([`crate::run_id`]) is a hash of everything that determines the output: job name,
//! job and rule file contents, logical date, and each source object's path, size and ETag. Same
//! inputs, same run id, same staged bytes, and a re-run finds its own work already published.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tracing::{Instrument, info};

use crate::audit::{self, AuditError, AuditReport, RuleResult, StagedFiles};
use crate::conf::{JobConf, TableFormat};
use crate::delta::{self, DeltaLog};
use crate::engine::{self, EngineOptions};
use crate::hook::{Hook, HookEnv, HookOutcome};
use crate::iceberg::IcebergLog;
use crate::manifest::{AuditSummary, Manifest, Partition};
use crate::progress::{CountingStore, Phase, Progress};
use crate::publish::{
    MergeChange, Proposal, PublishError, PublishOptions, PublishOutcome, Publisher,
};
use crate::quarantine::{self, QuarantineTarget};
use crate::run_id::{RunInputs, run_id};
use crate::store::Location;
use crate::watermark::{self, Window};
use crate::write::merge::{self, MergeCounts, Merged};
use crate::write::{self, StagedRun, WriteOptions};
use crate::{Error, Result, layout, table, versions};

/// Tunables of a job run.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub engine: EngineOptions,
    pub write: WriteOptions,
    pub publish: PublishOptions,
    /// Failing rows kept per failing rule.
    pub sample_limit: usize,
    /// Counters the run bumps as it goes, for a display (`None`: nobody watches).
    pub progress: Option<Arc<Progress>>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            engine: EngineOptions::default(),
            write: WriteOptions::default(),
            publish: PublishOptions::default(),
            sample_limit: 10,
            progress: None,
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
    /// Write and audit, and hand what would be published to the caller
    /// ([`RunOutcome::proposal`]): the dates of `wap backfill --atomic`. Overwrite mode only.
    Stage,
}

/// What a caller adds to a run.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// Run ids of the later dates of the same backfill: a partition the table holds from one of
    /// them stays theirs (see [`Proposal::Replace`]'s `yield_to`), and counts as this run's
    /// own when a re-run checks whether it is already published.
    pub later_runs: BTreeSet<String>,
    /// Taken for the commit by the runs of one process (a backfill's dates): they write and
    /// audit at once but commit one after the other, so they never race each other for the
    /// pointer (other processes still do, through compare-and-swap).
    pub commit_turn: Option<Arc<tokio::sync::Mutex<()>>>,
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
    /// Merge runs: what the batch did to the table's rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeCounts>,
    /// Incremental runs: the watermark before and after the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkMove>,
    /// The audit report, for rendering.
    #[serde(skip)]
    pub audit_report: Option<AuditReport>,
    /// Wall time by phase.
    pub timings: Timings,
    /// What became of the `on_publish` command (jobs that have one, runs the table holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_publish: Option<HookOutcome>,
    /// True when the current version holds this run's output (it published now, or earlier).
    #[serde(skip)]
    pub in_table: bool,
    /// [`Mode::Stage`]: what the run would publish.
    #[serde(skip)]
    pub proposal: Option<Proposal>,
}

impl RunOutcome {
    /// True when the status is a success (published, unchanged, audit passed).
    pub fn status_ok(&self) -> bool {
        self.status.exit_code() == crate::exit_code::OK
    }

    /// The process exit code: the status's, or 1 when the run published but its
    /// `on_publish` command failed.
    pub fn exit_code(&self) -> i32 {
        match &self.on_publish {
            Some(h) if !h.ok => crate::exit_code::FAILURE,
            _ => self.status.exit_code(),
        }
    }
}

/// The watermark of an incremental run: the cursor column, the table's watermark before the
/// run, and after it (what the published version holds; `before` when nothing published).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatermarkMove {
    pub column: String,
    pub before: String,
    pub after: String,
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

/// Written to `_wap/runs/<run_id>/unchanged.json` by a re-run of an already published run (its
/// only write): when it ran and which version held the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UnchangedCheck {
    pub version: u64,
    pub checked_at: String,
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

/// `wap check` of the job file at `path`: every problem of the job file, of its rule files, of
/// the transform and of each rule's queries, all in one error (exit code 2), or what was
/// verified. Nothing is written.
pub async fn check(
    path: &std::path::Path,
    date: Option<&str>,
    options: JobOptions,
) -> Result<CheckReport> {
    let checked = JobConf::check(path);
    let mut problems: Vec<String> = checked.problems.iter().map(|p| p.to_string()).collect();
    let Some(conf) = checked.conf else {
        return Err(Error::Check { problems });
    };
    let checked = match Job::open(conf, options) {
        Ok(job) => job.check(date).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(report) if problems.is_empty() => Ok(report),
        Ok(_) => Err(Error::Check { problems }),
        Err(Error::Audit(AuditError::Compile { problems: more })) => {
            problems.extend(more);
            Err(Error::Check { problems })
        }
        Err(e) if problems.is_empty() => Err(e),
        Err(e) => {
            problems.push(e.to_string());
            Err(Error::Check { problems })
        }
    }
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

/// A configured job bound to its table store.
#[derive(Debug, Clone)]
pub struct Job {
    conf: JobConf,
    table: Arc<dyn ObjectStore>,
    options: JobOptions,
}

/// One job run as it goes through the phases.
struct Run<'a> {
    date: &'a str,
    mode: Mode,
    source: write::SourceObjects,
    run_id: String,
    /// The current version, until planning takes it.
    current: Option<Manifest>,
    window: Option<Window>,
}

/// What a merge run's quarantine step did to its batch, for the audit report.
#[derive(Default)]
struct BatchQuarantine {
    /// The quarantining rules' results over the batch.
    results: Vec<RuleResult>,
    /// The held rows, when there were any.
    held: Option<audit::report::Quarantine>,
    /// The largest cursor of the whole batch, held rows included (incremental jobs).
    cursor_max: Option<crate::watermark::Mark>,
}

/// What the plan step gives the later phases.
struct Planned {
    ctx: SessionContext,
    transform: DataFrame,
    current: Option<Manifest>,
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

    /// A query session over the table store (and the source store, for a run).
    pub(crate) fn session(&self, source: Option<Arc<dyn ObjectStore>>) -> Result<SessionContext> {
        // Not the user's query at fault: an engine failure (exit 1).
        engine::session(&self.options.engine, Arc::clone(&self.table), source)
            .map_err(|source| Error::Table(table::TableError::Engine { source }))
    }

    /// Tells the display (if any) the run is in `phase`.
    fn phase(&self, phase: Phase) {
        if let Some(p) = &self.options.progress {
            p.set_phase(phase);
        }
    }

    fn sample_limit(&self) -> usize {
        self.conf.audit_samples.unwrap_or(self.options.sample_limit)
    }

    /// Runs the job for one logical date.
    pub async fn run(&self, date: &str, mode: Mode) -> Result<RunOutcome> {
        self.run_in(date, mode, &RunContext::default()).await
    }

    /// Runs the job for one logical date as part of something larger (a backfill).
    pub async fn run_in(&self, date: &str, mode: Mode, cx: &RunContext) -> Result<RunOutcome> {
        if mode == Mode::Stage && self.conf.merge.is_some() {
            return Err(Error::Usage(format!(
                "{}: a merge run publishes on top of the version before it: it cannot be staged \
                 for a later publish",
                self.conf.path.display()
            )));
        }
        let started = std::time::Instant::now();
        parse_date(date)?;
        self.phase(Phase::Plan);
        let conf = &self.conf;
        let source = write::list_source(conf, date).await?;
        let current = versions::current(&self.table).await?;
        let window = self.window(current.as_ref())?;
        let run_id = run_id(RunInputs::Job {
            conf,
            date,
            source: &source.objects,
            watermark: window.as_ref().map(|w| w.from.as_str()),
        });
        let span = tracing::info_span!("run", job = %conf.name, run_id = %run_id, date);
        let mut timings = Timings::default();
        let run = Run {
            date,
            mode,
            source,
            run_id,
            current,
            window,
        };
        let mut outcome = self
            .run_phases(run, cx, &mut timings)
            .instrument(span)
            .await?;
        if mode == Mode::Publish {
            self.after_publish(&mut outcome).await;
        }
        self.phase(Phase::Done);
        timings.total_ms = ms_since(started);
        outcome.timings = timings;
        Ok(outcome)
    }

    /// The run id `wap run --date D` would have now (lists the source, reads no data). Not for
    /// incremental jobs, whose id also covers the watermark the run starts from.
    pub async fn run_id_for(&self, date: &str) -> Result<String> {
        parse_date(date)?;
        let source = write::list_source(&self.conf, date).await?;
        Ok(run_id(RunInputs::Job {
            conf: &self.conf,
            date,
            source: &source.objects,
            watermark: None,
        }))
    }

    /// This job with `1/n` of the memory pool, for `n` runs at once in one process: together
    /// they stay within the limit one run has.
    pub fn sharing_memory(&self, n: usize) -> Job {
        let mut job = self.clone();
        let pool = &mut job.options.engine.memory_limit;
        *pool = (*pool / n.max(1)).max(64 << 20);
        job
    }

    /// The window an incremental run reads (`None` for other jobs).
    fn window(&self, current: Option<&Manifest>) -> Result<Option<Window>> {
        let Some(inc) = &self.conf.incremental else {
            return Ok(None);
        };
        watermark::window(inc, current.map(|m| &m.watermarks))
            .map(Some)
            .map_err(|e| Error::Usage(format!("{}: {e}", self.conf.path.display())))
    }

    async fn run_phases(
        &self,
        mut run: Run<'_>,
        cx: &RunContext,
        timings: &mut Timings,
    ) -> Result<RunOutcome> {
        let conf = &self.conf;
        let mut phase = std::time::Instant::now();
        if run.mode != Mode::AuditOnly
            && let Some(done) = self
                .already_published(&run.run_id, run.current.as_ref(), &cx.later_runs)
                .await?
        {
            return Ok(done);
        }

        // Plan everything before writing anything.
        let planned = self
            .prepare(
                run.date,
                &run.source,
                run.current.take(),
                run.window.as_ref(),
            )
            .await?;
        self.phase(Phase::Write);
        if let Some(merge_conf) = &conf.merge {
            return self
                .run_merge(run, planned, merge_conf, timings, phase)
                .await;
        }
        let Planned {
            ctx,
            transform,
            current,
        } = planned;
        let Run {
            date,
            mode,
            source,
            run_id,
            ..
        } = run;
        timings.plan_ms = ms_since(phase);
        phase = std::time::Instant::now();

        // Phase 1.
        let staged = write::write_staging(
            &ctx,
            transform,
            conf,
            &run_id,
            &self.table,
            &self.write_options(current.as_ref()),
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
        let (staged, report) = self
            .audit_run(&ctx, current.as_ref(), staged, date, &source.location, None)
            .await?;
        timings.audit_ms = ms_since(phase);
        phase = std::time::Instant::now();
        let current_version = current.as_ref().map_or(0, |m| m.version);
        let mut outcome = RunOutcome {
            status: Status::AuditPassed,
            version: current_version,
            run_id: run_id.clone(),
            logical_date: date.to_string(),
            rows: staged.rows,
            partitions: report.partitions.clone(),
            audits: report.summaries(),
            report: Some(layout::report_path(&run_id).to_string()),
            message: None,
            merge: None,
            watermark: None,
            audit_report: Some(report.clone()),
            timings: Timings::default(),
            on_publish: None,
            in_table: false,
            proposal: None,
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

        // Phase 3: the run's file lists go up as segments, then the manifest names them.
        let proposal = self
            .proposal(&staged, date, report.summaries(), None, &cx.later_runs)
            .await?;
        if mode == Mode::Stage {
            outcome.proposal = Some(proposal);
            return Ok(outcome);
        }
        let _turn = match &cx.commit_turn {
            Some(t) => Some(t.lock().await),
            None => None,
        };
        let outcome = self.publish(proposal, current_version, outcome).await;
        timings.publish_ms = ms_since(phase);
        outcome
    }

    /// The rules a merge run checks on its batch (none for other jobs).
    fn batch_rules(&self) -> Vec<audit::Rule> {
        self.conf
            .merge
            .as_ref()
            .map(|m| merge::batch_rules(&self.conf, m))
            .unwrap_or_default()
    }

    /// An incremental job's cursor is a column of the transform's output whose type fits the
    /// watermark.
    fn check_cursor(&self, out: &arrow::datatypes::Schema, window: Option<&Window>) -> Result<()> {
        let (Some(inc), Some(window)) = (&self.conf.incremental, window) else {
            return Ok(());
        };
        let err = |message: String| {
            Error::Write(write::WriteError::Columns {
                conf: format!(
                    "{}:{}",
                    self.conf.path.display(),
                    crate::conf::line_of_key(&self.conf.text, "cursor")
                ),
                message,
            })
        };
        let Ok(field) = out.field_with_name(&inc.cursor) else {
            return Err(err(format!(
                "incremental.cursor: `{}` is not a column of the transform's output",
                inc.cursor
            )));
        };
        if !watermark::cursor_type_fits(field.data_type(), &window.before) {
            return Err(err(format!(
                "incremental.cursor: `{}` has type {}, which does not order as a {} watermark \
                 (`initial` is one); use a timestamp, date or integer column matching `initial`",
                inc.cursor,
                field.data_type(),
                window.before.kind()
            )));
        }
        Ok(())
    }

    /// Phases 1-3 of a `mode: merge` run.
    async fn run_merge(
        &self,
        run: Run<'_>,
        planned: Planned,
        merge_conf: &crate::conf::MergeConf,
        timings: &mut Timings,
        planned_at: std::time::Instant,
    ) -> Result<RunOutcome> {
        let Run {
            date,
            mode,
            source,
            run_id,
            window,
            ..
        } = run;
        let Planned {
            ctx,
            transform,
            current,
        } = planned;
        let conf = &self.conf;
        timings.plan_ms = ms_since(planned_at);
        let mut phase = std::time::Instant::now();
        let base = current.as_ref().map_or(0, |c| c.version);
        let folder = merge::folder(&run_id, base);
        let batch_schema = write::table_schema(transform.schema().inner());
        let batch = merge::stage_batch(
            &ctx,
            transform,
            conf,
            &run_id,
            &folder,
            &self.table,
            &self.write_options(current.as_ref()),
            &source.location,
        )
        .instrument(tracing::info_span!("write", part = "batch"))
        .await?;
        let (batch, quarantine) = self
            .quarantine_batch(
                &ctx,
                current.as_ref(),
                batch,
                date,
                &source.location,
                &folder,
            )
            .instrument(tracing::info_span!("audit", quarantine = true))
            .await?;
        let mut merged = merge::merge(merge::MergeInputs {
            ctx: &ctx,
            conf,
            merge: merge_conf,
            base: current.as_ref(),
            batch: &batch,
            batch_schema,
            run_id: &run_id,
            folder: &folder,
            table: &self.table,
            options: &self.write_options(current.as_ref()),
            source_location: &source.location,
            cursor: conf.incremental.as_ref().map(|i| i.cursor.as_str()),
        })
        .instrument(tracing::info_span!("write", part = "merge"))
        .await?;
        // Quarantined rows were read too: the watermark moves past them.
        merged.cursor_max = merged.cursor_max.max(quarantine.cursor_max);
        let counts = merged.counts;
        info!(
            batch = batch.rows,
            inserted = counts.inserted,
            updated = counts.updated,
            deleted = counts.deleted,
            unchanged = counts.unchanged,
            stale = counts.stale,
            partitions = merged.staged.partitions.len(),
            removed = merged.removed.len(),
            "merged"
        );
        timings.write_ms = ms_since(phase);
        phase = std::time::Instant::now();

        let (staged, report) = self
            .audit_run(
                &ctx,
                current.as_ref(),
                merged.staged.clone(),
                date,
                &source.location,
                Some((&merged, quarantine)),
            )
            .await?;
        timings.audit_ms = ms_since(phase);
        phase = std::time::Instant::now();
        let watermark_move = window
            .as_ref()
            .zip(conf.incremental.as_ref())
            .map(|(w, inc)| {
                let after = match merged.cursor_max {
                    Some(m) if m > w.before => m,
                    _ => w.before,
                };
                WatermarkMove {
                    column: inc.cursor.clone(),
                    before: w.before.render(),
                    after: after.render(),
                }
            });
        let mut outcome = RunOutcome {
            status: Status::AuditPassed,
            version: base,
            run_id: run_id.clone(),
            logical_date: date.to_string(),
            rows: batch.rows,
            partitions: report.partitions.clone(),
            audits: report.summaries(),
            report: Some(layout::report_path(&run_id).to_string()),
            message: None,
            merge: Some(counts),
            watermark: watermark_move.clone(),
            audit_report: Some(report.clone()),
            timings: Timings::default(),
            on_publish: None,
            in_table: false,
            proposal: None,
        };
        if !report.passed() {
            outcome.status = Status::AuditFailed;
            if let Some(w) = &mut outcome.watermark {
                w.after = w.before.clone();
            }
            return Ok(outcome);
        }
        if mode == Mode::AuditOnly {
            return Ok(outcome);
        }
        let watermarks = watermark_move
            .iter()
            .map(|w| (watermark::key(&w.column), w.after.clone()))
            .collect();
        let change = MergeChange {
            removed: merged.removed.clone(),
            read: merged.read.clone(),
            any_partition: !conf.partition_by.iter().all(|p| conf.key.contains(p)),
            watermarks,
        };
        let proposal = self
            .proposal(
                &staged,
                date,
                report.summaries(),
                Some(change),
                &BTreeSet::new(),
            )
            .await?;
        let outcome = self.publish(proposal, base, outcome).await;
        timings.publish_ms = ms_since(phase);
        let mut outcome = outcome?;
        if outcome.status == Status::Unchanged {
            outcome.message =
                Some("the batch changes no row and no watermark: nothing published".to_string());
        }
        if let (Some(w), Status::Unchanged | Status::Conflict) =
            (&mut outcome.watermark, outcome.status)
        {
            w.after = w.before.clone();
        }
        Ok(outcome)
    }

    /// A re-run of a merge run that already published: its report names the base it merged
    /// onto, and a version since then carries its run id. Reads manifests only.
    async fn merge_already_published(
        &self,
        run_id: &str,
        current: &Manifest,
    ) -> Result<Option<RunOutcome>> {
        let report = AuditReport::load(&self.table, run_id)
            .await
            .map_err(|source| AuditError::ReadReport {
                path: layout::report_path(run_id).to_string(),
                source,
            })?;
        let Some(report) = report.filter(|r| r.passed()) else {
            return Ok(None);
        };
        let Some(base) = report.base else {
            return Ok(None);
        };
        let mut found = None;
        for v in (base + 1..=current.version).rev() {
            let m = if v == current.version {
                current.clone()
            } else {
                versions::read_manifest(&self.table, v).await?
            };
            if m.change.run_id == run_id {
                found = Some(m);
                break;
            }
        }
        let Some(published) = found else {
            return Ok(None);
        };
        info!(
            version = published.version,
            "merge run already published; nothing to do"
        );
        self.sync_formats(current.version).await?;
        Ok(Some(RunOutcome {
            status: Status::Unchanged,
            version: current.version,
            run_id: run_id.to_string(),
            logical_date: report.logical_date.clone(),
            rows: report.rows,
            partitions: report.partitions.clone(),
            audits: report.summaries(),
            report: Some(layout::report_path(run_id).to_string()),
            message: Some(format!(
                "run already published as version {}",
                published.version
            )),
            merge: None,
            watermark: None,
            audit_report: Some(report),
            timings: Timings::default(),
            on_publish: None,
            in_table: true,
            proposal: None,
        }))
    }

    /// The quarantine step of a merge run, before the merge: the quarantining rules run over
    /// the batch (registered as `staged`), and when they find rows the batch is split into the
    /// held rows and the clean batch that merges. Returns the batch to merge.
    async fn quarantine_batch(
        &self,
        ctx: &SessionContext,
        current: Option<&Manifest>,
        batch: StagedRun,
        date: &str,
        source: &str,
        folder: &str,
    ) -> Result<(StagedRun, BatchQuarantine)> {
        let rules = self.conf.rules.rules();
        let quarantining: Vec<&audit::Rule> =
            rules.iter().copied().filter(|r| r.quarantine).collect();
        let mut done = BatchQuarantine::default();
        if quarantining.is_empty() {
            return Ok((batch, done));
        }
        let files = audit::tables::register_run(ctx, &self.table, &batch, current, &[])?;
        done.results = self
            .audit_staged(ctx, &quarantining, &batch, &files, date, current)
            .await?;
        if done.results.iter().all(|r| r.failing_rows == 0) {
            return Ok((batch, done));
        }
        if let Some(inc) = &self.conf.incremental {
            done.cursor_max = merge::cursor_max(ctx, audit::STAGED, &inc.cursor)
                .await
                .map_err(|e| {
                    Error::Write(write::WriteError::Execute {
                        run_id: batch.run_id.clone(),
                        location: source.to_string(),
                        source: e,
                    })
                })?;
        }
        let unpartitioned = merge::unpartitioned(&self.conf);
        let target = QuarantineTarget {
            conf: &unpartitioned,
            clean_folder: format!("{folder}/_batch-clean"),
            table: &self.table,
            options: &self.write_options(current),
            source,
        };
        let (clean, held) = quarantine::split(ctx, &target, &quarantining, &batch).await?;
        done.held = Some(held);
        Ok((clean, done))
    }

    /// Phase 2 of a run: the quarantining rules first (and the quarantine step if they find
    /// rows), then every other rule over what is left; the report is saved pass or fail.
    /// Returns the run to publish (the clean one after a quarantine) and its report.
    async fn audit_run(
        &self,
        ctx: &SessionContext,
        current: Option<&Manifest>,
        staged: StagedRun,
        date: &str,
        source: &str,
        merged: Option<(&Merged, BatchQuarantine)>,
    ) -> Result<(StagedRun, AuditReport)> {
        self.phase(Phase::Audit);
        let conf = &self.conf;
        let batch_rules = self.batch_rules();
        let mut rules = conf.rules.rules();
        rules.extend(batch_rules.iter());
        let (merged, batch_quarantine) = merged.unzip();
        let removed: &[String] = merged.map_or(&[], |m| &m.removed);
        let (quarantining, others): (Vec<&audit::Rule>, Vec<&audit::Rule>) =
            rules.iter().copied().partition(|r| r.quarantine);
        let mut staged = staged;
        let mut results = Vec::new();
        let mut quarantined = None;
        let mut files = audit::tables::register_run(ctx, &self.table, &staged, current, removed)?;
        if let Some(done) = batch_quarantine {
            // A merge quarantined its batch before merging: those rules are not run again.
            results.extend(done.results);
            quarantined = done.held;
        } else if !quarantining.is_empty() {
            let found = self
                .audit_staged(ctx, &quarantining, &staged, &files, date, current)
                .instrument(tracing::info_span!("audit", quarantine = true))
                .await?;
            if found.iter().any(|r| r.failing_rows > 0) {
                let target = QuarantineTarget {
                    conf,
                    clean_folder: layout::clean_folder(&staged.run_id),
                    table: &self.table,
                    options: &self.write_options(current),
                    source,
                };
                let (clean, held) = quarantine::split(ctx, &target, &quarantining, &staged).await?;
                staged = clean;
                files = audit::tables::register_run(ctx, &self.table, &staged, current, removed)?;
                quarantined = Some(held);
            }
            results.extend(found);
        }
        results.extend(
            self.audit_staged(ctx, &others, &staged, &files, date, current)
                .instrument(tracing::info_span!("audit"))
                .await?,
        );
        results.sort_by_key(|r| rules.iter().position(|x| x.name == r.name));
        let partitions: Vec<String> = staged.partitions.iter().map(|p| p.path.clone()).collect();
        let mut report = AuditReport::new(
            &conf.name,
            &staged.run_id,
            date,
            staged.rows,
            partitions,
            results,
        );
        report.quarantine = quarantined;
        report.base = merged.map(|_| current.map_or(0, |c| c.version));
        report.save(&self.table).await?;
        Ok((staged, report))
    }

    /// Runs `rules` over the registered `staged` run.
    async fn audit_staged(
        &self,
        ctx: &SessionContext,
        rules: &[&audit::Rule],
        staged: &StagedRun,
        files: &StagedFiles,
        date: &str,
        published: Option<&Manifest>,
    ) -> Result<Vec<RuleResult>> {
        let rows: Vec<(String, u64)> = staged
            .partitions
            .iter()
            .map(|p| (p.path.clone(), p.rows))
            .collect();
        let baseline = audit::run::Baseline {
            logical_date: parse_date(date)?,
            partition_by: &self.conf.partition_by,
            staged: &rows,
            files: Some(files),
            published,
            progress: self.options.progress.as_deref(),
        };
        let key = &self.conf.key;
        Ok(audit::run::run(ctx, rules, key, self.sample_limit(), &baseline).await?)
    }

    /// What phase 3 commits for a run: its partitions, whose file lists go up first as one
    /// segment.
    async fn proposal(
        &self,
        staged: &StagedRun,
        date: &str,
        audits: Vec<AuditSummary>,
        merge: Option<MergeChange>,
        yield_to: &BTreeSet<String>,
    ) -> Result<Proposal> {
        let conf = &self.conf;
        let run_id = &staged.run_id;
        let segments = write::write_segments(&self.table, staged).await?;
        let partitions = staged
            .partitions
            .iter()
            .map(|p| {
                let values = conf
                    .partition_by
                    .iter()
                    .cloned()
                    .zip(p.values.iter().cloned())
                    .collect();
                Partition::new(&p.path, values, &p.files, run_id, date, &segments[&p.path])
            })
            .collect();
        Ok(Proposal::Replace {
            run_id: run_id.clone(),
            logical_date: date.to_string(),
            table: conf.name.clone(),
            schema: staged.schema.as_ref().clone(),
            partition_by: conf.partition_by.clone(),
            key: conf.key.clone(),
            partitions,
            audits,
            merge,
            yield_to: yield_to.clone(),
        })
    }

    /// Plans the transform and compiles every rule against its schema, reading no data: the
    /// session has `source`, `published` and an empty `staged` registered.
    async fn prepare(
        &self,
        date: &str,
        source: &write::SourceObjects,
        current: Option<Manifest>,
        window: Option<&Window>,
    ) -> Result<Planned> {
        let source_store = match &self.options.progress {
            Some(p) => CountingStore::wrap(Arc::clone(&source.store), Arc::clone(p)),
            None => Arc::clone(&source.store),
        };
        let ctx = self.session(Some(source_store))?;
        let watermark = window.map(|w| w.from.as_str());
        let transform = write::plan_transform(&ctx, &self.conf, date, watermark, source).await?;
        let out = transform.schema().inner();
        let batch_rules = self.batch_rules();
        let mut rules = self.conf.rules.rules();
        rules.extend(batch_rules.iter());
        let schema = match &self.conf.merge {
            None => write::table_schema(out),
            Some(m) => {
                self.check_cursor(out, window)?;
                let schema =
                    merge::table_schema(&self.conf, m, out, current.as_ref().map(|c| &c.schema))?;
                let batch = write::table_schema(out);
                audit::tables::register_merge_for_compile(&ctx, &batch)?;
                // Quarantining rules run over the batch, before the merge.
                let (held, others): (Vec<&audit::Rule>, Vec<&audit::Rule>) =
                    rules.iter().copied().partition(|r| r.quarantine);
                if !held.is_empty() {
                    audit::tables::register_for_compile(&ctx, &batch, current.as_ref())?;
                    audit::plan::compile(&ctx, &held, &self.conf.key).await?;
                }
                rules = others;
                schema
            }
        };
        self.check_formats(&schema)?;
        audit::tables::register_for_compile(&ctx, &schema, current.as_ref())?;
        audit::tables::register_targets(&ctx, &self.conf, &schema).await?;
        audit::plan::compile(&ctx, &rules, &self.conf.key).await?;
        Ok(Planned {
            ctx,
            transform,
            current,
        })
    }

    /// Refuses a table schema that a format of `formats:` cannot hold (exit code 2, before
    /// anything is written), naming each column.
    fn check_formats(&self, schema: &arrow::datatypes::Schema) -> Result<()> {
        let at = format!(
            "{}:{}",
            self.conf.path.display(),
            crate::conf::line_of_key(&self.conf.text, "formats")
        );
        let mut problems: Vec<String> = Vec::new();
        if self.conf.formats.contains(&TableFormat::Delta) {
            problems.extend(
                delta::check_schema(schema)
                    .into_iter()
                    .map(|e| format!("{at}: formats: delta: {e}")),
            );
        }
        if self.conf.formats.contains(&TableFormat::Iceberg) {
            problems.extend(
                crate::iceberg::check_table(schema, &self.conf.partition_by)
                    .into_iter()
                    .map(|e| format!("{at}: formats: iceberg: {e}")),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Check { problems })
        }
    }

    /// A publisher for this table, projecting into the job's `formats:`.
    pub(crate) fn publisher(&self) -> Publisher {
        let mut p = Publisher::new(Arc::clone(&self.table), self.options.publish.clone());
        if self.conf.formats.contains(&TableFormat::Delta) {
            p = p.with_delta();
        }
        if let Some(log) = self.iceberg() {
            p = p.with_iceberg(log);
        }
        p
    }

    /// The writer's options for a run on top of `current`: with `formats: [iceberg]`, files
    /// carry the field ids of `current`'s columns (and new ids for new columns).
    fn write_options(&self, current: Option<&Manifest>) -> write::WriteOptions {
        let mut o = self.options.write.clone();
        o.progress = self.options.progress.clone();
        if self.conf.formats.contains(&TableFormat::Iceberg) {
            o.field_ids = Some(current.map(|m| m.schema_ref()));
        }
        o
    }

    /// The Iceberg view of this table (`formats: [iceberg]`), with its catalog.
    pub fn iceberg(&self) -> Option<IcebergLog> {
        self.conf.formats.contains(&TableFormat::Iceberg).then(|| {
            IcebergLog::new(Arc::clone(&self.table), &self.conf.table)
                .with_catalog(self.conf.iceberg_catalog.clone())
        })
    }

    /// Writes every projection (Delta commit) missing up to `version`: what a crash between a
    /// commit and its projection left behind. Every command that writes calls it.
    pub async fn sync_formats(&self, version: u64) -> Result<u64> {
        let mut written = 0;
        if self.conf.formats.contains(&TableFormat::Delta) {
            written += DeltaLog::new(Arc::clone(&self.table))
                .prepare(version)
                .await?;
        }
        if let Some(log) = self.iceberg() {
            written += log.prepare(version).await?;
        }
        Ok(written)
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
        let window = self.window(current.as_ref())?;
        let planned = self
            .prepare(&date, &source, current, window.as_ref())
            .await?;
        Ok(CheckReport {
            rules: self.conf.rules.rules().len(),
            rule_files: self.conf.rules.files().len(),
            columns: planned
                .transform
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
        self.phase(Phase::Publish);
        let publisher = self.publisher();
        let span = tracing::info_span!("publish", base);
        match publisher
            .publish(&proposal, Some(base))
            .instrument(span)
            .await
        {
            Ok(PublishOutcome::Published { version }) => {
                outcome.status = Status::Published;
                outcome.version = version;
                outcome.in_table = true;
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
    /// run id, found from its report and the manifest alone (no data is read). Its one write is
    /// the bookkeeping record of `wap log`, whose failure does not fail the re-run.
    async fn already_published(
        &self,
        run_id: &str,
        current: Option<&Manifest>,
        later_runs: &BTreeSet<String>,
    ) -> Result<Option<RunOutcome>> {
        let Some(current) = current else {
            return Ok(None);
        };
        if self.conf.merge.is_some() {
            return self.merge_already_published(run_id, current).await;
        }
        let report = AuditReport::load(&self.table, run_id)
            .await
            .map_err(|source| AuditError::ReadReport {
                path: layout::report_path(run_id).to_string(),
                source,
            })?;
        let Some(report) = report.filter(|r| r.passed() && !r.partitions.is_empty()) else {
            return Ok(None);
        };
        let all_ours = report.partitions.iter().all(|p| {
            current
                .partitions
                .get(p)
                .is_some_and(|q| q.run_id == run_id || later_runs.contains(&q.run_id))
        });
        if !all_ours {
            return Ok(None);
        }
        let any_ours = report.partitions.iter().any(|p| {
            current
                .partitions
                .get(p)
                .is_some_and(|q| q.run_id == run_id)
        });
        info!(
            version = current.version,
            "run already published; nothing to do"
        );
        self.sync_formats(current.version).await?;
        let check = UnchangedCheck {
            version: current.version,
            checked_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let path = layout::unchanged_path(run_id);
        let body = serde_json::to_vec_pretty(&check).expect("serializable");
        if let Err(e) = self.table.put(&path, body.into()).await {
            tracing::warn!(path = %path, error = %e, "unable to record the unchanged re-run");
        }
        Ok(Some(RunOutcome {
            status: Status::Unchanged,
            version: current.version,
            run_id: run_id.to_string(),
            logical_date: report.logical_date.clone(),
            rows: report.rows,
            partitions: report.partitions.clone(),
            audits: report.summaries(),
            report: Some(layout::report_path(run_id).to_string()),
            message: None,
            merge: None,
            watermark: None,
            audit_report: Some(report),
            timings: Timings::default(),
            on_publish: None,
            in_table: any_ours,
            proposal: None,
        }))
    }

    /// Runs the job's `on_publish` command for a run the table holds, unless it ran before (its
    /// record under `_wap/runs/<run_id>/`). A failure is reported in the outcome (exit 1); the
    /// version stays published and the next re-run tries again.
    pub async fn after_publish(&self, outcome: &mut RunOutcome) {
        let Some(argv) = &self.conf.on_publish else {
            return;
        };
        if !outcome.in_table {
            return;
        }
        let hook = Hook {
            argv: argv.clone(),
            dir: self
                .conf
                .path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default(),
        };
        let status = serde_json::to_value(outcome.status).expect("serializable");
        let env = HookEnv {
            run_id: &outcome.run_id,
            version: outcome.version,
            table: &self.conf.name,
            logical_date: &outcome.logical_date,
            status: status.as_str().unwrap_or_default(),
        };
        let stdin = serde_json::to_vec(&*outcome).expect("serializable");
        let result = hook.ensure(&self.table, &env, &stdin).await;
        outcome.on_publish = Some(match result {
            Ok(ran) => HookOutcome {
                ran,
                ok: true,
                error: None,
            },
            Err(e) => {
                tracing::warn!(run_id = %outcome.run_id, error = %e, "on_publish failed");
                HookOutcome {
                    ran: !matches!(e, crate::hook::HookError::Record { phase: "check", .. }),
                    ok: false,
                    error: Some(e.to_string()),
                }
            }
        });
    }

    /// `wap audit --version N` (default: current): runs the rules over a published version, as
    /// table `staged` (and `result`), with its parent as `published`, so that a new rule can be
    /// tried on production data before it gates anything. Writes only the report.
    pub async fn audit_version(&self, version: Option<u64>) -> Result<RunOutcome> {
        self.phase(Phase::Audit);
        let mut target = self.show(version).await?;
        versions::resolve_files(&self.table, [&mut target]).await?;
        let parent = match target.parent {
            0 => None,
            v => Some(versions::read_manifest(&self.table, v).await?),
        };
        let rules = self.conf.rules.rules();
        let run_id = run_id(RunInputs::VersionAudit {
            version: target.version,
            rule_files: self.conf.rules.files(),
        });
        let date = target
            .watermarks
            .get("max_logical_date")
            .cloned()
            .unwrap_or_else(|| "1970-01-01".to_string());
        let logical_date = parse_date(&date)?;
        let ctx = self.session(None)?;
        let files = audit::tables::register_version(&ctx, &self.table, &target, parent.as_ref())?;
        audit::tables::register_targets(&ctx, &self.conf, &target.schema_ref()).await?;
        audit::plan::compile(&ctx, &rules, &self.conf.key).await?;
        let partitions: Vec<(String, u64)> = target
            .partitions
            .values()
            .map(|p| (p.path.clone(), p.rows))
            .collect();
        let baseline = audit::run::Baseline {
            logical_date,
            partition_by: &self.conf.partition_by,
            staged: &partitions,
            files: Some(&files),
            published: parent.as_ref(),
            progress: self.options.progress.as_deref(),
        };
        let results =
            audit::run::run(&ctx, &rules, &self.conf.key, self.sample_limit(), &baseline).await?;
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
            report: Some(layout::report_path(&run_id).to_string()),
            message: None,
            merge: None,
            watermark: None,
            audit_report: Some(report),
            timings: Timings::default(),
            on_publish: None,
            in_table: false,
            proposal: None,
        })
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
        let mut outcome = RunOutcome {
            status: Status::Published,
            version: latest,
            run_id: current.change.run_id.clone(),
            logical_date: String::new(),
            rows: target.rows(),
            partitions: target.partitions.keys().cloned().collect(),
            audits: target.audits.clone(),
            report: None,
            message: None,
            merge: None,
            watermark: None,
            audit_report: None,
            timings: Timings::default(),
            on_publish: None,
            in_table: false,
            proposal: None,
        };
        if current.partitions == target.partitions && current.schema == target.schema {
            self.sync_formats(latest).await?;
            outcome.status = Status::Unchanged;
            outcome.message = Some(format!(
                "version {latest} already holds the content of version {to}"
            ));
            return Ok(outcome);
        }
        let run_id = run_id(RunInputs::Rollback { to, from: latest });
        outcome.run_id = run_id.clone();
        self.publish(Proposal::Restore { run_id, target }, latest, outcome)
            .await
    }
}
