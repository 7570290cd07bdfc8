//! `wap backfill` as a user runs it: 20 dates on the local filesystem and on S3 equal the 20
//! single runs, also when killed with SIGKILL and restarted; the re-run of a complete backfill
//! reads no data; `--atomic`, `--keep-going`, exit codes and `--json` lines; the `on_publish`
//! hook once per published run across re-runs and crashes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wap::backfill::{BackfillOptions, DateResult};
use wap::conf::JobConf;
use wap::job::{Job, JobOptions, Status};

use crate::cli::Example;
use crate::crash::{Lcg, every_version_reads, wait_with_deadline};

const CONF: &str = "conf/orders.yaml";
const FROM: &str = "2024-02-01";
const TO: &str = "2024-02-20";

fn dates() -> Vec<String> {
    (1..=20).map(|d| format!("2024-02-{d:02}")).collect()
}

fn source_file(ex: &Example, date: &str) -> std::path::PathBuf {
    ex.dir
        .path()
        .join("data/orders")
        .join(date)
        .join("orders.csv")
}

/// The source of the 20 dates: date `i` has 3 to 6 orders of its own day; every third date also
/// brings two late orders of the day before, so its run replaces that partition too (the later
/// date's rows win, as when the dates run one by one). `bad` gets an order with an unknown
/// status (its audit fails).
fn write_sources(ex: &Example, bad: Option<&str>) {
    let all = dates();
    for (i, date) in all.iter().enumerate() {
        let mut csv = String::from("order_id,customer_id,amount,status,order_ts\n");
        let id0 = (i as u64 + 1) * 100;
        for j in 0..(3 + i as u64 % 4) {
            let id = id0 + j;
            let status = ["placed", "shipped", "returned"][(id % 3) as usize];
            csv.push_str(&format!(
                "{id},{},{}.{:02},{status},{date}T{:02}:{:02}:00\n",
                id % 37,
                id % 500 + 1,
                id % 100,
                j + 8,
                id % 60
            ));
        }
        if i % 3 == 2 {
            let prev = &all[i - 1];
            for j in 0..2 {
                let id = id0 + 50 + j;
                csv.push_str(&format!(
                    "{id},{},{}.00,placed,{prev}T23:{:02}:00\n",
                    id % 37,
                    id % 300 + 1,
                    10 + j
                ));
            }
        }
        if bad == Some(date.as_str()) {
            csv.push_str(&format!("{},1,5.00,lost,{date}T12:00:00\n", id0 + 90));
        }
        let file = source_file(ex, date);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, csv).unwrap();
    }
}

/// The 20 dates run one by one with `wap run`, in date order.
fn single_runs(ex: &Example) {
    for d in dates() {
        let out = ex.wap(&["run", "--conf", CONF, "--date", &d, "--json"]);
        assert_eq!(out.status.code(), Some(0), "run {d}: {}", text(&out));
    }
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn backfill(ex: &Example, extra: &[&str]) -> Output {
    let mut args = vec!["backfill", "--conf", CONF, "--from", FROM, "--to", TO];
    args.extend_from_slice(extra);
    ex.wap(&args)
}

/// The `--json` lines of a backfill: one per date, then the summary (checked to parse).
fn json_lines(out: &Output) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"))
        })
        .collect();
    let last = lines.pop().expect("a summary line");
    let summary = last["summary"].clone();
    assert!(summary.is_object(), "the last line is the summary: {last}");
    (lines, summary)
}

