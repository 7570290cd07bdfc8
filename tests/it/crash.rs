//! Real processes: `wap run` killed with SIGKILL at random moments, then re-run (overwrite runs,
//! and incremental merge runs whose watermark must stay the one of the version the table reads
//! as); publishers as separate processes on different and on the same partitions, with a reader
//! querying in a loop; concurrent merges on the same and on disjoint partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::cli::Example;
use crate::faults::Projected;

const CONF: &str = "conf/orders.yaml";

/// A small deterministic generator (no seed from the clock: a failure reproduces).
pub(crate) struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Writes `ids` as the source of `date` (amount = id / 100, so every version's rows differ).
fn source(ex: &Example, folder: &str, date: &str, ids: &[u64]) {
    let dir = ex.dir.path().join(folder).join(date);
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("order_id,customer_id,amount,status,order_ts\n");
    for (i, id) in ids.iter().enumerate() {
        csv.push_str(&format!(
            "{id},{},{}.{:02},placed,{date}T{:02}:00:00\n",
            id % 97,
            id / 100,
            id % 100,
            i % 24
        ));
    }
    std::fs::write(dir.join("orders.csv"), csv).unwrap();
}

/// The current version's `order_id|order_date` rows through `wap query`, or the failure.
fn table_rows(ex: &Example) -> Result<Vec<String>, String> {
    let out = ex.wap(&[
        "query",
        "--conf",
        CONF,
        "--format",
        "csv",
        "SELECT CAST(order_id AS VARCHAR) || '|' || CAST(order_date AS VARCHAR) AS r FROM orders ORDER BY order_id",
    ]);
    if out.status.code() != Some(0) {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect())
}

fn expected(published: &BTreeMap<String, Vec<u64>>) -> Vec<String> {
    let mut rows: Vec<(u64, String)> = published
        .iter()
        .flat_map(|(date, ids)| ids.iter().map(move |id| (*id, date.clone())))
        .collect();
    rows.sort();
    rows.into_iter()
        .map(|(id, d)| format!("{id}|{d}"))
        .collect()
}

pub(crate) fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("wap did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every version listed by `wap log` of the job `conf` (whose table is `table`) reads completely
/// through `wap query`.
pub(crate) fn every_version_reads(ex: &Example, conf: &str, table: &str, context: &str) {
    let out = ex.wap(&["log", "--conf", conf, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{context}: log failed");
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for v in log["versions"].as_array().unwrap() {
        let version = v["version"].as_u64().unwrap().to_string();
        let out = ex.wap(&[
            "query",
            "--conf",
            conf,
            "--version",
            &version,
            "--format",
            "csv",
            &format!("SELECT count(*) AS n FROM {table}"),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{context}: version {version} does not read: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            n,
            v["rows"].as_u64().unwrap(),
            "{context}: version {version}"
        );
    }
}

/// Starts `wap args` and sends SIGKILL after a random delay drawn from a clean run's wall time:
/// half the kills anywhere in the run, half late in it (audit and publish). Returns whether the
/// process was still running when killed, and the delay.
pub(crate) fn run_and_kill(
    ex: &Example,
    args: &[&str],
    clean: Duration,
    rng: &mut Lcg,
) -> (bool, Duration) {
    let mut child = ex.spawn(args);
    let span = clean.as_micros() as u64;
    let delay = Duration::from_micros(if rng.next().is_multiple_of(2) {
        rng.next() % (span * 5 / 4 + 1)
    } else {
        span * 6 / 10 + rng.next() % (span / 2 + 1)
    });
    std::thread::sleep(delay);
    let was_killed = child.try_wait().unwrap().is_none();
    if was_killed {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    (was_killed, delay)
}

#[test]
fn sigkill_at_random_moments_then_a_rerun_converges() {
    crash_loop(&Example::new(), 40, "local filesystem", Projected::None);
}

/// The crash loop with `formats: [delta]`: after every kill the Delta log names only committed
/// versions, after every re-run it is whole, and at the end the real readers read the last
/// versions as `wap` does.
#[test]
fn sigkill_at_random_moments_with_a_delta_log() {
    let ex = Example::new();
    let uri = ex.dir.path().join("lake/orders").display().to_string();
    delta_crash_loop(&ex, 25, "local filesystem", &uri);
}

#[test]
fn sigkill_at_random_moments_with_a_delta_log_on_s3() {
    let (ex, table) = example_on_s3("crash-delta");
    delta_crash_loop(&ex, 10, "S3", &table);
}

/// The example with its table under a fresh S3 prefix named `name`, and that table's URL.
pub(crate) fn example_on_s3(name: &str) -> (Example, String) {
    let s3 = crate::s3::s3();
    let ex = Example::new();
    let table = s3.prefix(name) + "/orders";
    crate::s3::point_at_s3(&ex.dir.path().join(CONF), &table, &s3);
    (ex, table)
}

/// The crash loop with `formats: [iceberg]`: after every kill no Iceberg metadata names a
/// version `wap` did not commit, after every re-run the metadata is whole and its current
/// snapshot is the current version, and at the end the real readers read the last versions as
/// `wap` does.
#[test]
fn sigkill_at_random_moments_with_iceberg_metadata() {
    let ex = Example::new();
    let uri = ex.dir.path().join("lake/orders").display().to_string();
    iceberg_crash_loop(&ex, 25, "local filesystem", &uri);
}

#[test]
fn sigkill_at_random_moments_with_iceberg_metadata_on_s3() {
    let (ex, table) = example_on_s3("crash-iceberg");
    iceberg_crash_loop(&ex, 10, "S3", &table);
}

fn iceberg_crash_loop(ex: &Example, iterations: usize, store: &str, uri: &str) {
    let conf = ex.dir.path().join(CONF);
    crate::iceberg::enable_iceberg(&conf, "");
    crash_loop(ex, iterations, store, Projected::Iceberg);
    let job = crate::delta::open_job(&conf);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let latest = wap::versions::latest_version(job.store()).await.unwrap();
        let last: Vec<u64> = (latest.saturating_sub(5).max(1)..=latest).collect();
        assert!(crate::iceberg::assert_iceberg_readers_match(&job, uri, &last, None).await > 0);
    });
}

fn delta_crash_loop(ex: &Example, iterations: usize, store: &str, uri: &str) {
    let conf = ex.dir.path().join(CONF);
    crate::delta::enable_delta(&conf);
    crash_loop(ex, iterations, store, Projected::Delta);
    let job = crate::delta::open_job(&conf);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let latest = wap::versions::latest_version(job.store()).await.unwrap();
        let last: Vec<u64> = (latest.saturating_sub(5).max(1)..=latest).collect();
        assert!(crate::delta::assert_readers_match(&job, uri, &last).await > 0);
    });
}

#[test]
fn sigkill_at_random_moments_on_s3() {
    let (ex, _) = example_on_s3("crash");
    crash_loop(&ex, 15, "S3", Projected::None);
}

fn crash_loop(ex: &Example, max_iterations: usize, store: &str, formats: Projected) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let table = || {
        crate::delta::open_job(&ex.dir.path().join(CONF))
            .store()
            .clone()
    };
    let dates = ["2024-01-01", "2024-01-03", "2024-01-05"];
    // A clean run's wall time bounds the random kill moments: the shorter of two, since the
    // first run of a process (cold caches, a cold server) can take many times a later one's,
    // and kill moments drawn from it would then all fall after the runs end.
    let mut published: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut clean = Duration::MAX;
    for (date, ids) in [(dates[0], vec![1, 2, 3]), (dates[1], vec![4, 5])] {
        source(ex, "data/orders", date, &ids);
        let started = Instant::now();
        assert_eq!(
            ex.wap(&["run", "--conf", CONF, "--date", date])
                .status
                .code(),
            Some(0)
        );
        clean = clean.min(started.elapsed());
        published.insert(date.to_string(), ids);
    }

    let mut rng = Lcg(0x5eed);
    let budget = Duration::from_secs(90);
    let loop_started = Instant::now();
    let (mut iterations, mut killed, mut killed_after_commit) = (0, 0, 0);
    while iterations < max_iterations && loop_started.elapsed() < budget {
        iterations += 1;
        let date = dates[(rng.next() % dates.len() as u64) as usize];
        // New input for the date: a different set of orders.
        let base = 1_000 * iterations as u64;
        let ids: Vec<u64> = (0..1 + rng.next() % 20).map(|j| base + j).collect();
        source(ex, "data/orders", date, &ids);
        let before = expected(&published);
        let mut after = published.clone();
        after.insert(date.to_string(), ids);
        let after = expected(&after);

        let (was_killed, delay) = run_and_kill(
            ex,
            &["run", "--conf", CONF, "--date", date],
            clean,
            &mut rng,
        );
        killed += usize::from(was_killed);
        let context = format!("iteration {iterations}: {date} killed after {delay:?}");

        // The table reads as the old version or the new one, whole.
        let now = table_rows(ex).unwrap_or_else(|e| panic!("{context}: unreadable: {e}"));
        assert!(
            now == before || now == after,
            "{context}: neither the old nor the new version: {now:?}"
        );
        every_version_reads(ex, CONF, "orders", &context);
        rt.block_on(formats.never_ahead(&table()));
        if was_killed && now == after && before != after {
            killed_after_commit += 1;
        }

        // The re-run converges to what one clean run gives.
        let mut rerun = ex.spawn(&["run", "--conf", CONF, "--date", date]);
        let code = wait_with_deadline(&mut rerun, Duration::from_secs(60));
        assert_eq!(code, Some(0), "{context}: the re-run failed");
        let now = table_rows(ex).unwrap();
        assert_eq!(now, after, "{context}: the re-run did not converge");
        rt.block_on(formats.whole(&table()));
        published = {
            let mut p = published.clone();
            p.insert(date.to_string(), {
                now.iter()
                    .filter(|r| r.ends_with(date))
                    .map(|r| r.split('|').next().unwrap().parse().unwrap())
                    .collect()
            });
            p
        };
    }
    assert!(
        iterations >= 10,
        "only {iterations} iterations in {budget:?}"
    );
    assert!(
        killed >= iterations / 4,
        "only {killed} of {iterations} runs were killed mid-way"
    );
    let store = match formats {
        Projected::None => store.to_string(),
        Projected::Delta => format!("{store} with a Delta log"),
        Projected::Iceberg => format!("{store} with Iceberg metadata"),
        Projected::Both => format!("{store} with a Delta log and Iceberg metadata"),
    };
    println!(
        "crash loop on {store}: {iterations} iterations, {killed} runs killed mid-way ({killed_after_commit} after their commit), clean run {clean:?}, all converged"
    );
}

/// 8 `wap run` processes on 8 dates from the same base, while a reader queries in a loop: all
/// land, and the reader only ever sees whole versions (each date complete or absent, and dates
/// never disappear).
#[test]
fn eight_processes_on_different_partitions_all_land_while_a_reader_loops() {
    let ex = Example::new();
    let dates: Vec<String> = (1..=8).map(|d| format!("2024-02-{d:02}")).collect();
    let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (i, d) in dates.iter().enumerate() {
        let ids: Vec<u64> = (0..5 + i as u64)
            .map(|j| 100 * (i as u64 + 1) + j)
            .collect();
        source(&ex, "data/orders", d, &ids);
        want.insert(d.clone(), ids);
    }
    let mut children: Vec<Child> = dates
        .iter()
        .map(|d| ex.spawn(&["run", "--conf", CONF, "--date", d]))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut reads = 0;
    loop {
        let mut running = 0;
        for c in children.iter_mut() {
            if c.try_wait().unwrap().is_none() {
                running += 1;
            }
        }
        match table_rows(&ex) {
            Ok(rows) => {
                reads += 1;
                let mut by_date: BTreeMap<String, Vec<u64>> = BTreeMap::new();
                for r in &rows {
                    let (id, d) = r.split_once('|').unwrap();
                    by_date
                        .entry(d.to_string())
                        .or_default()
                        .push(id.parse().unwrap());
                }
                for (d, ids) in &by_date {
                    let mut ids = ids.clone();
                    ids.sort();
                    assert_eq!(&ids, &want[d], "a partial partition {d} was visible");
                }
                let dates_now: BTreeSet<String> = by_date.keys().cloned().collect();
                assert!(
                    seen.is_subset(&dates_now),
                    "dates disappeared: saw {seen:?}, now {dates_now:?}"
                );
                seen = dates_now;
            }
            Err(e) => assert!(
                e.contains("has no published version yet"),
                "the reader failed: {e}"
            ),
        }
        if running == 0 {
            break;
        }
    }
    for c in &mut children {
        assert_eq!(c.wait().unwrap().code(), Some(0));
    }
    assert_eq!(table_rows(&ex).unwrap(), expected(&want));
    let out = ex.wap(&["log", "--conf", CONF, "--json"]);
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        log["versions"].as_array().unwrap().len(),
        8,
        "one version each"
    );
    println!("8 publisher processes, {reads} reads in between, no mix seen");
}

