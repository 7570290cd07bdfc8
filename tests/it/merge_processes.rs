//! Merge runs as real processes: incremental merges killed with SIGKILL at random moments and
//! re-run, checked against a model of the merge; two merges at once on the same partition and
//! on disjoint ones.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cli::Example;
use crate::crash::{Lcg, every_version_reads, run_and_kill, wait_with_deadline};

const WATERMARK: &str = "incremental.updated_at";
const COUNTRIES: [&str; 3] = ["DE", "FR", "US"];
/// The incremental lookback, in minutes (the job file says `1h`).
const LOOKBACK: i64 = 60;

/// A customers job in merge mode reading `data/<folder>/{date}/`, incremental on `updated_at`.
/// `key` is the natural key.
fn customers_job(folder: &str, key: &str) -> String {
    format!(
        "name: customers\n\
         table: ../lake/customers\n\
         mode: merge\n\
         partition_by: [country]\n\
         key: {key}\n\
         source:\n  format: csv\n  path: ../data/{folder}/{{date}}/\n\
         transform: |\n  SELECT customer_id, country, email, status, \
         CAST(updated_at AS TIMESTAMP) AS updated_at, op FROM source \
         WHERE CAST(updated_at AS TIMESTAMP) >= TIMESTAMP '{{watermark}}'\n\
         merge:\n  sequence_by: updated_at\n  control_columns: [op]\n  delete_when: \"op = 'D'\"\n\
         incremental:\n  cursor: updated_at\n  lookback: 1h\n  initial: \"2024-01-01T00:00:00\"\n"
    )
}

fn write_job(ex: &Example, conf: &str, text: &str) {
    std::fs::write(ex.dir.path().join(conf), text).unwrap();
}

/// A timestamp given in minutes after 2024-02-01T00:00:00, as the watermark renders it.
fn ts(minutes: i64) -> String {
    let start = chrono::NaiveDate::from_ymd_opt(2024, 2, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    (start + chrono::Duration::minutes(minutes))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// One batch row.
#[derive(Clone, Debug)]
struct Change {
    id: u64,
    country: &'static str,
    email: String,
    status: &'static str,
    at: i64,
    delete: bool,
}

/// A published row.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    country: &'static str,
    email: String,
    status: &'static str,
    at: i64,
}

/// What the table should hold: its rows and its watermark (minutes), `None` before any publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    rows: BTreeMap<u64, Row>,
    watermark: Option<i64>,
}

impl Model {
    /// The merge semantics the README states: rows before the window are not read; a new key
    /// is inserted (a delete of a missing key does nothing); a published key changes only when
    /// the batch's `updated_at` is greater; the watermark moves to the greatest cursor read.
    fn apply(&self, batch: &[Change]) -> Model {
        let mut next = self.clone();
        let from = self.watermark.map(|w| w - LOOKBACK);
        for c in batch {
            if from.is_some_and(|from| c.at < from) {
                continue;
            }
            let newer = self.rows.get(&c.id).is_none_or(|r| c.at > r.at);
            if newer {
                if c.delete {
                    next.rows.remove(&c.id);
                } else {
                    next.rows.insert(
                        c.id,
                        Row {
                            country: c.country,
                            email: c.email.clone(),
                            status: c.status,
                            at: c.at,
                        },
                    );
                }
            }
            next.watermark = Some(next.watermark.map_or(c.at, |w| w.max(c.at)));
        }
        next
    }

    /// The rows as `wap query` prints them, and the watermark as `wap log` does.
    fn visible(&self) -> (Vec<String>, Option<String>) {
        let rows = self
            .rows
            .iter()
            .map(|(id, r)| format!("{id}|{}|{}|{}|{}", r.country, r.email, r.status, ts(r.at)))
            .collect();
        (rows, self.watermark.map(ts))
    }
}

fn write_batch(ex: &Example, folder: &str, date: &str, batch: &[Change]) {
    let dir = ex.dir.path().join("data").join(folder).join(date);
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("customer_id,country,email,status,updated_at,op\n");
    for c in batch {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            c.id,
            c.country,
            c.email,
            c.status,
            ts(c.at),
            if c.delete { "D" } else { "U" }
        ));
    }
    std::fs::write(dir.join("batch.csv"), csv).unwrap();
}

