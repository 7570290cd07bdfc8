//! `wap backfill`: every date of a range, each the run `wap run --date D` would be (its own run
//! id, report and version), or with `--atomic` all of them published as one version.
//!
//! ```text
//!  dates ─► run ids (listing only) ─► up to N dates at once ─► each: run (conflict? run again)
//!                                          │ a date failed (no --keep-going)
//!                                          ▼
//!                              no new date starts; running ones finish; worst exit code
//!  --atomic: every date written and audited (Mode::Stage) ─► one version, or none at all
//! ```
//!
//! Overwrite mode runs dates in parallel. They publish in any order through the usual
//! compare-and-swap, and each gives way to the later dates of the range
//! ([`crate::publish::Proposal::Replace`]'s `yield_to`): a partition two dates produce ends with
//! the later date's rows whatever the order, as when the dates run one by one. Merge mode runs
//! one date at a time in date order (each merge applies on top of the version before it).
//!
//! Resuming is running it again: a date already published with the same inputs is `unchanged`
//! from its report and the manifest, without reading data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::job::{Job, Mode, RunContext, RunOutcome, Status, parse_date};
use crate::manifest::{AuditSummary, Partition};
use crate::publish::{Proposal, PublishError, PublishOutcome};
use crate::run_id::{RunInputs, run_id};
use crate::{Error, Result, exit_code, versions};

/// The longest range one backfill takes (a century of days).
pub const MAX_DATES: usize = 36_600;

/// Runs of one date after a publish conflict, before the date counts as failed.
const MAX_ATTEMPTS: u32 = 8;

/// What to backfill and how.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// First date, `YYYY-MM-DD`.
    pub from: String,
    /// Last date, inclusive.
    pub to: String,
    /// Dates at once (overwrite mode; default: the number of cores). Merge mode: 1.
    pub parallel: Option<usize>,
    /// Run every date even after one failed.
    pub keep_going: bool,
    /// Publish every date as one version, or nothing.
    pub atomic: bool,
}

/// How one date ended.
#[derive(Debug, Clone)]
pub enum DateResult {
    /// The run ended with an outcome (published, unchanged, audit failed, conflict).
    Done(Box<RunOutcome>),
    /// The run stopped on an error.
    Failed { exit_code: i32, message: String },
    /// Never started: an earlier failure stopped the backfill (or, with `--atomic`, another
    /// date failed, so nothing was published).
    Skipped,
}

/// One date of a backfill.
#[derive(Debug, Clone)]
pub struct DateReport {
    pub date: String,
    pub result: DateResult,
    /// Runs of the date (more than one after publish conflicts).
    pub attempts: u32,
    pub elapsed_ms: u64,
}

impl DateReport {
    /// The date's exit code (0 for skipped dates).
    pub fn exit_code(&self) -> i32 {
        match &self.result {
            DateResult::Done(o) => o.exit_code(),
            DateResult::Failed { exit_code, .. } => *exit_code,
            DateResult::Skipped => exit_code::OK,
        }
    }

    /// `published`, `unchanged`, `audit_failed`, `conflict`, `audit_passed`, `error`,
    /// `skipped`.
    pub fn status(&self) -> String {
        match &self.result {
            DateResult::Done(o) => serde_json::to_value(o.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            DateResult::Failed { .. } => "error".into(),
            DateResult::Skipped => "skipped".into(),
        }
    }

    /// The `--json` line: the `run --json` object plus `date` (and `attempts`); for an error
    /// `status: "error"` with `exit_code` and `error`; `status: "skipped"` for dates that never
    /// ran.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = match &self.result {
            DateResult::Done(o) => serde_json::to_value(o).expect("serializable"),
            DateResult::Failed { exit_code, message } => serde_json::json!({
                "status": "error",
                "exit_code": exit_code,
                "error": message,
            }),
            DateResult::Skipped => serde_json::json!({"status": "skipped"}),
        };
        v["date"] = self.date.clone().into();
        v["attempts"] = self.attempts.into();
        v["elapsed_ms"] = self.elapsed_ms.into();
        v
    }
}

