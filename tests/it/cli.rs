//! The `wap` binary end to end, as a user runs it, on a copy of the shipped example.

use std::path::Path;
use std::process::{Command, Output};

use crate::fixture::REPO;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

pub(crate) struct Example {
    pub dir: tempfile::TempDir,
}

impl Example {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["conf", "audits", "data"] {
            copy_dir(&Path::new(REPO).join(sub), &dir.path().join(sub));
        }
        Example { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wap"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG");
        c
    }

    pub fn wap(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs with extra environment variables.
    pub fn wap_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.command(args);
        c.envs(env.iter().copied());
        c.output().unwrap()
    }

    /// Starts `wap` without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let out = self.wap(args);
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: stdout is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), value)
    }
}

const CONF: &str = "conf/orders.yaml";

#[test]
fn the_example_job_runs_fails_an_audit_and_keeps_production() {
    let ex = Example::new();
    let (code, day1) = ex.json(&["run", "--conf", CONF, "--date", "2024-01-01", "--json"]);
    assert_eq!(code, 0, "{day1}");
    assert_eq!(day1["status"], "published");
    assert_eq!(day1["version"], 1);
    assert_eq!(day1["rows"], 5);
    assert_eq!(
        day1["partitions"],
        serde_json::json!(["order_date=2024-01-01"])
    );
    assert_eq!(day1["audits"].as_array().unwrap().len(), 7);
    assert!(day1["audits"][0]["name"].is_string() && day1["audits"][0]["failing_rows"].is_u64());
    assert_eq!(day1["run_id"].as_str().unwrap().len(), 24);
    let t = &day1["timings"];
    let phases: u64 = ["plan_ms", "write_ms", "audit_ms", "publish_ms"]
        .iter()
        .map(|k| t[k].as_u64().unwrap_or_else(|| panic!("timings.{k}: {t}")))
        .sum();
    assert!(phases <= t["total_ms"].as_u64().unwrap(), "{t}");

    // Day 2 fails: exit 3, human output on stderr names the rules and shows rows.
    let out = ex.wap(&["run", "--conf", CONF, "--date", "2024-01-02"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit FAILED"), "{stderr}");
    assert!(
        stderr.contains("[FAIL] known_status") && stderr.contains("1 of 5 rows"),
        "{stderr}"
    );
    assert!(
        stderr.contains("| 2003") && stderr.contains("lost"),
        "{stderr}"
    );
    assert!(stderr.contains("[FAIL] one_row_per_order"), "{stderr}");
    assert!(stderr.contains("_wap/runs/"), "{stderr}");

    let (code, day2) = ex.json(&["run", "--conf", CONF, "--date", "2024-01-02", "--json"]);
    assert_eq!(code, 3);
    assert_eq!(day2["status"], "audit_failed");
    assert_eq!(day2["version"], 1);

    let (code, day3) = ex.json(&["run", "--conf", CONF, "--date", "2024-01-03", "--json"]);
    assert_eq!(
        (code, day3["status"].as_str(), day3["version"].as_u64()),
        (0, Some("published"), Some(2))
    );

    let (code, again) = ex.json(&["run", "--conf", CONF, "--date", "2024-01-01", "--json"]);
    assert_eq!(
        (code, again["status"].as_str(), again["version"].as_u64()),
        (0, Some("unchanged"), Some(2))
    );
    assert_eq!(again["run_id"], day1["run_id"]);

    // Query: day 2 never reached readers.
    let out = ex.wap(&[
        "query",
        "--conf",
        CONF,
        "--format",
        "csv",
        "SELECT order_date, count(*) AS n FROM orders GROUP BY order_date ORDER BY order_date",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "order_date,n\n2024-01-01,5\n2024-01-03,4\n"
    );

    let (code, all) = ex.json(&["log", "--conf", CONF, "--json"]);
    assert_eq!(code, 0);
    // Runs, oldest first: published, failed audit (twice, one report), published; day 1's
    // re-run recorded as unchanged.
    let runs: Vec<(String, String)> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["logical_date"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut sorted = runs.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("2024-01-01".to_string(), "published".to_string()),
            ("2024-01-02".to_string(), "audit_failed".to_string()),
            ("2024-01-03".to_string(), "published".to_string()),
        ]
    );
    let day1_run = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == day1["run_id"])
        .unwrap();
    assert_eq!(day1_run["version"], 1);
    assert_eq!(day1_run["last_unchanged"]["version"], 2);
    let text = String::from_utf8_lossy(&ex.wap(&["log", "--conf", CONF]).stdout).to_string();
    assert!(
        text.contains("audit failed, not published")
            && text.contains("published in version 2")
            && text.contains("re-run: unchanged, version 2 already held it"),
        "{text}"
    );
    let log = all["versions"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["version"], 2);
    assert_eq!(log[0]["run_id"], day3["run_id"]);
    assert_eq!(
        log[0]["partitions"],
        serde_json::json!(["order_date=2024-01-03"])
    );
    assert!(log[0]["published_at"].as_str().unwrap().ends_with('Z'));

    let (code, back) = ex.json(&["rollback", "--conf", CONF, "--to", "1", "--json"]);
    assert_eq!(
        (code, back["status"].as_str(), back["version"].as_u64()),
        (0, Some("published"), Some(3))
    );
    let out = ex.wap(&[
        "query",
        "--conf",
        CONF,
        "--format",
        "json",
        "SELECT count(*) AS n FROM orders",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[{\"n\":5}]");
    let out = ex.wap(&[
        "query",
        "--conf",
        CONF,
        "--version",
        "2",
        "SELECT count(*) AS n FROM orders",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("| 9 |"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = ex.wap(&["show", "--conf", CONF, "--version", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("order_date=2024-01-03") && text.contains("part-00000.parquet"),
        "{text}"
    );
    let (_, shown) = ex.json(&["show", "--conf", CONF, "--json"]);
    assert_eq!(shown["version"], 3);
    assert_eq!(shown["change"]["restored_version"], 1);
}

#[test]
fn exit_codes_for_usage_config_and_read_only_queries() {
    let ex = Example::new();
    let code = |args: &[&str]| ex.wap(args).status.code().unwrap();
    assert_eq!(code(&["run", "--conf", CONF, "--date", "yesterday"]), 2);
    assert_eq!(
        code(&["run", "--conf", "conf/nope.yaml", "--date", "2024-01-01"]),
        2
    );
    assert_eq!(code(&["frobnicate"]), 2);
    let out = ex.wap(&["show", "--conf", CONF]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("help: `wap run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(code(&["run", "--conf", CONF, "--date", "2024-01-01"]), 0);
    let out = ex.wap_env(
        &["run", "--conf", CONF, "--date", "2024-01-01"],
        &[("WAP_MEMORY_LIMIT", "lots")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WAP_MEMORY_LIMIT=lots"));
    let out = ex.wap(&["query", "--conf", CONF, "DROP TABLE orders"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a query"));
    let out = ex.wap(&["query", "--conf", CONF, "COPY orders TO '/tmp/x.csv'"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ex.wap(&["query", "--conf", CONF, "SELECT nope FROM orders"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert_eq!(code(&["rollback", "--conf", CONF, "--to", "5"]), 2);
}

#[test]
fn check_compiles_everything_without_writing_and_lists_every_problem() {
    let ex = Example::new();
    let out = ex.wap(&["check", "--conf", CONF]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ok: 7 rule(s) from 1 file(s)") && text.contains("amount Decimal128(18, 2)"),
        "{text}"
    );
    let out = ex.wap(&["check", "--conf", CONF, "--date", "2024-01-02"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!ex.dir.path().join("lake").exists(), "check writes nothing");

    std::fs::write(
        ex.dir.path().join("audits/orders.yaml"),
        "rules:
  - name: typo
    not_null: [ordr_id]
  - name: fine
    unique: [order_id]
  - name: writes
    sql: DELETE FROM staged
  - name: bad_expression
    expression: amount >>> 3
  - name: ranged
    rnage: {column: amount, min: 0}
  - name: typed
    row_count: {min: many}
",
    )
    .unwrap();
    let out = ex.wap(&["check", "--conf", CONF]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Structural problems do not hide the others: every one, each at its line, in one run.
    assert!(err.contains("5 problem(s) found"), "{err}");
    assert!(
        err.contains("audits/orders.yaml:11: rule `ranged`: unknown field `rnage`")
            && err.contains("did you mean `range`?"),
        "{err}"
    );
    assert!(
        err.contains("audits/orders.yaml:13: rule `typed`: row_count.min: invalid type"),
        "{err}"
    );
    assert!(
        err.contains("audits/orders.yaml:2: rule `typo` (not_null)"),
        "{err}"
    );
    assert!(err.contains("help: use a column the transform produces: order_id, customer_id, amount, status, order_date"), "{err}");
    assert!(
        err.contains("audits/orders.yaml:6: rule `writes` (sql)")
            && err.contains("one read-only SELECT"),
        "{err}"
    );
    assert!(
        err.contains("audits/orders.yaml:8: rule `bad_expression` (expression)"),
        "{err}"
    );
    assert!(!err.contains("rule `fine`"), "{err}");
    assert!(!ex.dir.path().join("lake").exists());
}

#[test]
fn reports_samples_history_and_auditing_a_published_version() {
    let ex = Example::new();
    assert_eq!(
        ex.wap(&["run", "--conf", CONF, "--date", "2024-01-01"])
            .status
            .code(),
        Some(0)
    );
    let (code, failed) = ex.json(&["run", "--conf", CONF, "--date", "2024-01-02", "--json"]);
    assert_eq!(code, 3);
    let run_id = failed["run_id"].as_str().unwrap().to_string();

    // Failing samples are kept as Parquet beside the report.
    let samples = ex.dir.path().join(format!(
        "lake/orders/_wap/runs/{run_id}/samples/known_status.parquet"
    ));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&samples).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 1);

    let out = ex.wap(&["report", "--conf", CONF, "--last"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text.contains(&format!("report of run {run_id}")) && text.contains("failed"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  known_status") && text.contains("samples of known_status"),
        "{text}"
    );
    assert!(
        text.contains("2003 | 41 | 18.4 | lost | 2024-01-02"),
        "{text}"
    );

    let out = ex.wap(&[
        "report", "--conf", CONF, "--run", &run_id, "--format", "markdown",
    ]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.starts_with("### Audit of `orders` for 2024-01-02: **failed**"),
        "{md}"
    );
    assert!(
        md.contains("| FAIL | `known_status` | accepted_values | error | 1 |"),
        "{md}"
    );
    assert!(md.contains("**Samples of `known_status`**"), "{md}");
    assert_eq!(
        ex.wap(&["report", "--conf", CONF, "--run", "nope"])
            .status
            .code(),
        Some(2)
    );

    // The audit history is a table.
    let out = ex.wap(&[
        "query", "--conf", CONF, "--format", "csv",
        "SELECT logical_date, count(*) AS rules, sum(CASE WHEN passed THEN 0 ELSE 1 END) AS failed FROM wap_audit_results GROUP BY logical_date ORDER BY logical_date",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "logical_date,rules,failed\n2024-01-01,7,0\n2024-01-02,7,4\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A new rule tried on production data before it gates anything.
    std::fs::write(
        ex.dir.path().join("audits/orders.yaml"),
        "rules:\n  - name: big_orders_only\n    expression: amount > 20\n",
    )
    .unwrap();
    let (code, v) = ex.json(&["audit", "--conf", CONF, "--json"]);
    assert_eq!(code, 3);
    assert_eq!(v["status"], "audit_failed");
    assert_eq!(v["version"], 1);
    assert_eq!(v["audits"][0]["failing_rows"], 3);
    let (code, v) = ex.json(&["audit", "--conf", CONF, "--version", "1", "--json"]);
    assert_eq!(
        (code, v["audits"][0]["failing_rows"].as_u64()),
        (3, Some(3))
    );
    assert_eq!(
        ex.wap(&["log", "--conf", CONF, "--json"]).status.code(),
        Some(0)
    );
    let (_, log) = ex.json(&["log", "--conf", CONF, "--json"]);
    assert_eq!(
        log["versions"].as_array().unwrap().len(),
        1,
        "auditing a version publishes nothing"
    );

    // A `unique` rule on a published version gets the strategies a run gets, not only SQL.
    std::fs::write(
        ex.dir.path().join("audits/orders.yaml"),
        "rules:\n  - name: one_row_per_order\n    unique: [order_id]\n",
    )
    .unwrap();
    let debug = [("RUST_LOG", "wap::audit=debug")];
    for args in [
        &["audit", "--conf", CONF, "--date", "2024-01-01"][..],
        &["audit", "--conf", CONF, "--version", "1"][..],
    ] {
        let out = ex.wap_env(args, &debug);
        // Without the terminal colours the log carries (ESC [ ... m).
        let mut err = String::new();
        let mut escape = false;
        for c in String::from_utf8_lossy(&out.stderr).chars() {
            match (escape, c) {
                (false, '\u{1b}') => escape = true,
                (true, 'm') => escape = false,
                (true, _) => {}
                (false, c) => err.push(c),
            }
        }
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            err.contains("unique rule counted") && err.contains("strategy=Bitmap"),
            "{args:?}: {err}"
        );
    }
}