/// 8 processes replace the same partition with different data (8 job files, 8 sources): each
/// version has exactly one publisher, every other process exits 4 naming the partition, and the
/// table holds exactly one process's rows.
#[test]
fn eight_processes_on_the_same_partition_one_wins_each_version() {
    let ex = Example::new();
    let date = "2024-03-01";
    let conf = std::fs::read_to_string(ex.dir.path().join(CONF)).unwrap();
    let mut data: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in 0..8u64 {
        let folder = format!("data/orders{p}");
        let ids: Vec<u64> = (0..3 + p).map(|j| 10_000 * (p + 1) + j).collect();
        source(&ex, &folder, date, &ids);
        let text = conf.replace(
            "path: ../data/orders/{date}/",
            &format!("path: ../{folder}/{{date}}/"),
        );
        assert_ne!(text, conf);
        std::fs::write(ex.dir.path().join(format!("conf/p{p}.yaml")), text).unwrap();
        data.insert(format!("conf/p{p}.yaml"), ids);
    }
    let children: Vec<(String, Child)> = data
        .keys()
        .map(|c| {
            (
                c.clone(),
                ex.spawn(&["run", "--conf", c, "--date", date, "--json"]),
            )
        })
        .collect();
    let mut winners: BTreeMap<u64, String> = BTreeMap::new();
    let mut conflicts = 0;
    for (conf, child) in children {
        let out = child.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{conf}: {}", String::from_utf8_lossy(&out.stderr)));
        match out.status.code() {
            Some(0) => {
                assert_eq!(v["status"], "published", "{conf}: {v}");
                let version = v["version"].as_u64().unwrap();
                assert!(
                    winners.insert(version, conf.clone()).is_none(),
                    "two winners of version {version}"
                );
            }
            Some(4) => {
                conflicts += 1;
                assert_eq!(v["status"], "conflict");
                let message = v["message"].as_str().unwrap();
                assert!(
                    message.contains("order_date=2024-03-01"),
                    "{conf}: the conflict names the partition: {message}"
                );
            }
            other => panic!(
                "{conf}: exit {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    assert_eq!(winners.len() + conflicts, 8);
    assert!(!winners.is_empty());
    let versions: Vec<u64> = winners.keys().copied().collect();
    assert_eq!(versions, (1..=winners.len() as u64).collect::<Vec<_>>());
    // The table holds exactly the last winner's rows.
    let last = &winners[versions.last().unwrap()];
    let mut want = BTreeMap::new();
    want.insert(date.to_string(), data[last].clone());
    assert_eq!(table_rows(&ex).unwrap(), expected(&want));
    every_version_reads(&ex, CONF, "orders", "same partition");
    println!(
        "same partition: {} process(es) published (versions {versions:?}), {conflicts} exited 4",
        winners.len()
    );
}