/// Every row of the current version, as CSV ordered by key.
fn table_rows(ex: &Example) -> String {
    let out = ex.wap(&[
        "query",
        "--conf",
        CONF,
        "--format",
        "csv",
        "SELECT * FROM orders ORDER BY order_id, order_date",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// What each partition of the current version holds: rows, the date whose run wrote it, and
/// the content hash of each of its files (run ids differ between examples: the source files'
/// ETags do).
type Fingerprint = BTreeMap<String, (u64, String, Vec<String>)>;

fn fingerprint(ex: &Example) -> Fingerprint {
    let job = crate::delta::open_job(&ex.dir.path().join(CONF));
    runtime().block_on(async {
        let mut m = wap::versions::current(job.store())
            .await
            .unwrap()
            .expect("a current version");
        wap::versions::resolve_files(job.store(), [&mut m])
            .await
            .unwrap();
        m.partitions
            .values()
            .map(|p| {
                (
                    p.path.clone(),
                    (
                        p.rows,
                        p.logical_date.clone(),
                        p.files.iter().map(|f| f.sha256.clone()).collect(),
                    ),
                )
            })
            .collect()
    })
}

fn latest_version(ex: &Example) -> u64 {
    let job = crate::delta::open_job(&ex.dir.path().join(CONF));
    runtime()
        .block_on(wap::versions::latest_version(job.store()))
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The reference: the 20 dates run one by one on their own example.
fn reference() -> (String, Fingerprint) {
    let single = Example::new();
    write_sources(&single, None);
    single_runs(&single);
    (table_rows(&single), fingerprint(&single))
}

fn assert_backfill_equals_single_runs(ex: &Example, context: &str) {
    let (rows, print) = reference();
    let out = backfill(ex, &["--parallel", "4", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{context}: {}", text(&out));
    let (lines, summary) = json_lines(&out);
    assert_eq!(lines.len(), 20, "{context}: one line per date");
    let mut seen: Vec<&str> = lines.iter().map(|l| l["date"].as_str().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, dates().iter().map(String::as_str).collect::<Vec<_>>());
    for l in &lines {
        // The `run --json` shape plus the date.
        for field in [
            "status",
            "run_id",
            "version",
            "rows",
            "partitions",
            "audits",
        ] {
            assert!(l.get(field).is_some(), "{context}: no `{field}` in {l}");
        }
        assert!(
            ["published", "unchanged"].contains(&l["status"].as_str().unwrap()),
            "{context}: {l}"
        );
    }
    assert_eq!(summary["dates"], 20, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(
        summary["published"].as_u64().unwrap() + summary["unchanged"].as_u64().unwrap(),
        20,
        "{summary}"
    );
    assert!(summary["elapsed_ms"].is_u64(), "{summary}");
    assert_eq!(summary["version"].as_u64().unwrap(), latest_version(ex));
    assert_eq!(table_rows(ex), rows, "{context}: rows");
    assert_eq!(fingerprint(ex), print, "{context}: partitions and files");
    every_version_reads(ex, CONF, "orders", context);
}

#[test]
fn a_backfill_equals_the_single_runs() {
    let ex = Example::new();
    write_sources(&ex, None);
    assert_backfill_equals_single_runs(&ex, "local filesystem");

    // The human output ends with a table of the dates and outcomes (all unchanged now).
    let out = backfill(&ex, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let table: Vec<&str> = stdout.lines().collect();
    assert!(
        table[0].starts_with("date") && table[0].contains("outcome"),
        "{stdout}"
    );
    for d in dates() {
        assert!(
            table
                .iter()
                .any(|l| l.starts_with(&d) && l.contains("unchanged")),
            "{d} not in the table:\n{stdout}"
        );
    }
    assert!(
        table
            .last()
            .unwrap()
            .contains("20 date(s): 0 published, 20 unchanged"),
        "{stdout}"
    );
}

#[test]
fn a_backfill_on_s3_equals_the_single_runs() {
    let (ex, _) = crate::crash::example_on_s3("backfill");
    write_sources(&ex, None);
    assert_backfill_equals_single_runs(&ex, "S3");
}

#[test]
fn a_backfill_killed_at_random_moments_ends_as_the_single_runs() {
    let (rows, print) = reference();
    // How long a clean backfill takes here, to draw the kills from.
    let clean = {
        let ex = Example::new();
        write_sources(&ex, None);
        let t = Instant::now();
        assert_eq!(backfill(&ex, &["--parallel", "4"]).status.code(), Some(0));
        t.elapsed()
    };
    let ex = Example::new();
    write_sources(&ex, None);
    let mut rng = Lcg(2023);
    let (mut kills, mut attempts) = (0, 0);
    let mut after_kills = Vec::new();
    while kills < 3 {
        attempts += 1;
        assert!(
            attempts < 30,
            "only {kills} of 3 kills landed in {attempts} attempts"
        );
        let mut child = ex.spawn(&[
            "backfill",
            "--conf",
            CONF,
            "--from",
            FROM,
            "--to",
            TO,
            "--parallel",
            "4",
        ]);
        // Once this attempt has published a version of its own (a kill before that, while
        // the process starts, tests nothing), then within the next eighth of a clean
        // backfill's time: each restart resumes with most of the work left, so the three
        // kills land at different stages of it whatever the machine's speed.
        let before = latest_version(&ex);
        let waiting = Instant::now();
        while child.try_wait().unwrap().is_none()
            && latest_version(&ex) == before
            && waiting.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let delay = Duration::from_micros(rng.next() % (clean.as_micros() as u64 / 8 + 1));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
            println!(
                "kill {kills} {delay:?} after its first version (a clean backfill takes {clean:?})"
            );
        }
        child.wait().unwrap();
        every_version_reads(
            &ex,
            CONF,
            "orders",
            &format!("after kill {kills} at {delay:?}"),
        );
        after_kills.push(latest_version(&ex));
    }
    let mut child = ex.spawn(&[
        "backfill", "--conf", CONF, "--from", FROM, "--to", TO, "--json",
    ]);
    assert_eq!(
        wait_with_deadline(&mut child, Duration::from_secs(300)),
        Some(0)
    );
    let out = child.wait_with_output().unwrap();
    let (_, summary) = json_lines(&out);
    assert_eq!(summary["failed"], 0, "{summary}");
    let last = summary["version"].as_u64().unwrap();
    assert!(
        after_kills.iter().any(|v| *v > 0 && *v < last),
        "no kill interrupted the backfill midway: versions after the kills {after_kills:?}, at the end {last}"
    );
    assert_eq!(table_rows(&ex), rows, "rows after {kills} kills");
    assert_eq!(fingerprint(&ex), print, "partitions after {kills} kills");
    every_version_reads(&ex, CONF, "orders", "after the restart");
}

/// Overwrites `file` with as many bytes of garbage, keeping its inode and modification time: a
/// run that reads it fails; its listing (path, size, ETag) is unchanged.
fn garble_keeping_metadata(file: &Path) {
    let meta = std::fs::metadata(file).unwrap();
    let mtime = meta.modified().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all(&vec![b'#'; meta.len() as usize]).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(file).unwrap().modified().unwrap(), mtime);
}

#[test]
fn the_rerun_of_a_complete_backfill_reads_no_data() {
    let ex = Example::new();
    write_sources(&ex, None);
    let out = backfill(&ex, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = latest_version(&ex);
    for d in dates() {
        garble_keeping_metadata(&source_file(&ex, &d));
    }

    let conf = JobConf::load(ex.dir.path().join(CONF)).unwrap();
    let table = Job::open(conf.clone(), JobOptions::default())
        .unwrap()
        .store()
        .clone();
    let rec = crate::store::RecordingStore::new(Arc::clone(&table));
    let job = Job::with_store(conf, rec.clone(), JobOptions::default());
    let options = BackfillOptions {
        from: FROM.into(),
        to: TO.into(),
        ..Default::default()
    };
    let done = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(wap::backfill::backfill(&job, &options, |_| {}))
        .unwrap();
    assert_eq!(done.exit_code(), 0);
    for r in &done.dates {
        match &r.result {
            DateResult::Done(o) => assert_eq!(o.status, Status::Unchanged, "{}", r.date),
            other => panic!("{}: {other:?}", r.date),
        }
    }
    assert_eq!(done.summary.unchanged, 20);
    assert_eq!(done.summary.version, before);
    for q in rec.requests() {
        assert!(
            !(q.path.ends_with(".parquet") && matches!(q.op, "get" | "get_ranges")),
            "the re-run read a data file: {} {}",
            q.op,
            q.path
        );
        if matches!(q.op, "put" | "put_multipart" | "delete" | "copy" | "rename") {
            assert!(
                q.path.ends_with("/unchanged.json"),
                "the re-run wrote {} {}",
                q.op,
                q.path
            );
        }
    }
    let mut ms: Vec<u64> = done.dates.iter().map(|r| r.elapsed_ms).collect();
    ms.sort();
    println!(
        "re-run of a complete 20-date backfill: {} table requests, {} ms in all, per date median {} ms (min {}, max {})",
        rec.requests().len(),
        done.summary.elapsed_ms,
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1]
    );

    // The same through the binary: every date unchanged, no new version.
    let out = backfill(&ex, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (lines, summary) = json_lines(&out);
    assert!(
        lines.iter().all(|l| l["status"] == "unchanged"),
        "{lines:?}"
    );
    assert_eq!(summary["unchanged"], 20);
    assert_eq!(latest_version(&ex), before);
}

#[test]
fn atomic_publishes_every_date_as_one_version_or_nothing() {
    let ex = Example::new();
    let out = ex.wap(&["run", "--conf", CONF, "--date", "2024-01-01"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows_before = table_rows(&ex);

    // One date fails its audit: nothing is published, exit 3.
    write_sources(&ex, Some("2024-02-07"));
    let out = backfill(&ex, &["--atomic", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let (lines, summary) = json_lines(&out);
    assert_eq!(lines.len(), 20);
    let status = |d: &str| {
        lines.iter().find(|l| l["date"] == d).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("2024-02-07"), "audit_failed");
    assert!(
        lines
            .iter()
            .filter(|l| l["date"] != "2024-02-07")
            .all(|l| l["status"] == "skipped"),
        "{lines:?}"
    );
    assert_eq!(summary["version"], 1, "{summary}");
    assert_eq!(summary["published"], 0, "{summary}");
    assert!(summary.get("atomic_version").is_none(), "{summary}");
    assert_eq!(latest_version(&ex), 1);
    assert_eq!(table_rows(&ex), rows_before);

    // Without the failure: one version holding every date, as the single runs would leave it.
    write_sources(&ex, None);
    let out = backfill(&ex, &["--atomic", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (lines, summary) = json_lines(&out);
    assert!(
        lines
            .iter()
            .all(|l| l["status"] == "published" && l["version"] == 2),
        "{lines:?}"
    );
    assert_eq!(summary["atomic_version"], 2, "{summary}");
    assert_eq!(latest_version(&ex), 2);
    let single = Example::new();
    assert_eq!(
        single
            .wap(&["run", "--conf", CONF, "--date", "2024-01-01"])
            .status
            .code(),
        Some(0)
    );
    write_sources(&single, None);
    single_runs(&single);
    assert_eq!(table_rows(&ex), table_rows(&single));
    assert_eq!(fingerprint(&ex), fingerprint(&single));

    // Again: every date is already in the table; no new version.
    let out = backfill(&ex, &["--atomic", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (lines, _) = json_lines(&out);
    assert!(
        lines.iter().all(|l| l["status"] == "unchanged"),
        "{lines:?}"
    );
    assert_eq!(latest_version(&ex), 2);
}

#[test]
fn a_failing_date_stops_the_backfill_unless_keep_going() {
    let ex = Example::new();
    write_sources(&ex, Some("2024-02-05"));
    std::fs::remove_dir_all(source_file(&ex, "2024-02-12").parent().unwrap()).unwrap();

    // One date at a time: the failure stops it, later dates are skipped, exit 3.
    let out = backfill(&ex, &["--parallel", "1", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let (lines, summary) = json_lines(&out);
    let status = |lines: &[serde_json::Value], d: &str| {
        lines.iter().find(|l| l["date"] == d).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status(&lines, "2024-02-04"), "published");
    assert_eq!(status(&lines, "2024-02-05"), "audit_failed");
    assert_eq!(status(&lines, "2024-02-06"), "skipped");
    assert_eq!(summary["skipped"], 15, "{summary}");
    assert_eq!(summary["published"], 4, "{summary}");

    // --keep-going: every date runs; the worst code (audit, 3) beats the missing source's.
    let out = backfill(&ex, &["--parallel", "2", "--keep-going", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let (lines, summary) = json_lines(&out);
    assert_eq!(summary["failed"], 2, "{summary}");
    assert_eq!(summary["skipped"], 0, "{summary}");
    assert_eq!(status(&lines, "2024-02-20"), "published");
    let missing = lines.iter().find(|l| l["date"] == "2024-02-12").unwrap();
    let missing_code = missing["exit_code"].as_i64().unwrap_or_else(|| {
        panic!("a failed date has its exit code: {missing}");
    });
    assert_eq!(
        missing_code, 1,
        "a source that has not landed is exit 1 (retryable): {missing}"
    );
    assert!(
        missing["error"].as_str().unwrap().contains("2024-02-12"),
        "{missing}"
    );

    // With the audit fixed, the missing source alone sets the exit code.
    write_sources(&ex, None);
    std::fs::remove_dir_all(source_file(&ex, "2024-02-12").parent().unwrap()).unwrap();
    let out = backfill(&ex, &["--keep-going"]);
    assert_eq!(
        out.status.code(),
        Some(missing_code as i32),
        "{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("2024-02-12") && l.contains("error")),
        "{stdout}"
    );
}

#[test]
fn merge_jobs_backfill_one_date_at_a_time() {
    let ex = Example::new();
    let conf = ex.dir.path().join(CONF);
    let text_ = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text_.replace("name: orders", "name: orders\nmode: merge"),
    )
    .unwrap();
    for extra in [&["--parallel", "2"][..], &["--atomic"][..]] {
        let out = backfill(&ex, extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(extra[0]) && stderr.contains("merge job"),
            "{extra:?}: the reason: {stderr}"
        );
    }
    // Without them it runs, in date order (each merge on top of the one before).
    write_sources(&ex, None);
    let out = backfill(&ex, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (lines, summary) = json_lines(&out);
    let order: Vec<&str> = lines.iter().map(|l| l["date"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        dates().iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(summary["published"], 20, "{summary}");
}

/// The example job with `on_publish` set to `argv` (a YAML flow list).
fn set_hook(ex: &Example, argv: &str) {
    let conf = ex.dir.path().join(CONF);
    let text = std::fs::read_to_string(&conf).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("on_publish:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, format!("{kept}on_publish: {argv}\n")).unwrap();
}

/// The lines the hook appended to `conf/hooks.log`.
fn hook_calls(ex: &Example) -> Vec<String> {
    std::fs::read_to_string(ex.dir.path().join("conf/hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Appends the environment it gets and saves its stdin (the run's JSON) per run id; it runs in
/// the job file's folder. `before` runs first (a guard that may fail or crash it).
fn hook(before: &str) -> String {
    format!(
        "[sh, -c, '{before} cat > \"stdin-$WAP_RUN_ID.json\"; echo \"$WAP_RUN_ID $WAP_VERSION $WAP_TABLE $WAP_LOGICAL_DATE $WAP_STATUS\" >> hooks.log']"
    )
}

fn run_json(ex: &Example, date: &str) -> (Option<i32>, serde_json::Value, String) {
    let out = ex.wap(&["run", "--conf", CONF, "--date", date, "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn on_publish_runs_once_per_published_run() {
    let ex = Example::new();
    set_hook(&ex, &hook(""));

    // Published: the hook runs with the run's environment and its JSON on stdin.
    let (code, day1, err) = run_json(&ex, "2024-01-01");
    assert_eq!(code, Some(0), "{err}");
    let run = day1["run_id"].as_str().unwrap().to_string();
    let calls = hook_calls(&ex);
    assert_eq!(calls, vec![format!("{run} 1 orders 2024-01-01 published")]);
    let stdin: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ex.dir.path().join(format!("conf/stdin-{run}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(stdin["run_id"], run.as_str());
    assert_eq!(stdin["status"], "published");
    assert_eq!(day1["on_publish"]["ok"], true, "{day1}");
    let record = ex
        .dir
        .path()
        .join(format!("lake/orders/_wap/runs/{run}/on_publish.json"));
    assert!(record.exists(), "its success is recorded");

    // A re-run finds it published and the hook recorded: the hook does not run again.
    let (code, again, _) = run_json(&ex, "2024-01-01");
    assert_eq!(
        (code, again["status"].as_str()),
        (Some(0), Some("unchanged"))
    );
    assert_eq!(hook_calls(&ex).len(), 1);

    // A failed audit publishes nothing, so no hook.
    let (code, _, _) = run_json(&ex, "2024-01-02");
    assert_eq!(code, Some(3));
    assert_eq!(hook_calls(&ex).len(), 1);

    // A failing hook: the version stays published, exit 1 with the message; the next re-run
    // runs it again, and once it succeeds, never again.
    set_hook(&ex, &hook("test -f ok || exit 7;"));
    let out = ex.wap(&["run", "--conf", CONF, "--date", "2024-01-03"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("published, but on_publish failed"),
        "{stderr}"
    );
    assert_eq!(latest_version(&ex), 2, "the failing hook undid nothing");
    let (code, v, _) = run_json(&ex, "2024-01-03");
    assert_eq!(code, Some(1), "still failing: {v}");
    assert_eq!(v["status"], "unchanged");
    assert_eq!(hook_calls(&ex).len(), 1);
    std::fs::write(ex.dir.path().join("conf/ok"), "").unwrap();
    let (code, v, err) = run_json(&ex, "2024-01-03");
    assert_eq!(code, Some(0), "{err}");
    let calls = hook_calls(&ex);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls[1].starts_with(v["run_id"].as_str().unwrap()),
        "{calls:?}"
    );
    assert!(calls[1].contains(" 2 orders 2024-01-03 "), "{calls:?}");
    assert_eq!(run_json(&ex, "2024-01-03").0, Some(0));
    assert_eq!(hook_calls(&ex).len(), 2);

    // A crash between the commit and the hook's record (the hook kills `wap`): the re-run
    // finds the run published and the hook not recorded, and runs it.
    write_sources(&ex, None);
    set_hook(
        &ex,
        &hook("if [ ! -f crashed ]; then touch crashed; kill -9 $PPID; exit 1; fi;"),
    );
    let out = ex.wap(&["run", "--conf", CONF, "--date", "2024-02-01"]);
    assert_eq!(out.status.code(), None, "killed: {}", text(&out));
    assert_eq!(latest_version(&ex), 3, "the crash came after the commit");
    assert_eq!(hook_calls(&ex).len(), 2);
    let (code, v, err) = run_json(&ex, "2024-02-01");
    assert_eq!(
        (code, v["status"].as_str()),
        (Some(0), Some("unchanged")),
        "{err}"
    );
    let calls = hook_calls(&ex);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls[2].starts_with(v["run_id"].as_str().unwrap()),
        "{calls:?}"
    );
    assert_eq!(run_json(&ex, "2024-02-01").0, Some(0));
    assert_eq!(hook_calls(&ex).len(), 3);

    // A backfill: once per published date, and not again when it is re-run.
    set_hook(&ex, &hook(""));
    let out = backfill(&ex, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, summary) = json_lines(&out);
    let published = summary["published"].as_u64().unwrap() as usize;
    assert!(published >= 15, "{summary}");
    assert_eq!(hook_calls(&ex).len(), 3 + published);
    assert_eq!(backfill(&ex, &[]).status.code(), Some(0));
    assert_eq!(hook_calls(&ex).len(), 3 + published);
    let calls = hook_calls(&ex);
    let mut ids: Vec<&str> = calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), calls.len(), "one call per run id: {calls:?}");
}

/// The fan-out of docs/orchestrators.md: two machines take a date slice each at once (the
/// second slice's first date also writes the first slice's last partition), then one pass over
/// the whole range re-runs only what the order of their publishes left differently.
#[test]
fn date_slices_at_once_then_one_pass_equal_the_single_runs() {
    let (rows, print) = reference();
    let ex = Example::new();
    write_sources(&ex, None);
    let mut slices: Vec<_> = [("2024-02-01", "2024-02-11"), ("2024-02-12", "2024-02-20")]
        .iter()
        .map(|(from, to)| {
            ex.spawn(&[
                "backfill",
                "--conf",
                CONF,
                "--from",
                from,
                "--to",
                to,
                "--parallel",
                "2",
            ])
        })
        .collect();
    for child in &mut slices {
        assert_eq!(wait_with_deadline(child, Duration::from_secs(300)), Some(0));
    }
    let out = backfill(&ex, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (lines, _) = json_lines(&out);
    let rerun: Vec<&str> = lines
        .iter()
        .filter(|l| l["status"] != "unchanged")
        .map(|l| l["date"].as_str().unwrap())
        .collect();
    assert!(
        rerun.iter().all(|d| *d == "2024-02-12"),
        "only the boundary date may need its run again: {rerun:?}"
    );
    assert_eq!(table_rows(&ex), rows);
    assert_eq!(fingerprint(&ex), print);
}
