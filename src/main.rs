//! The `wap` command line: arguments, rendering and exit codes. All behaviour lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use wap::conf::JobConf;
use wap::job::{Job, JobOptions, Mode, RunOutcome, Status};
use wap::manifest::Manifest;
use wap::progress::{Display, Style, When};
use wap::{Error, exit_code};

/// mimalloc instead of the system allocator: DataFusion and manifest decoding make many small,
/// short-lived allocations, and glibc's malloc also keeps freed memory in per-thread arenas.
/// Built without transparent huge pages (`no_thp`): a 2 MiB page touched for a few bytes counts
/// whole in the peak RSS, for no speed.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Write-Audit-Publish for lakehouse tables on object storage.
#[derive(Parser)]
#[command(name = "wap", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Write, audit and publish one logical date.
    Run(DateArgs),
    /// Run every date of a range, each as `wap run --date D` would (overwrite mode: several at
    /// once; merge mode: one at a time, in date order). Re-running resumes it.
    Backfill {
        #[arg(long)]
        conf: PathBuf,
        /// First logical date, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last logical date, inclusive.
        #[arg(long)]
        to: String,
        /// Dates at once (overwrite mode; default: the number of cores).
        #[arg(long)]
        parallel: Option<usize>,
        /// Run every date even after one failed; exit with the worst code.
        #[arg(long)]
        keep_going: bool,
        /// Write and audit every date, then publish them all as one version, or nothing.
        #[arg(long)]
        atomic: bool,
        /// One JSON object per date on stdout as each finishes, then a summary line.
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
        progress: ProgressArg,
    },
    /// Write and audit one logical date; never publishes. Without --date: audit a published
    /// version (--version N, default current) to try rules on production data.
    Audit {
        #[arg(long)]
        conf: PathBuf,
        #[arg(long, conflicts_with = "version")]
        date: Option<String>,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
        progress: ProgressArg,
    },
    /// List versions (newest first) and runs (oldest first) with what became of each.
    Log {
        #[arg(long)]
        conf: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show one version: partitions, files, rows, run.
    Show {
        #[arg(long)]
        conf: PathBuf,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Run a read-only SQL query over a version; the table is named after the job.
    Query {
        #[arg(long)]
        conf: PathBuf,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        sql: String,
    },
    /// Parse all YAML, plan the transform and compile every rule, reading no data; exit 2 on
    /// any problem.
    Check {
        #[arg(long)]
        conf: PathBuf,
        /// Use this date's source for the schema (default: any date the source has).
        #[arg(long)]
        date: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print a stored audit report as a table or as Markdown.
    Report {
        #[arg(long)]
        conf: PathBuf,
        /// The run whose report to print.
        #[arg(long, conflicts_with = "last")]
        run: Option<String>,
        /// The most recent report (the default).
        #[arg(long)]
        last: bool,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
    /// Check that the table's store supports the conditional writes publishing needs.
    Doctor {
        #[arg(long)]
        conf: PathBuf,
        #[arg(long)]
        json: bool,
        /// Write what a crash left missing (Delta commits of committed versions).
        #[arg(long)]
        repair: bool,
    },
    /// Delete staged files no retained version references (runs that never published, versions
    /// past retention) and expired manifests, once older than the retention.
    Gc {
        #[arg(long)]
        conf: PathBuf,
        /// Retention: nothing younger goes, and a version stays while it was current less than
        /// this long ago. `<n>s|m|h|d|w`.
        #[arg(long, default_value = "7d", value_parser = parse_retention)]
        older_than: i64,
        /// Keep at least the N newest versions whatever their age.
        #[arg(long)]
        keep_versions: Option<usize>,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Publish a new version whose content equals version N.
    Rollback {
        #[arg(long)]
        conf: PathBuf,
        #[arg(long)]
        to: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct DateArgs {
    /// Job file (conf/*.yaml).
    #[arg(long)]
    conf: PathBuf,
    /// Logical date, YYYY-MM-DD.
    #[arg(long)]
    date: String,
    /// Print the outcome as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    progress: ProgressArg,
}

/// Progress on stderr: `auto` on a terminal unless `--json`; `always` also off a terminal (as
/// plain lines); `never`.
#[derive(Clone, Copy, ValueEnum)]
enum ProgressArg {
    Auto,
    Always,
    Never,
}

impl ProgressArg {
    fn style(self, json: bool) -> Style {
        let when = match self {
            ProgressArg::Auto => When::Auto,
            ProgressArg::Always => When::Always,
            ProgressArg::Never => When::Never,
        };
        Style::for_stderr(when, json)
    }
}

fn parse_retention(s: &str) -> Result<i64, String> {
    wap::conf::rules::MaxAge::parse(s)
        .map(|d| d.seconds)
        .ok_or_else(|| format!("`{s}` is not a duration: expected <n>s, <n>m, <n>h, <n>d or <n>w"))
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Markdown,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: logs in CI and orchestrators get no control characters.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(wap::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit_code::CONFIG as u8
            } else {
                0
            });
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(exit_code::FAILURE as u8);
        }
    };
    let code = match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

fn job(conf: &PathBuf) -> Result<Job, Error> {
    Job::open(JobConf::load(conf)?, options()?)
}

/// The job with its progress shown on stderr in `style` (counters only when shown).
fn watched_job(
    conf: &PathBuf,
    style: Style,
    command: &'static str,
) -> Result<(Job, Display), Error> {
    let mut options = options()?;
    let progress = std::sync::Arc::new(wap::progress::Progress::default());
    if style != Style::Hidden {
        options.progress = Some(std::sync::Arc::clone(&progress));
    }
    let job = Job::open(JobConf::load(conf)?, options)?;
    Ok((job, Display::start(style, command, progress)))
}

/// Job options, with the memory limit from `WAP_MEMORY_LIMIT`.
fn options() -> Result<JobOptions, Error> {
    let mut options = JobOptions::default();
    if let Ok(limit) = std::env::var("WAP_MEMORY_LIMIT") {
        options.engine.memory_limit = wap::engine::parse_size(&limit).ok_or_else(|| {
            Error::Usage(format!(
                "WAP_MEMORY_LIMIT={limit}: expected bytes or a size such as 512MiB or 2GiB"
            ))
        })?;
    }
    Ok(options)
}

async fn execute(command: Command) -> Result<i32, Error> {
    match command {
        Command::Run(a) => {
            let (job, display) = watched_job(&a.conf, a.progress.style(a.json), "run")?;
            let outcome = job.run(&a.date, Mode::Publish).await;
            display.finish().await;
            Ok(render_outcome(&outcome?, a.json))
        }
        Command::Backfill {
            conf,
            from,
            to,
            parallel,
            keep_going,
            atomic,
            json,
            progress,
        } => {
            use wap::backfill::{DateResult, Event};
            let (job, display) = watched_job(&conf, progress.style(json), "backfill")?;
            let options = wap::backfill::BackfillOptions {
                from,
                to,
                parallel,
                keep_going,
                atomic,
            };
            let done = wap::backfill::backfill(&job, &options, |event| match event {
                Event::Planned { dates, .. } => display.dates(dates),
                Event::Started(date) => display.date_started(date),
                Event::Staged(r) => display.date_done(&r.date),
                Event::Done(r) => {
                    display.date_done(&r.date);
                    if json {
                        // `--progress always` may draw on the same terminal.
                        wap::progress::above(|| println!("{}", r.to_json()));
                    } else if !matches!(r.result, DateResult::Skipped) {
                        wap::progress::eprintln_above(&date_line(r));
                    }
                }
            })
            .await;
            display.finish().await;
            let done = done?;
            if json {
                println!("{}", serde_json::json!({"summary": done.summary}));
            } else {
                render_backfill(&done);
            }
            Ok(done.exit_code())
        }
        Command::Audit {
            conf,
            date,
            version,
            json,
            progress,
        } => {
            let (job, display) = watched_job(&conf, progress.style(json), "audit")?;
            let outcome = match date {
                Some(d) => job.run(&d, Mode::AuditOnly).await,
                None => job.audit_version(version).await,
            };
            display.finish().await;
            Ok(render_outcome(&outcome?, json))
        }
        Command::Gc {
            conf,
            older_than,
            keep_versions,
            dry_run,
            json,
        } => {
            let options = wap::gc::GcOptions {
                older_than_seconds: older_than,
                keep_versions,
                dry_run,
                ..Default::default()
            };
            let report = job(&conf)?.gc(&options).await?;
            if json {
                print_json(&report);
            } else {
                let verb = if report.dry_run {
                    "would delete"
                } else {
                    "deleted"
                };
                for d in &report.deleted {
                    let why = match d.reason {
                        wap::gc::Reason::UnpublishedRun => "run never published",
                        wap::gc::Reason::ExpiredVersion => "only expired versions use it",
                        wap::gc::Reason::ExpiredManifest => "expired version",
                        wap::gc::Reason::ExpiredDeltaLog => {
                            "Delta log entry before the checkpoint retained versions read from"
                        }
                        wap::gc::Reason::ExpiredIcebergMetadata => {
                            "Iceberg metadata no retained version needs"
                        }
                    };
                    println!("{verb} {} ({} bytes; {why})", d.path, d.bytes);
                }
                println!(
                    "{verb} {} object(s), {} bytes; retained versions {:?} (current {}); expired {:?}; {} unreferenced object(s) modified after {} kept",
                    report.deleted.len(),
                    report.deleted_bytes,
                    report.retained_versions,
                    report.current_version,
                    report.expired_versions,
                    report.kept_young,
                    report.cutoff
                );
            }
            Ok(exit_code::OK)
        }
        Command::Rollback { conf, to, json } => {
            let outcome = job(&conf)?.rollback(to).await?;
            Ok(render_outcome(&outcome, json))
        }
        Command::Report {
            conf,
            run,
            last: _,
            format,
        } => {
            let report = job(&conf)?.report(run.as_deref()).await?;
            match format {
                ReportFormat::Table => print!("{}", report.render_text()),
                ReportFormat::Markdown => print!("{}", report.render_markdown()),
                ReportFormat::Json => print_json(&report),
            }
            Ok(exit_code::OK)
        }
        Command::Check { conf, date, json } => {
            let report = wap::job::check(&conf, date.as_deref(), options()?).await?;
            if json {
                print_json(&report);
            } else {
                println!(
                    "ok: {} rule(s) from {} file(s) compile against the transform's output ({}), source {}",
                    report.rules,
                    report.rule_files,
                    report.columns.join(", "),
                    report.source
                );
            }
            Ok(exit_code::OK)
        }
        Command::Doctor { conf, json, repair } => {
            let diagnosis = job(&conf)?.doctor(repair).await;
            if json {
                print_json(&diagnosis);
            } else {
                println!("store: {}", diagnosis.location);
                for c in &diagnosis.checks {
                    let mark = match c.verdict {
                        wap::doctor::Verdict::Pass => "pass",
                        wap::doctor::Verdict::Unsupported => "n/a ",
                        wap::doctor::Verdict::Fail => "FAIL",
                    };
                    println!("  [{mark}] {:<18} {}", c.name, c.detail);
                }
                println!(
                    "{}",
                    if diagnosis.safe {
                        "publishing is safe on this store"
                    } else {
                        "publishing is NOT safe on this store"
                    }
                );
            }
            Ok(if diagnosis.safe {
                exit_code::OK
            } else {
                exit_code::FAILURE
            })
        }
        Command::Log { conf, json } => {
            let job = job(&conf)?;
            let versions = job.log().await?;
            let runs = job.runs().await?;
            render_log(&versions, &runs, json);
            Ok(exit_code::OK)
        }
        Command::Show {
            conf,
            version,
            json,
        } => {
            let job = job(&conf)?;
            let manifest = job.show_files(version).await?;
            let projections = job.projections(manifest.version).await?;
            render_show(&manifest, &projections, json);
            Ok(exit_code::OK)
        }
        Command::Query {
            conf,
            version,
            format,
            sql,
        } => {
            let df = job(&conf)?.query(version, &sql).await?;
            query_output(df, format).await?;
            Ok(exit_code::OK)
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

fn render_outcome(outcome: &RunOutcome, json: bool) -> i32 {
    if json {
        print_json(outcome);
    } else {
        let mut out = String::new();
        match outcome.status {
            Status::Published => out.push_str(&format!(
                "published version {} (run {}): {} rows in {} partition(s)\n",
                outcome.version,
                outcome.run_id,
                outcome.rows,
                outcome.partitions.len()
            )),
            Status::Unchanged => match &outcome.message {
                Some(m) => out.push_str(&format!("unchanged: {m}\n")),
                None => out.push_str(&format!(
                    "unchanged: version {} already holds run {}; nothing published\n",
                    outcome.version, outcome.run_id
                )),
            },
            Status::AuditPassed => out.push_str(&format!(
                "audit passed (run {}): {} rows in {} partition(s); nothing published\n",
                outcome.run_id,
                outcome.rows,
                outcome.partitions.len()
            )),
            Status::AuditFailed => out.push_str(&format!(
                "audit FAILED (run {}): nothing published; current version is still {}\n",
                outcome.run_id, outcome.version
            )),
            Status::Conflict => out.push_str(&format!(
                "conflict: {}\n",
                outcome
                    .message
                    .as_deref()
                    .unwrap_or("another publisher won")
            )),
        }
        if let Some(m) = &outcome.merge {
            for (what, n) in [
                ("inserted", m.inserted),
                ("updated", m.updated),
                ("deleted", m.deleted),
                ("unchanged", m.unchanged),
                ("stale", m.stale),
            ] {
                out.push_str(&format!("  {what:<10} {n} row(s)\n"));
            }
        }
        if let Some(w) = &outcome.watermark {
            out.push_str(&format!(
                "  watermark  {}: {} -> {}\n",
                w.column, w.before, w.after
            ));
        }
        if let Some(report) = &outcome.audit_report {
            for r in &report.rules {
                let mark = match (r.passed, r.blocks()) {
                    (true, _) => "pass",
                    (false, true) => "FAIL",
                    (false, false) => "warn",
                };
                out.push_str(&format!("  [{mark}] {:<28} {}\n", r.name, r.message));
                if !r.passed && !r.sample_table.is_empty() {
                    out.push_str(&format!(
                        "         sample failing rows ({}):\n",
                        r.defined_at
                    ));
                    for line in r.sample_table.lines() {
                        out.push_str(&format!("         {line}\n"));
                    }
                }
            }
            if let Some(path) = &outcome.report {
                out.push_str(&format!("  report: {path}\n"));
            }
        }
        if let Some(e) = outcome.on_publish.as_ref().and_then(|h| h.error.as_ref()) {
            out.push_str(&format!(
                "published, but {e}\n  the version stays published; the next re-run of this date runs the command again\n"
            ));
        }
        let stream = if outcome.exit_code() == 0 {
            &mut std::io::stdout() as &mut dyn Write
        } else {
            &mut std::io::stderr() as &mut dyn Write
        };
        let _ = stream.write_all(out.as_bytes());
    }
    outcome.exit_code()
}

/// One finished date of a backfill, as a line on stderr.
fn date_line(r: &wap::backfill::DateReport) -> String {
    use wap::backfill::DateResult;
    match &r.result {
        DateResult::Done(o) => {
            let mut line = format!(
                "{}  {:<12} version {}  {} rows  {} partition(s)  {:.1} s",
                r.date,
                r.status(),
                o.version,
                o.rows,
                o.partitions.len(),
                r.elapsed_ms as f64 / 1000.0
            );
            if let Some(h) = o.on_publish.as_ref().and_then(|h| h.error.as_ref()) {
                line.push_str(&format!("\n  published, but {h}"));
            }
            if let Some(report) = o.audit_report.as_ref().filter(|_| !o.status_ok()) {
                for rule in report.rules.iter().filter(|r| !r.passed && r.blocks()) {
                    line.push_str(&format!("\n  [FAIL] {:<28} {}", rule.name, rule.message));
                }
            }
            if let (Some(m), false) = (&o.message, o.status_ok()) {
                line.push_str(&format!("\n  {m}"));
            }
            line
        }
        DateResult::Failed { exit_code, message } => {
            format!(
                "{}  error (exit {exit_code})\n  {}",
                r.date,
                message.replace('\n', "\n  ")
            )
        }
        DateResult::Skipped => format!("{}  skipped", r.date),
    }
}

/// The table that ends a backfill's human output.
fn render_backfill(done: &wap::backfill::Backfill) {
    use wap::backfill::DateResult;
    let mut out = String::new();
    out.push_str(&format!(
        "{:<10}  {:<12}  {:>7}  {:>12}  {:>10}  {:>8}  {}\n",
        "date", "outcome", "version", "rows", "partitions", "seconds", "run"
    ));
    for r in &done.dates {
        let (version, rows, parts, run) = match &r.result {
            DateResult::Done(o) => (
                o.version.to_string(),
                o.rows.to_string(),
                o.partitions.len().to_string(),
                o.run_id.clone(),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let mut outcome = r.status();
        if let DateResult::Done(o) = &r.result
            && o.on_publish.as_ref().is_some_and(|h| !h.ok)
        {
            outcome = "hook_failed".into();
        }
        out.push_str(&format!(
            "{:<10}  {:<12}  {:>7}  {:>12}  {:>10}  {:>8.1}  {}\n",
            r.date,
            outcome,
            version,
            rows,
            parts,
            r.elapsed_ms as f64 / 1000.0,
            run
        ));
    }
    let s = &done.summary;
    out.push_str(&format!(
        "{} date(s): {} published, {} unchanged, {} failed, {} skipped; current version {}{}; {:.1} s\n",
        s.dates,
        s.published,
        s.unchanged,
        s.failed,
        s.skipped,
        s.version,
        match s.atomic_version {
            Some(v) => format!(" (every date in version {v})"),
            None => String::new(),
        },
        s.elapsed_ms as f64 / 1000.0
    ));
    print!("{out}");
}

#[derive(serde::Serialize)]
struct LogEntry<'a> {
    version: u64,
    parent: u64,
    kind: wap::manifest::ChangeKind,
    run_id: &'a str,
    logical_date: &'a str,
    partitions: &'a [String],
    rows: u64,
    published_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored_version: Option<u64>,
    /// Incremental watermarks of the version (`incremental.<cursor>`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    watermarks: std::collections::BTreeMap<&'a str, &'a str>,
}

fn render_log(versions: &[Manifest], runs: &[wap::inspect::RunRecord], json: bool) {
    let entries: Vec<LogEntry> = versions
        .iter()
        .map(|m| LogEntry {
            version: m.version,
            parent: m.parent,
            kind: m.change.kind,
            run_id: &m.change.run_id,
            logical_date: &m.change.logical_date,
            partitions: &m.change.partitions,
            rows: m.rows(),
            published_at: &m.change.published_at,
            restored_version: m.change.restored_version,
            watermarks: m
                .watermarks
                .iter()
                .filter(|(k, _)| k.starts_with(wap::watermark::PREFIX))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        })
        .collect();
    if json {
        print_json(&serde_json::json!({"versions": entries, "runs": runs}));
        return;
    }
    println!("versions, newest first:");
    if entries.is_empty() {
        println!("  no versions yet");
    }
    for e in entries {
        let what = match e.restored_version {
            Some(v) => format!("rollback to version {v}"),
            None => format!("run {} for {}", e.run_id, e.logical_date),
        };
        let marks: String = e
            .watermarks
            .iter()
            .map(|(k, v)| format!("  watermark {}={v}", &k[wap::watermark::PREFIX.len()..]))
            .collect();
        println!(
            "  version {:>4}  {}  {}  {} rows  changed: {}{marks}",
            e.version,
            e.published_at,
            what,
            e.rows,
            e.partitions.join(", ")
        );
    }
    println!("runs, oldest first:");
    if runs.is_empty() {
        println!("  no runs yet");
    }
    for r in runs {
        let status = match r.status {
            wap::inspect::RunStatus::Published => format!(
                "published in version {}",
                r.version.map_or("?".into(), |v| v.to_string())
            ),
            wap::inspect::RunStatus::AuditFailed => "audit failed, not published".into(),
            wap::inspect::RunStatus::NotPublished => "audit passed, not published".into(),
            wap::inspect::RunStatus::NothingToPublish => "no rows, nothing to publish".into(),
            wap::inspect::RunStatus::VersionAudit => "audit of a published version".into(),
        };
        println!(
            "  {}  run {} for {}  {} rows  {status}",
            r.at, r.run_id, r.logical_date, r.rows
        );
        if let Some(u) = &r.last_unchanged {
            println!(
                "  {}  run {} re-run: unchanged, version {} already held it",
                u.checked_at, r.run_id, u.version
            );
        }
    }
}

fn render_show(m: &Manifest, projections: &[wap::inspect::Projection], json: bool) {
    if json {
        let mut value = serde_json::to_value(m).expect("a manifest serializes");
        if !projections.is_empty() {
            value["formats"] = serde_json::to_value(projections).expect("serializable");
        }
        print_json(&value);
        return;
    }
    println!(
        "version {} (parent {}) of table {}",
        m.version, m.parent, m.table
    );
    println!(
        "published {} by {:?} {}",
        m.change.published_at, m.change.kind, m.change.run_id
    );
    println!(
        "schema: {}",
        m.schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for p in projections {
        println!(
            "{}: {} version {} ({}{})",
            p.format,
            p.location,
            p.version,
            p.object,
            if p.written {
                ""
            } else {
                "; not written yet: run `wap doctor --repair`"
            }
        );
    }
    println!("watermarks:");
    for (k, v) in &m.watermarks {
        println!("  {k} = {v}");
    }
    println!("{} rows in {} partition(s):", m.rows(), m.partitions.len());
    for p in m.partitions.values() {
        println!(
            "  {:<40} {:>10} rows {:>12} bytes  run {} ({})",
            if p.path.is_empty() {
                "(table)"
            } else {
                &p.path
            },
            p.rows,
            p.bytes,
            p.run_id,
            p.logical_date
        );
        for f in &p.files {
            println!("      {} ({} rows, {} bytes)", f.path, f.rows, f.size);
        }
    }
    if !m.audits.is_empty() {
        println!("audits:");
        for a in &m.audits {
            println!(
                "  {} {} ({}): {} failing rows",
                if a.passed { "pass" } else { "fail" },
                a.name,
                a.severity,
                a.failing_rows
            );
        }
    }
}

async fn query_output(df: datafusion::prelude::DataFrame, format: Format) -> Result<(), Error> {
    use wap::table::TableError;
    let exec = |source| Error::Table(TableError::Execute { source });
    let render = |source| Error::Table(TableError::Render { source });
    match format {
        Format::Table => {
            let batches = df.collect().await.map_err(exec)?;
            let table = arrow::util::pretty::pretty_format_batches(&batches).map_err(render)?;
            println!("{table}");
        }
        Format::Csv => {
            let mut stream = df.execute_stream().await.map_err(exec)?;
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::stdout().lock());
            while let Some(batch) = stream.next().await {
                writer.write(&batch.map_err(exec)?).map_err(render)?;
            }
        }
        Format::Json => {
            let batches = df.collect().await.map_err(exec)?;
            let buf = wap::table::json_rows(&batches).map_err(render)?;
            println!("{}", String::from_utf8_lossy(&buf));
        }
    }
    Ok(())
}