/// The last `--json` line's `summary`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub dates: usize,
    pub published: usize,
    pub unchanged: usize,
    /// Dates that ended with a non-zero exit code.
    pub failed: usize,
    pub skipped: usize,
    /// The current version after the backfill.
    pub version: u64,
    pub elapsed_ms: u64,
    /// With `--atomic`: the version holding every date (absent when nothing was published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atomic_version: Option<u64>,
}

/// A finished backfill.
#[derive(Debug, Clone)]
pub struct Backfill {
    /// Every date of the range, in date order.
    pub dates: Vec<DateReport>,
    pub summary: Summary,
}

impl Backfill {
    /// The exit code of the worst outcome: audit failed (3), then conflict (4), configuration
    /// (2), anything else (1); 0 when every date published or was unchanged.
    pub fn exit_code(&self) -> i32 {
        worst(self.dates.iter().map(DateReport::exit_code))
    }
}

/// The worst of `codes`, in the order of [`Backfill::exit_code`].
pub fn worst(codes: impl IntoIterator<Item = i32>) -> i32 {
    let rank = |c: i32| match c {
        exit_code::OK => 0,
        exit_code::FAILURE => 1,
        exit_code::CONFIG => 2,
        exit_code::CONFLICT => 3,
        exit_code::AUDIT_FAILED => 4,
        _ => 1,
    };
    codes
        .into_iter()
        .max_by_key(|c| rank(*c))
        .unwrap_or(exit_code::OK)
}