/// The current version's rows through `wap query` and its watermark through `wap log`.
fn read_state(ex: &Example, conf: &str) -> Result<(Vec<String>, Option<String>), String> {
    let out = ex.wap(&[
        "query",
        "--conf",
        conf,
        "--format",
        "csv",
        "SELECT concat_ws('|', CAST(customer_id AS VARCHAR), country, email, status, \
         to_char(updated_at, '%Y-%m-%dT%H:%M:%S')) AS r FROM customers ORDER BY customer_id",
    ]);
    if out.status.code() != Some(0) {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    let out = ex.wap(&["log", "--conf", conf, "--json"]);
    if out.status.code() != Some(0) {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let watermark = log["versions"][0]["watermarks"][WATERMARK]
        .as_str()
        .map(str::to_string);
    Ok((rows, watermark))
}

/// A random batch for iteration `i` over `model`: 1-8 distinct keys changed after every cursor
/// so far (a quarter of them deletes, countries drawn afresh so keys move partition), sometimes
/// a replay of the row at the watermark (read again by the lookback: stale) and sometimes a row
/// from before the window (not read at all).
fn random_batch(rng: &mut Lcg, i: i64, model: &Model) -> Vec<Change> {
    let mut ids: Vec<u64> = (1..=30).collect();
    for k in (1..ids.len()).rev() {
        ids.swap(k, (rng.next() % (k as u64 + 1)) as usize);
    }
    let n = 1 + (rng.next() % 8) as usize;
    let mut batch: Vec<Change> = ids[..n]
        .iter()
        .enumerate()
        .map(|(j, &id)| Change {
            id,
            country: COUNTRIES[(rng.next() % 3) as usize],
            email: format!("c{id}-i{i}@x"),
            status: ["pending", "processing", "done"][(rng.next() % 3) as usize],
            at: 600 * i + j as i64,
            delete: rng.next().is_multiple_of(4),
        })
        .collect();
    if let Some(w) = model.watermark {
        if rng.next().is_multiple_of(2)
            && let Some((&id, r)) = model.rows.iter().find(|(_, r)| r.at == w)
            && !ids[..n].contains(&id)
        {
            batch.push(Change {
                id,
                country: r.country,
                email: format!("replayed-i{i}@x"),
                status: "pending",
                at: w,
                delete: false,
            });
        }
        if rng.next().is_multiple_of(2) {
            batch.push(Change {
                id: ids[n],
                country: "DE",
                email: format!("too-late-i{i}@x"),
                status: "pending",
                at: w - 2 * LOOKBACK,
                delete: false,
            });
        }
    }
    batch
}

/// Incremental merge runs killed with SIGKILL at random moments: the table is always the old
/// or the new version with the watermark stored beside it, every version reads, and the re-run
/// gives exactly what the model of one clean merge gives.
fn merge_crash_loop(ex: &Example, max_iterations: usize, store: &str) {
    const CONF: &str = "conf/customers.yaml";
    const DATE: &str = "2024-02-01";
    let args = ["run", "--conf", CONF, "--date", DATE];
    let mut rng = Lcg(0xc0ffee);
    let mut model = Model::default();
    // Two clean runs: the shorter one bounds the kill moments.
    let mut clean = Duration::MAX;
    for i in 0..2 {
        let batch = random_batch(&mut rng, i, &model);
        write_batch(ex, "cust", DATE, &batch);
        let started = Instant::now();
        let out = ex.wap(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        clean = clean.min(started.elapsed());
        model = model.apply(&batch);
        assert_eq!(read_state(ex, CONF).unwrap(), model.visible());
    }

    let budget = Duration::from_secs(90);
    let loop_started = Instant::now();
    let (mut iterations, mut killed, mut killed_after_commit) = (0, 0, 0);
    while iterations < max_iterations && loop_started.elapsed() < budget {
        iterations += 1;
        let batch = random_batch(&mut rng, 2 + iterations as i64, &model);
        write_batch(ex, "cust", DATE, &batch);
        let after = model.apply(&batch);
        let (was_killed, delay) = run_and_kill(ex, &args, clean, &mut rng);
        killed += usize::from(was_killed);
        let context = format!("iteration {iterations}: killed after {delay:?}, batch {batch:?}");

        let now = read_state(ex, CONF).unwrap_or_else(|e| panic!("{context}: unreadable: {e}"));
        assert!(
            now == model.visible() || now == after.visible(),
            "{context}: neither the old version nor the new one, with its watermark: {now:?}\n\
             old: {:?}\nnew: {:?}",
            model.visible(),
            after.visible()
        );
        every_version_reads(ex, CONF, "customers", &context);
        if was_killed && now == after.visible() && model != after {
            killed_after_commit += 1;
        }

        let mut rerun = ex.spawn(&args);
        let code = wait_with_deadline(&mut rerun, Duration::from_secs(60));
        assert_eq!(code, Some(0), "{context}: the re-run failed");
        assert_eq!(
            read_state(ex, CONF).unwrap(),
            after.visible(),
            "{context}: the re-run did not converge"
        );
        model = after;
    }
    assert!(
        iterations >= 10,
        "only {iterations} iterations in {budget:?}"
    );
    assert!(
        killed >= iterations / 4,
        "only {killed} of {iterations} runs were killed mid-way"
    );
    println!(
        "merge crash loop on {store}: {iterations} iterations, {killed} runs killed mid-way \
         ({killed_after_commit} after their commit), clean run {clean:?}, {} rows, all converged",
        model.rows.len()
    );
}

#[test]
fn sigkill_during_incremental_merges_then_a_rerun_converges() {
    let ex = Example::new();
    write_job(
        &ex,
        "conf/customers.yaml",
        &customers_job("cust", "[customer_id]"),
    );
    merge_crash_loop(&ex, 30, "local filesystem");
}

#[test]
fn sigkill_during_incremental_merges_on_s3() {
    let s3 = crate::s3::s3();
    let ex = Example::new();
    let conf = ex.dir.path().join("conf/customers.yaml");
    write_job(
        &ex,
        "conf/customers.yaml",
        &customers_job("cust", "[customer_id]"),
    );
    crate::s3::point_at_s3(&conf, &(s3.prefix("merge-crash") + "/customers"), &s3);
    merge_crash_loop(&ex, 12, "S3");
}

/// The outcome of one `wap run --json` process.
struct Outcome {
    code: Option<i32>,
    json: serde_json::Value,
}

fn run_together(ex: &Example, confs: &[&str], date: &str) -> Vec<Outcome> {
    let children: Vec<_> = confs
        .iter()
        .map(|c| ex.spawn(&["run", "--conf", c, "--date", date, "--json"]))
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
                panic!(
                    "not JSON: {}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            Outcome {
                code: out.status.code(),
                json,
            }
        })
        .collect()
}

/// Seeds the customers table through `conf/a.yaml` and writes `conf/b.yaml` beside it: the same
/// table, its batches under `data/b`. Returns the model after the seed.
fn two_writers(ex: &Example) -> Model {
    let key = "[country, customer_id]";
    write_job(ex, "conf/a.yaml", &customers_job("a", key));
    write_job(ex, "conf/b.yaml", &customers_job("b", key));
    let seed: Vec<Change> = (1..=6)
        .map(|id| Change {
            id,
            country: COUNTRIES[(id % 3) as usize],
            email: format!("c{id}@x"),
            status: "pending",
            at: 0,
            delete: false,
        })
        .collect();
    write_batch(ex, "a", "2024-02-01", &seed);
    let out = ex.wap(&["run", "--conf", "conf/a.yaml", "--date", "2024-02-01"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Model::default().apply(&seed)
}

fn update(id: u64, country: &'static str, at: i64, tag: &str) -> Change {
    Change {
        id,
        country,
        email: format!("c{id}-{tag}@x"),
        status: "done",
        at,
        delete: false,
    }
}

/// Two merges into the same partition at once: each version has one publisher; a loser exits 4
/// naming the partition and publishes nothing; its re-run merges onto the winner's version and
/// the table then holds both changes, with the greater watermark. Repeated on fresh tables until
/// the two runs overlapped (a loser seen), since two processes may also run one after the other.
#[test]
fn two_merges_on_the_same_partition_one_wins_the_rerun_holds_both() {
    let date = "2024-02-02";
    let mut conflicts = 0;
    let mut rounds = 0;
    while conflicts == 0 && rounds < 6 {
        rounds += 1;
        let ex = Example::new();
        let seeded = two_writers(&ex);
        // Customers 3 and 6 live in DE (id % 3 == 0).
        let a = vec![update(3, "DE", 60, "a")];
        let b = vec![update(6, "DE", 90, "b")];
        write_batch(&ex, "a", date, &a);
        write_batch(&ex, "b", date, &b);
        let want = seeded.apply(&a).apply(&b);
        let outcomes = run_together(&ex, &["conf/a.yaml", "conf/b.yaml"], date);
        let mut winners = 0;
        for (conf, o) in ["conf/a.yaml", "conf/b.yaml"].iter().zip(&outcomes) {
            match o.code {
                Some(0) => {
                    assert_eq!(o.json["status"], "published", "{conf}: {}", o.json);
                    winners += 1;
                }
                Some(4) => {
                    conflicts += 1;
                    assert_eq!(o.json["status"], "conflict", "{conf}: {}", o.json);
                    let message = o.json["message"].as_str().unwrap();
                    assert!(
                        message.contains("country=DE"),
                        "{conf}: the conflict names the partition: {message}"
                    );
                    // Nothing of the loser is visible, then its re-run lands on the new version.
                    let rerun = ex.wap(&["run", "--conf", conf, "--date", date, "--json"]);
                    assert_eq!(
                        rerun.status.code(),
                        Some(0),
                        "{conf}: the re-run after a conflict: {}",
                        String::from_utf8_lossy(&rerun.stderr)
                    );
                }
                other => panic!("{conf}: exit {other:?}: {}", o.json),
            }
        }
        assert!(winners >= 1, "each version has a publisher");
        assert_eq!(
            read_state(&ex, "conf/a.yaml").unwrap(),
            want.visible(),
            "round {rounds}: the table holds both changes and the greater watermark"
        );
        every_version_reads(&ex, "conf/a.yaml", "customers", "same partition");
    }
    assert!(
        conflicts > 0,
        "in {rounds} rounds the two merges never overlapped"
    );
    println!("two merges on one partition: a conflict in round {rounds}, the re-run held both");
}

/// Two merges into disjoint partitions at once (the partition column is part of the key, so
/// neither reads the other's partition): both publish, the table holds both changes, and the
/// watermark is the greater of the two, whichever landed last.
#[test]
fn two_merges_on_disjoint_partitions_both_publish_with_the_greater_watermark() {
    let date = "2024-02-02";
    for (round, (at_a, at_b)) in [(60, 90), (90, 60), (75, 75)].into_iter().enumerate() {
        let ex = Example::new();
        let seeded = two_writers(&ex);
        // Customer 3 lives in DE, customer 1 in FR.
        let a = vec![update(3, "DE", at_a, "a")];
        let b = vec![update(1, "FR", at_b, "b")];
        write_batch(&ex, "a", date, &a);
        write_batch(&ex, "b", date, &b);
        let want = seeded.apply(&a).apply(&b);
        let outcomes = run_together(&ex, &["conf/a.yaml", "conf/b.yaml"], date);
        for o in &outcomes {
            assert_eq!(o.code, Some(0), "round {round}: {}", o.json);
            assert_eq!(o.json["status"], "published", "round {round}: {}", o.json);
        }
        assert_eq!(
            read_state(&ex, "conf/a.yaml").unwrap(),
            want.visible(),
            "round {round}: both changes, the greater watermark"
        );
        let versions: Vec<u64> = outcomes
            .iter()
            .map(|o| o.json["version"].as_u64().unwrap())
            .collect();
        assert!(
            versions.contains(&2) && versions.contains(&3),
            "round {round}: one version each: {versions:?}"
        );
        every_version_reads(&ex, "conf/a.yaml", "customers", "disjoint partitions");
    }
}