/// What a backfill tells its caller as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The dates of the range, before any runs.
    Planned { dates: usize, parallel: usize },
    /// A date's run started.
    Started(&'a str),
    /// With `--atomic`: a date was written and audited (it publishes with the others).
    Staged(&'a DateReport),
    /// A date is done (with `--atomic`: after the one publish).
    Done(&'a DateReport),
}

/// Every date from `from` to `to`, inclusive.
pub fn date_range(from: &str, to: &str) -> Result<Vec<String>> {
    let (a, b) = (parse_date(from)?, parse_date(to)?);
    if b < a {
        return Err(Error::Usage(format!(
            "--from {from} is after --to {to}: expected the first date, then the last"
        )));
    }
    let days = (b - a).num_days() as usize + 1;
    if days > MAX_DATES {
        return Err(Error::Usage(format!(
            "--from {from} --to {to} is {days} dates: at most {MAX_DATES} in one backfill"
        )));
    }
    Ok(a.iter_days()
        .take(days)
        .map(|d: NaiveDate| d.format("%Y-%m-%d").to_string())
        .collect())
}

/// Runs the backfill; `observe` hears of each date as it goes (for `--json` lines and
/// progress).
pub async fn backfill(
    job: &Job,
    options: &BackfillOptions,
    mut observe: impl FnMut(Event<'_>),
) -> Result<Backfill> {
    let started = Instant::now();
    let dates = date_range(&options.from, &options.to)?;
    let merge = job.conf().merge.is_some();
    let file = job.conf().path.display().to_string();
    if merge && options.parallel.is_some_and(|n| n > 1) {
        return Err(Error::Usage(format!(
            "--parallel {}: {file} is a merge job: each batch applies on top of the version \
             before it, so its dates run one at a time, in date order; drop --parallel",
            options.parallel.unwrap_or(1)
        )));
    }
    if merge && options.atomic {
        return Err(Error::Usage(format!(
            "--atomic: {file} is a merge job: each batch merges on top of the version before \
             it, so its dates cannot be staged together; run the backfill without --atomic"
        )));
    }
    if options.parallel == Some(0) {
        return Err(Error::Usage(
            "--parallel 0: expected at least 1 date at once".into(),
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallel = if merge {
        1
    } else {
        options.parallel.unwrap_or(cores)
    }
    .min(dates.len())
    .max(1);
    observe(Event::Planned {
        dates: dates.len(),
        parallel,
    });

    // The run id of every date (listing its source only): each date gives way to the later
    // ones. Merge jobs publish in date order and need none.
    let runs: Vec<Option<String>> = if merge {
        vec![None; dates.len()]
    } else {
        futures::stream::iter(dates.iter())
            .map(|d| async move { job.run_id_for(d).await.ok() })
            .buffered(8)
            .collect()
            .await
    };

    let worker = Arc::new(job.sharing_memory(parallel));
    let mode = if options.atomic {
        Mode::Stage
    } else {
        Mode::Publish
    };
    let commit_turn = Arc::new(tokio::sync::Mutex::new(()));
    let mut reports: Vec<Option<DateReport>> = vec![None; dates.len()];
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut stop = false;
    loop {
        while !stop && next < dates.len() && tasks.len() < parallel {
            let cx = RunContext {
                later_runs: runs[next + 1..].iter().flatten().cloned().collect(),
                commit_turn: Some(Arc::clone(&commit_turn)),
            };
            observe(Event::Started(&dates[next]));
            let (job, date, i) = (Arc::clone(&worker), dates[next].clone(), next);
            tasks.spawn(async move { (i, run_date(&job, date, mode, &cx).await) });
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (i, report) =
            joined.map_err(|e| Error::Usage(format!("a date's run panicked: {e}")))?;
        if report.exit_code() != exit_code::OK && !options.keep_going {
            stop = true;
        }
        if mode == Mode::Stage {
            observe(Event::Staged(&report));
        } else {
            observe(Event::Done(&report));
        }
        reports[i] = Some(report);
    }
    let mut reports: Vec<DateReport> = reports
        .into_iter()
        .zip(&dates)
        .map(|(r, d)| {
            r.unwrap_or_else(|| DateReport {
                date: d.clone(),
                result: DateResult::Skipped,
                attempts: 0,
                elapsed_ms: 0,
            })
        })
        .collect();

    let mut atomic_version = None;
    if options.atomic {
        let failed = reports.iter().any(|r| r.exit_code() != exit_code::OK);
        if !failed {
            atomic_version = publish_atomic(job, &mut reports, &runs).await?;
        } else {
            // Nothing publishes: the staged dates did not happen as far as the table goes.
            for r in &mut reports {
                if matches!(&r.result, DateResult::Done(o) if o.status == Status::AuditPassed) {
                    r.result = DateResult::Skipped;
                }
            }
        }
        for r in &reports {
            observe(Event::Done(r));
        }
    } else {
        for r in reports
            .iter()
            .filter(|r| matches!(r.result, DateResult::Skipped))
        {
            observe(Event::Done(r));
        }
    }

    let mut summary = Summary {
        dates: dates.len(),
        atomic_version,
        ..Default::default()
    };
    for r in &reports {
        match (&r.result, r.exit_code()) {
            (DateResult::Skipped, _) => summary.skipped += 1,
            (_, code) if code != exit_code::OK => summary.failed += 1,
            (DateResult::Done(o), _) if o.status == Status::Published => summary.published += 1,
            _ => summary.unchanged += 1,
        }
    }
    summary.version = match versions::current(job.store()).await {
        Ok(m) => m.map_or(0, |m| m.version),
        Err(_) => reports
            .iter()
            .filter_map(|r| match &r.result {
                DateResult::Done(o) => Some(o.version),
                _ => None,
            })
            .max()
            .unwrap_or(0),
    };
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Backfill {
        dates: reports,
        summary,
    })
}

/// One date, run again after a publish conflict (it audits and publishes on top of the version
/// that won) up to [`MAX_ATTEMPTS`] times.
async fn run_date(job: &Job, date: String, mode: Mode, cx: &RunContext) -> DateReport {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = job.run_in(&date, mode, cx).await;
        let conflict = match &result {
            Ok(o) => o.status == Status::Conflict,
            Err(e) => e.exit_code() == exit_code::CONFLICT,
        };
        if conflict && attempts < MAX_ATTEMPTS {
            tracing::info!(date, attempts, "publish conflict; running the date again");
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempts))).await;
            continue;
        }
        return DateReport {
            date,
            result: match result {
                Ok(o) => DateResult::Done(Box::new(o)),
                Err(e) => DateResult::Failed {
                    exit_code: e.exit_code(),
                    message: e.to_string(),
                },
            },
            attempts,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
    }
}

/// Publishes every staged date of `reports` as one version: each partition from the latest
/// date that produced it, except those the base already holds from a later date's run.
/// Returns the version (`None`: nothing to publish).
async fn publish_atomic(
    job: &Job,
    reports: &mut [DateReport],
    runs: &[Option<String>],
) -> Result<Option<u64>> {
    let staged: Vec<usize> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(&r.result, DateResult::Done(o) if o.proposal.is_some()))
        .map(|(i, _)| i)
        .collect();
    let Some(&last) = staged.last() else {
        return Ok(None);
    };
    let outcome = |i: usize| match &reports[i].result {
        DateResult::Done(o) => o,
        _ => unreachable!("staged dates are done"),
    };
    // The oldest version a date audited against: versions since then are checked for overlap.
    let base = staged
        .iter()
        .map(|&i| outcome(i).version)
        .min()
        .unwrap_or(0);
    let base_manifest = match base {
        0 => None,
        v => Some(versions::read_manifest(job.store(), v).await?),
    };
    let Some(Proposal::Replace {
        schema,
        partition_by,
        key,
        table,
        ..
    }) = outcome(last).proposal.clone()
    else {
        unreachable!("overwrite runs stage a Replace");
    };
    let mut partitions: BTreeMap<String, Partition> = BTreeMap::new();
    let mut audits: Vec<AuditSummary> = Vec::new();
    let mut problems = Vec::new();
    for &i in &staged {
        let later: BTreeSet<&str> = runs[i + 1..].iter().flatten().map(String::as_str).collect();
        let Some(Proposal::Replace {
            partitions: theirs,
            audits: rules,
            schema: s,
            ..
        }) = &outcome(i).proposal
        else {
            continue;
        };
        if let Err(e) = crate::publish::compatible(s, &schema) {
            problems.push(format!(
                "{} staged another schema than {}: {e}",
                reports[i].date, reports[last].date
            ));
        }
        for p in theirs {
            let held_by_later = base_manifest.as_ref().is_some_and(|b| {
                b.partitions
                    .get(&p.path)
                    .is_some_and(|q| later.contains(q.run_id.as_str()))
            });
            if !held_by_later {
                partitions.insert(p.path.clone(), p.clone());
            }
        }
        for a in rules {
            match audits.iter_mut().find(|x| x.name == a.name) {
                Some(x) => {
                    x.passed &= a.passed;
                    x.failing_rows += a.failing_rows;
                }
                None => audits.push(a.clone()),
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Check { problems });
    }
    let run_ids: Vec<String> = staged.iter().map(|&i| outcome(i).run_id.clone()).collect();
    let proposal = Proposal::Replace {
        run_id: run_id(RunInputs::Backfill { runs: &run_ids }),
        logical_date: reports[last].date.clone(),
        table,
        schema,
        partition_by,
        key,
        partitions: partitions.into_values().collect(),
        audits,
        merge: None,
        yield_to: BTreeSet::new(),
    };
    let published = job.publisher().publish(&proposal, Some(base)).await;
    let (status, version, message, failure) = match published {
        Ok(PublishOutcome::Published { version }) => (Status::Published, version, None, None),
        Ok(PublishOutcome::Unchanged { version }) => (Status::Unchanged, version, None, None),
        Err(e) if e.is_conflict() => {
            let v = match &e {
                PublishError::Conflict { version, .. } => *version,
                _ => version_or_zero(job).await,
            };
            (Status::Conflict, v, Some(e.to_string()), None)
        }
        Err(e) => {
            let e = Error::from(e);
            (
                Status::Conflict,
                0,
                None,
                Some((e.exit_code(), e.to_string())),
            )
        }
    };
    for &i in &staged {
        let r = &mut reports[i];
        if let Some((exit_code, message)) = &failure {
            r.result = DateResult::Failed {
                exit_code: *exit_code,
                message: message.clone(),
            };
            continue;
        }
        let DateResult::Done(o) = &mut r.result else {
            continue;
        };
        o.proposal = None;
        o.status = status;
        o.version = version;
        o.message = message.clone();
        o.in_table = matches!(status, Status::Published | Status::Unchanged);
        job.after_publish(o).await;
    }
    Ok((status == Status::Published).then_some(version))
}

async fn version_or_zero(job: &Job) -> u64 {
    versions::current(job.store())
        .await
        .ok()
        .flatten()
        .map_or(0, |m| m.version)
}
