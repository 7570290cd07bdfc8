//! The behaviours issue #2 requires of a job run, through the library.

use wap::job::{Mode, Status};

use crate::fixture::{Fixture, query, rows};
use crate::store::RecordingStore;

const DAY1: &[crate::fixture::Order] = &[
    (1003, 17, "42.50", "placed"),
    (1001, 12, "19.99", "shipped"),
    (1002, 17, "5.00", "returned"),
];
const DAY2: &[crate::fixture::Order] =
    &[(2002, 40, "7.00", "placed"), (2001, 12, "33.00", "shipped")];
/// Fails `known_status`, `positive_amount`, `sane_amount` and `one_row_per_order`.
const BAD: &[crate::fixture::Order] = &[
    (3001, 12, "8.75", "placed"),
    (3002, 40, "-5.00", "placed"),
    (3003, 41, "18.40", "lost"),
    (3002, 40, "-5.00", "placed"),
];

#[tokio::test]
async fn same_date_twice_is_unchanged_and_new_input_replaces_only_its_partition() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    f.raw("2024-01-01", "_SUCCESS", "");
    f.raw("2024-01-01", ".orders.csv.crc", "junk");
    let job = f.job();

    let first = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(first.status, Status::Published);
    assert_eq!(first.version, 1);
    assert_eq!(first.rows, 3);
    assert_eq!(first.partitions, ["order_date=2024-01-01"]);
    let second = job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!(second.version, 2);

    let before = f.listing();
    let again = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(again.status, Status::Unchanged);
    assert_eq!(again.version, 2);
    assert_eq!(again.run_id, first.run_id, "same input, same run id");
    let mut after = f.listing();
    let record = format!("_wap/runs/{}/unchanged.json", first.run_id);
    assert!(
        after.remove(&record).is_some(),
        "the re-run is recorded for `wap log`"
    );
    assert_eq!(after, before, "an unchanged re-run writes nothing else");
    assert_eq!(job.log().await.unwrap().len(), 2);

    // New input for day 1: exactly that partition is replaced.
    let v2 = job.show(Some(2)).await.unwrap();
    f.orders(
        "2024-01-01",
        &[(1001, 12, "20.00", "shipped"), (1009, 12, "1.00", "placed")],
    );
    let third = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(third.status, Status::Published);
    assert_eq!(third.version, 3);
    assert_ne!(third.run_id, first.run_id);
    let v3 = job.show(None).await.unwrap();
    assert_eq!(
        v3.partitions["order_date=2024-01-02"],
        v2.partitions["order_date=2024-01-02"]
    );
    assert_ne!(
        v3.partitions["order_date=2024-01-01"],
        v2.partitions["order_date=2024-01-01"]
    );
    assert_eq!(v3.change.partitions, ["order_date=2024-01-01"]);
    assert_eq!(
        rows(&job, None).await,
        [
            "1001|20.00|shipped|2024-01-01",
            "1009|1.00|placed|2024-01-01",
            "2001|33.00|shipped|2024-01-02",
            "2002|7.00|placed|2024-01-02",
        ]
    );
    assert_eq!(v3.watermarks["max_logical_date"], "2024-01-02");
}

#[tokio::test]
async fn staged_files_are_sorted_by_key_and_byte_identical_on_rerun() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    let job = f.job();
    let out = job.run("2024-01-01", Mode::AuditOnly).await.unwrap();
    assert_eq!(out.status, Status::AuditPassed);
    let file = f.table_dir().join(format!(
        "staging/{}/order_date=2024-01-01/part-00000.parquet",
        out.run_id
    ));
    let bytes = std::fs::read(&file).unwrap();
    // Rows inside the file are in key order.
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes.clone()),
    )
    .unwrap()
    .build()
    .unwrap();
    let ids: Vec<String> = reader
        .flat_map(|b| {
            let b = b.unwrap();
            (0..b.num_rows())
                .map(|i| arrow::util::display::array_value_to_string(b.column(0), i).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids, ["1001", "1002", "1003"]);
    // A second audit of the same input writes the very same bytes.
    std::fs::remove_file(&file).unwrap();
    let again = job.run("2024-01-01", Mode::AuditOnly).await.unwrap();
    assert_eq!(again.run_id, out.run_id);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // `audit` never publishes.
    assert!(job.log().await.unwrap().is_empty());
}

#[tokio::test]
async fn audit_failure_leaves_production_exactly_as_it_was() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-03", BAD);
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    let before_rows = rows(&job, None).await;
    let before_manifest = job.show(None).await.unwrap();
    let before_files = f.listing();

    let out = job.run("2024-01-03", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::AuditFailed);
    assert_eq!(out.status.exit_code(), 3);
    assert_eq!(out.version, 1);
    let report = out.audit_report.as_ref().unwrap();
    let failed: Vec<(&str, u64)> = report
        .rules
        .iter()
        .filter(|r| !r.passed)
        .map(|r| (r.name.as_str(), r.failing_rows))
        .collect();
    assert_eq!(
        failed,
        [
            ("one_row_per_order", 2),
            ("known_status", 1),
            ("sane_amount", 2),
            ("positive_amount", 2)
        ]
    );
    let status_rule = report
        .rules
        .iter()
        .find(|r| r.name == "known_status")
        .unwrap();
    assert_eq!(status_rule.samples.len(), 1);
    assert_eq!(status_rule.samples[0]["status"], "lost");
    assert_eq!(status_rule.samples[0]["order_id"], 3003);
    assert!(status_rule.sample_table.contains("lost"));
    let dup = report
        .rules
        .iter()
        .find(|r| r.name == "one_row_per_order")
        .unwrap();
    assert_eq!(dup.samples[0]["duplicate_rows"], 2);

    // The full report is stored.
    let stored = f
        .table_dir()
        .join(format!("_wap/runs/{}/report.json", out.run_id));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored).unwrap()).unwrap();
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["rules"].as_array().unwrap().len(), 7);

    // Production: same version, same files, same rows.
    assert_eq!(job.show(None).await.unwrap(), before_manifest);
    assert_eq!(rows(&job, None).await, before_rows);
    let after_files = f.listing();
    for (k, v) in &before_files {
        assert_eq!(after_files.get(k), Some(v), "{k} changed");
    }
    for k in after_files
        .keys()
        .filter(|k| !before_files.contains_key(*k))
    {
        assert!(
            k.contains(&out.run_id),
            "the failed run wrote {k} outside its own folders"
        );
    }
    assert_eq!(job.log().await.unwrap().len(), 1);
}

#[tokio::test]
async fn warn_rules_report_but_do_not_block() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    std::fs::write(
        f.dir.path().join("audits/orders.yaml"),
        "rules:\n  - name: big_orders\n    severity: warn\n    expression: amount < 40\n",
    )
    .unwrap();
    let out = f.job().run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::Published);
    let a = &out.audits[0];
    assert_eq!(
        (
            a.name.as_str(),
            a.passed,
            a.failing_rows,
            a.severity.as_str()
        ),
        ("big_orders", false, 1, "warn")
    );
}

#[tokio::test]
async fn query_never_sees_unpublished_staging_and_reads_old_versions() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    f.orders("2024-01-03", BAD);
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    job.run("2024-01-02", Mode::AuditOnly).await.unwrap();
    job.run("2024-01-03", Mode::Publish).await.unwrap();
    let staged_runs = std::fs::read_dir(f.table_dir().join("staging"))
        .unwrap()
        .count();
    assert_eq!(staged_runs, 3, "three runs staged data");
    assert_eq!(rows(&job, None).await.len(), 3, "only version 1 is visible");

    job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!(rows(&job, None).await.len(), 5);
    assert_eq!(rows(&job, Some(1)).await.len(), 3);
    let counts = query(
        &job,
        Some(1),
        "SELECT count(*) AS n, min(order_date) AS d FROM orders",
    )
    .await;
    assert!(counts.contains("| 3 | 2024-01-01 |"), "{counts}");
    let err = job.query(Some(9), "SELECT 1").await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(
        err.to_string().contains("version 9 does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn rollback_restores_the_rows_of_an_older_version() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    let v1_rows = rows(&job, None).await;
    job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_ne!(rows(&job, None).await, v1_rows);

    let back = job.rollback(1).await.unwrap();
    assert_eq!(back.status, Status::Published);
    assert_eq!(back.version, 3);
    assert_eq!(rows(&job, None).await, v1_rows);
    let v3 = job.show(None).await.unwrap();
    assert_eq!(v3.change.restored_version, Some(1));
    assert_eq!(v3.partitions, job.show(Some(1)).await.unwrap().partitions);
    assert_eq!(v3.watermarks["max_logical_date"], "2024-01-01");
    // History is kept and the pointer only moves forward.
    assert_eq!(rows(&job, Some(2)).await.len(), 5);
    // Rolling back again to the same content publishes nothing.
    let again = job.rollback(1).await.unwrap();
    assert_eq!(again.status, Status::Unchanged);
    assert_eq!(again.version, 3);
    let err = job.rollback(7).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    // Re-running day 2 after the rollback publishes it again.
    let out = job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!((out.status, out.version), (Status::Published, 4));
    assert_eq!(rows(&job, None).await.len(), 5);
}

#[tokio::test]
async fn bad_inputs_give_clear_errors_and_change_nothing() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    let before = f.listing();

    // A date that is not a date.
    let err = job.run("2024-13-01", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("not a date"), "{err}");
    let err = job.run("2024-1-2", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);

    // A missing source path.
    let err = job.run("2024-02-01", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let msg = err.to_string();
    assert!(msg.contains("help: check source.path"), "{msg}");
    assert!(
        msg.contains("data/orders/2024-02-01/") && msg.contains("matched no objects"),
        "{msg}"
    );

    // A CSV with a malformed row.
    f.raw(
        "2024-01-04",
        "orders.csv",
        "order_id,customer_id,amount,status,order_ts\n1,2,3.00,placed,2024-01-04T00:00:00\n2,3,4.00,placed,2024-01-04T00:00:00,extra\n",
    );
    let err = job.run("2024-01-04", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("2024-01-04") && msg.to_lowercase().contains("csv"),
        "{msg}"
    );

    // A source whose columns do not match the transform.
    f.raw(
        "2024-01-05",
        "orders.csv",
        "order_id,customer_id,total,status,order_ts\n1,2,3.00,placed,2024-01-05T00:00:00\n",
    );
    let err = job.run("2024-01-05", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("orders.yaml") && msg.contains("amount"),
        "{msg}"
    );

    assert_eq!(f.listing(), before, "a failed run must not touch the table");
    assert_eq!(rows(&job, None).await.len(), 3);

    // A conf pointing at a missing audit file.
    f.edit_conf("../audits/orders.yaml", "../audits/missing.yaml");
    let err = wap::conf::JobConf::load(&f.conf).unwrap_err();
    let err = wap::Error::from(err);
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("orders.yaml:14:") && msg.contains("missing.yaml"),
        "{msg}"
    );
}

#[tokio::test]
async fn rules_that_do_not_compile_are_config_errors_before_any_write() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    std::fs::write(
        f.dir.path().join("audits/orders.yaml"),
        "rules:\n  - name: typo\n    not_null: [ordr_id]\n  - name: bad_sql\n    sql: SELEC * FROM staged\n  - name: writes\n    sql: DROP TABLE staged\n  - name: sneaky\n    expression: amount > 0) OR (1=1\n  - name: fine\n    unique: [order_id]\n",
    )
    .unwrap();
    let err = f.job().run("2024-01-01", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("audits/orders.yaml:2: rule `typo` (not_null)") && msg.contains("ordr_id"),
        "{msg}"
    );
    assert!(
        msg.contains("audits/orders.yaml:4: rule `bad_sql` (sql)"),
        "{msg}"
    );
    assert!(
        msg.contains("audits/orders.yaml:6: rule `writes` (sql)") && msg.contains("not a query"),
        "{msg}"
    );
    assert!(msg.contains("rule `sneaky`"), "{msg}");
    assert!(!msg.contains("rule `fine`"), "{msg}");
    assert!(
        !f.table_dir().join("staging").exists(),
        "nothing may be written"
    );
}

#[tokio::test]
async fn transform_may_not_read_the_clock() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.edit_conf("FROM source", "FROM source WHERE order_ts < now()");
    let err = f.job().run("2024-01-01", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("now()"), "{err}");

    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.edit_conf(
        "FROM source",
        "FROM source WHERE CAST(order_ts AS DATE) = DATE '{date}'",
    );
    let out = f.job().run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.rows, 3);
}

#[tokio::test]
async fn hostile_partition_values_stay_inside_the_table() {
    let f = Fixture::new();
    f.edit_conf("partition_by: [order_date]", "partition_by: [status]");
    f.orders(
        "2024-01-01",
        &[
            (1, 1, "1.00", "../../escape"),
            (2, 1, "1.00", "a/b"),
            (3, 1, "1.00", "x=y%20z"),
            (4, 1, "1.00", ".."),
            (5, 1, "1.00", "ünï côdé"),
            (6, 1, "1.00", "EMPTY"),
            (7, 1, "1.00", ""),
            (8, 1, "1.00", "%2F"),
            (9, 1, "1.00", " lead and trail "),
        ],
    );
    // The empty CSV field reads as NULL; the transform makes "EMPTY" an empty string.
    f.edit_conf(
        "CAST(amount AS DECIMAL(18,2)) AS amount, status,",
        "CAST(amount AS DECIMAL(18,2)) AS amount, CASE WHEN status = 'EMPTY' THEN '' ELSE status END AS status,",
    );
    std::fs::write(f.dir.path().join("audits/orders.yaml"), "rules: []\n").unwrap();
    let job = f.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.partitions.len(), 9, "{:?}", out.partitions);
    for p in &out.partitions {
        let value = p.strip_prefix("status=").unwrap();
        assert!(!value.contains('/') && value != ".." && value != ".", "{p}");
    }
    // Nothing was written outside the table folder.
    let outside: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut outside: Vec<String> = outside
        .into_iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(outside, ["audits", "conf", "data", "lake"]);
    // Every value round-trips exactly, the empty string and NULL apart.
    let got = rows_of(
        &job,
        "SELECT COALESCE('[' || status || ']', 'NULL') FROM orders ORDER BY order_id",
    )
    .await;
    assert_eq!(
        got,
        [
            "[../../escape]",
            "[a/b]",
            "[x=y%20z]",
            "[..]",
            "[ünï côdé]",
            "[]",
            "NULL",
            "[%2F]",
            "[ lead and trail ]",
        ]
    );
    // And a filter on the partition column finds each one.
    for v in ["../../escape", "a/b", "%2F", ""] {
        let n = rows_of(
            &job,
            &format!("SELECT count(*) FROM orders WHERE status = '{v}'"),
        )
        .await;
        assert_eq!(n, ["1"], "{v}");
    }
}

async fn rows_of(job: &wap::job::Job, sql: &str) -> Vec<String> {
    let batches = job.query(None, sql).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            out.push(arrow::util::display::array_value_to_string(b.column(0), i).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_partition_was_replaced_meanwhile_conflicts_and_changes_nothing() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.job().run("2024-01-01", Mode::Publish).await.unwrap();

    // Run A stages new day-1 data and is held just before committing its manifest.
    f.orders("2024-01-01", &[(1001, 12, "1.00", "placed")]);
    let rec = RecordingStore::new(f.table_store());
    let pause = rec.pause_next("put", "_wap/manifests/");
    let job_a = f.job_on(rec.clone());
    let a = tokio::spawn(async move { job_a.run("2024-01-01", Mode::Publish).await });
    pause.reached.notified().await;

    // Meanwhile run B publishes other day-1 data.
    f.orders(
        "2024-01-01",
        &[(1002, 17, "2.00", "shipped"), (1003, 17, "3.00", "shipped")],
    );
    let b = f.job().run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!((b.status, b.version), (Status::Published, 2));

    pause.proceed.notify_one();
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status, Status::Conflict);
    assert_eq!(a.status.exit_code(), 4);
    let msg = a.message.unwrap();
    assert!(
        msg.contains("order_date=2024-01-01") && msg.contains(&b.run_id),
        "{msg}"
    );
    let job = f.job();
    assert_eq!(job.log().await.unwrap().len(), 2);
    assert_eq!(
        rows(&job, None).await,
        [
            "1002|2.00|shipped|2024-01-01",
            "1003|3.00|shipped|2024-01-01"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_different_dates_published_meanwhile_both_land() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    let rec = RecordingStore::new(f.table_store());
    let pause = rec.pause_next("put", "_wap/manifests/");
    let job_a = f.job_on(rec.clone());
    let a = tokio::spawn(async move { job_a.run("2024-01-01", Mode::Publish).await });
    pause.reached.notified().await;
    let b = f.job().run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!(b.version, 1);
    pause.proceed.notify_one();
    let a = a.await.unwrap().unwrap();
    assert_eq!(
        (a.status, a.version),
        (Status::Published, 2),
        "A rebased onto B"
    );
    assert_eq!(rows(&f.job(), None).await.len(), 5);
}

#[tokio::test]
async fn a_whole_run_costs_few_requests_and_publish_a_constant_four() {
    let f = Fixture::new();
    let many: Vec<(i64, i64, String, &str)> = (0..300)
        .map(|i| (i, i % 7, format!("{}.00", i + 1), "placed"))
        .collect();
    let many: Vec<crate::fixture::Order> = many
        .iter()
        .map(|(a, b, c, d)| (*a, *b, c.as_str(), *d))
        .collect();
    f.orders("2024-01-01", &many);
    // Partition by customer: 7 partitions, one file each.
    f.edit_conf("partition_by: [order_date]", "partition_by: [customer_id]");
    let rec = RecordingStore::new(f.table_store());
    let job = f.job_on(rec.clone());
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.partitions.len(), 7);
    let reqs = rec.requests();
    let control: Vec<String> = reqs
        .iter()
        .filter(|r| r.path.starts_with("_wap/manifests") || r.path == "_wap/current")
        .map(|r| format!("{} {}", r.op, r.path))
        .collect();
    // Reading the (empty) current version, then publish: read pointer, create, swap.
    assert_eq!(
        control,
        [
            "get _wap/current",
            "head _wap/manifests/00000000000000000001.json",
            "get _wap/current",
            "put _wap/manifests/00000000000000000001.json",
            "put _wap/current",
        ]
    );
    let puts: Vec<&str> = reqs
        .iter()
        .filter(|r| r.op == "put" && r.path.starts_with("staging/"))
        .map(|r| r.path.as_str())
        .collect();
    let (segments, files): (Vec<&str>, Vec<&str>) =
        puts.iter().partition(|p| p.contains("/_wap-files-"));
    assert_eq!(files.len(), 7, "one upload per staged file");
    assert_eq!(segments.len(), 1, "one segment for the run's file lists");
    // A re-run: no data read, no write but its record for `wap log`.
    rec.clear();
    let again = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(again.status, Status::Unchanged);
    let ops: Vec<String> = rec
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.op, r.path))
        .collect();
    let record = format!("put _wap/runs/{}/unchanged.json", out.run_id);
    assert!(
        ops.iter()
            .all(|o| (!o.starts_with("put") || *o == record) && !o.contains("staging/")),
        "{ops:?}"
    );
    assert_eq!(
        ops.len(),
        5,
        "pointer, probe, manifest, report, unchanged record: {ops:?}"
    );
}

#[tokio::test]
async fn a_failed_upload_is_the_error_reported_not_the_other_writers_stopping() {
    let f = Fixture::new();
    let many: Vec<crate::fixture::Order> = (0..400)
        .map(|i| (5000 + i as i64, (i % 8) as i64, "1.00", "placed"))
        .collect();
    f.orders("2024-01-01", &many);
    f.edit_conf("partition_by: [order_date]", "partition_by: [customer_id]");
    let rec = RecordingStore::new(f.table_store());
    rec.fail_next("put", "customer_id=5/", crate::store::FaultKind::Before);
    let err = f
        .job_on(rec.clone())
        .run("2024-01-01", Mode::Publish)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("customer_id=5/part-00000.parquet"), "{err}");
    assert!(!err.contains("partition sort stopped"), "{err}");
}

#[tokio::test]
async fn json_and_parquet_sources_and_globs() {
    // NDJSON source, matched by a glob.
    let f = Fixture::new();
    f.edit_conf("format: csv", "format: json");
    f.edit_conf(
        "path: ../data/orders/{date}/",
        "path: ../data/orders/{date}/part-*.json",
    );
    f.edit_conf("  options: {has_header: true, delimiter: \",\"}\n", "");
    f.raw(
        "2024-01-01",
        "part-1.json",
        "{\"order_id\": 2, \"customer_id\": 1, \"amount\": 2.5, \"status\": \"placed\", \"order_ts\": \"2024-01-01T10:00:00\"}\n",
    );
    f.raw(
        "2024-01-01",
        "part-2.json",
        "{\"order_id\": 1, \"customer_id\": 1, \"amount\": 1.5, \"status\": \"shipped\", \"order_ts\": \"2024-01-01T11:00:00\"}\n",
    );
    f.raw("2024-01-01", "ignored.json", "not json at all\n");
    f.raw("2024-01-01", "_temporary/part-3.json", "not json at all\n");
    let job = f.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.rows, 2);
    assert_eq!(
        rows(&job, None).await,
        ["1|1.50|shipped|2024-01-01", "2|2.50|placed|2024-01-01"]
    );

    // A Parquet source: the file just published by the JSON job.
    let g = Fixture::new();
    let published = job.show_files(None).await.unwrap();
    let file = &published.partitions["order_date=2024-01-01"].files[0];
    let dir = g.dir.path().join("data/orders/2024-01-01");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(f.table_dir().join(&file.path), dir.join("orders.parquet")).unwrap();
    g.edit_conf("format: csv", "format: parquet");
    g.edit_conf("  options: {has_header: true, delimiter: \",\"}\n", "");
    g.edit_conf("CAST(order_ts AS DATE) AS order_date", "order_date");
    let job = g.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.rows, 2);
    assert_eq!(
        rows(&job, None).await,
        ["1|1.50|shipped|2024-01-01", "2|2.50|placed|2024-01-01"]
    );
}

/// Writes `batch` as one Parquet file with arrow-rs's defaults (its Arrow schema embedded).
fn write_parquet(path: &std::path::Path, batch: &arrow::record_batch::RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[tokio::test]
async fn parquet_sources_with_string_views_and_differing_columns() {
    use arrow::array::{ArrayRef, Int64Array, StringArray, StringViewArray};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    let f = Fixture::new();
    f.edit_conf("format: csv", "format: parquet");
    f.edit_conf("  options: {has_header: true, delimiter: \",\"}\n", "");
    let dir = f.dir.path().join("data/orders/2024-01-01");
    // File 1 declares string views (as files written by DataFusion or polars do).
    let views = |v: &[&str]| Arc::new(StringViewArray::from(v.to_vec())) as ArrayRef;
    let a = RecordBatch::try_from_iter([
        (
            "order_id",
            Arc::new(Int64Array::from(vec![2, 1])) as ArrayRef,
        ),
        (
            "customer_id",
            Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef,
        ),
        ("amount", views(&["2.50", "1.50"])),
        ("status", views(&["placed", "shipped"])),
        (
            "order_ts",
            views(&["2024-01-01T10:00:00", "2024-01-01T11:00:00"]),
        ),
    ])
    .unwrap();
    write_parquet(&dir.join("a.parquet"), &a);
    // File 2: plain strings, its columns in another order, and one more (NULL in file 1).
    let plain = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
    let b = RecordBatch::try_from_iter([
        ("status", plain(&["returned"])),
        ("note", plain(&["late"])),
        ("order_ts", plain(&["2024-01-01T12:00:00"])),
        ("amount", plain(&["3.25"])),
        ("order_id", Arc::new(Int64Array::from(vec![3])) as ArrayRef),
        (
            "customer_id",
            Arc::new(Int64Array::from(vec![9])) as ArrayRef,
        ),
    ])
    .unwrap();
    write_parquet(&dir.join("b.parquet"), &b);
    f.edit_conf("customer_id,", "customer_id, note,");

    let job = f.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!((out.status, out.rows), (Status::Published, 3));
    let got = query(
        &job,
        None,
        "SELECT order_id, customer_id, note, amount, status, order_date FROM orders ORDER BY order_id",
    )
    .await;
    for line in [
        "| 1        | 8           |      | 1.50   | shipped  | 2024-01-01 |",
        "| 2        | 7           |      | 2.50   | placed   | 2024-01-01 |",
        "| 3        | 9           | late | 3.25   | returned | 2024-01-01 |",
    ] {
        assert!(got.contains(line), "missing {line} in\n{got}");
    }
}

#[tokio::test]
async fn near_unique_columns_lose_their_dictionary_and_the_sorted_key_is_delta_encoded() {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let f = Fixture::new();
    let statuses = ["placed", "shipped", "returned"];
    let amounts: Vec<String> = (1..=3000)
        .map(|i| format!("{}.{:02}", i, i % 100))
        .collect();
    let orders: Vec<crate::fixture::Order> = (0..3000)
        .map(|i| {
            (
                10_000 + i as i64,
                (i % 40) as i64,
                amounts[i].as_str(),
                statuses[i % 3],
            )
        })
        .collect();
    f.orders("2024-01-01", &orders);
    let job = f.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!((out.status, out.rows), (Status::Published, 3000));

    let manifest = job.show_files(None).await.unwrap();
    let file = &manifest.partitions["order_date=2024-01-01"].files[0];
    let bytes = std::fs::read(f.table_dir().join(&file.path)).unwrap();
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
    let group = reader.metadata().row_group(0);
    let dictionary: Vec<(String, bool)> = group
        .columns()
        .iter()
        .map(|c| {
            (
                c.column_path().string(),
                c.dictionary_page_offset().is_some(),
            )
        })
        .collect();
    assert_eq!(
        dictionary,
        [
            ("order_id".to_string(), false),
            ("customer_id".to_string(), true),
            ("amount".to_string(), false),
            ("status".to_string(), true),
            ("order_date".to_string(), true),
        ]
    );
    // The key, sorted in every file, is delta-encoded.
    let encodings = group.column(0).encodings().collect::<Vec<_>>();
    assert!(
        encodings.contains(&parquet::basic::Encoding::DELTA_BINARY_PACKED),
        "{encodings:?}"
    );
    // The choice is a function of the rows: the same input (in another folder, so another run
    // id) gives the same bytes.
    let g = Fixture::new();
    g.orders("2024-01-01", &orders);
    let job = g.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    let again = &job.show_files(None).await.unwrap().partitions["order_date=2024-01-01"].files[0];
    assert_eq!(again.sha256, file.sha256);
}

#[tokio::test]
async fn a_memory_table_and_rules_over_published() {
    let f = Fixture::new();
    f.edit_conf("table: ../lake/orders", "table: memory://job-tests/orders");
    std::fs::write(
        f.dir.path().join("audits/orders.yaml"),
        "rules:\n  - name: no_order_twice_across_days\n    sql: >\n      SELECT s.order_id FROM staged s JOIN published p\n      ON s.order_id = p.order_id AND s.order_date <> p.order_date\n",
    )
    .unwrap();
    f.orders("2024-01-01", DAY1);
    f.orders(
        "2024-01-02",
        &[(1001, 12, "1.00", "placed"), (2001, 12, "1.00", "placed")],
    );
    let job = f.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::Published);
    let out = job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::AuditFailed);
    let rule = &out.audit_report.as_ref().unwrap().rules[0];
    assert_eq!(rule.failing_rows, 1);
    assert_eq!(rule.samples[0]["order_id"], 1001);
    assert!(
        !f.table_dir().exists(),
        "a memory table writes nothing to disk"
    );
    assert_eq!(rows(&job, None).await.len(), 3);
}

#[tokio::test]
async fn adding_a_column_keeps_older_partitions_readable() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    f.edit_conf("status,\n", "status, upper(status) AS status_code,\n");
    let job = f.job();
    let out = job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!((out.status, out.version), (Status::Published, 2));
    let got = query(
        &job,
        None,
        "SELECT order_id, status_code FROM orders ORDER BY order_id",
    )
    .await;
    assert!(got.contains("| 1001     |             |"), "{got}");
    assert!(got.contains("| 2001     | SHIPPED     |"), "{got}");

    // Dropping it again would leave day 2 unreadable: refused, nothing published.
    f.edit_conf(
        "status, upper(status) AS status_code,\n",
        "status, -- status_code dropped\n",
    );
    let job = f.job();
    let err = job.run("2024-01-01", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(
        err.to_string().contains("`status_code` would be dropped"),
        "{err}"
    );
    assert_eq!(job.log().await.unwrap().len(), 2);
}

#[tokio::test]
async fn audit_sql_cannot_write_or_read_local_files() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    let target = f.dir.path().join("leak.csv");
    let target = target.display();
    let rules = format!(
        r#"rules:
  - {{name: drop, sql: DROP TABLE staged}}
  - {{name: ctas, sql: CREATE TABLE x AS SELECT * FROM staged}}
  - {{name: external, sql: "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'"}}
  - {{name: insert, sql: "INSERT INTO staged SELECT * FROM staged"}}
  - {{name: delete, sql: "DELETE FROM staged"}}
  - {{name: copy, sql: "COPY staged TO '{target}'"}}
  - {{name: two, sql: "SELECT * FROM staged; DROP TABLE staged"}}
  - {{name: set, sql: "SET datafusion.execution.batch_size = 1"}}
  - {{name: file, sql: "SELECT * FROM '/etc/passwd'"}}
  - {{name: file_in_expression, expression: "order_id > (SELECT count(*) FROM '/etc/hostname')"}}
  - {{name: fine, sql: SELECT * FROM staged WHERE order_id < 0}}
"#
    );
    std::fs::write(f.dir.path().join("audits/orders.yaml"), rules).unwrap();
    let err = f.job().check(None).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let msg = err.to_string();
    for (line, name) in [
        (2, "drop"),
        (3, "ctas"),
        (4, "external"),
        (5, "insert"),
        (6, "delete"),
        (7, "copy"),
        (8, "two"),
        (9, "set"),
    ] {
        let at = format!("audits/orders.yaml:{line}: rule `{name}` (sql)");
        let found = msg.lines().find(|l| l.contains(&at));
        assert!(
            found.is_some_and(|l| l.contains("not a query") || l.contains("one statement")),
            "{name}: {msg}"
        );
    }
    for name in ["file", "file_in_expression"] {
        let found = msg.lines().find(|l| l.contains(&format!("rule `{name}`")));
        assert!(
            found.is_some_and(|l| l.contains("not found")),
            "{name} must not read a local file: {msg}"
        );
    }
    assert!(!msg.contains("rule `fine`"), "{msg}");
    assert!(!f.dir.path().join("leak.csv").exists(), "COPY wrote a file");
    // And a run refuses the same rules before writing anything.
    let err = f.job().run("2024-01-01", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(!f.table_dir().join("staging").exists());
}

#[tokio::test]
async fn a_corrupt_manifest_or_pointer_is_reported_not_read() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    let manifest = f
        .table_dir()
        .join("_wap/manifests/00000000000000000001.json");
    let pointer = f.table_dir().join("_wap/current");
    let good_manifest = std::fs::read_to_string(&manifest).unwrap();
    let good_pointer = std::fs::read_to_string(&pointer).unwrap();
    let before = f.listing();

    let cases: Vec<(&str, std::path::PathBuf, String, &str)> = vec![
        (
            "edited manifest",
            manifest.clone(),
            good_manifest.replacen("\"rows\":3", "\"rows\":4", 1),
            "checksum",
        ),
        (
            "truncated manifest",
            manifest.clone(),
            good_manifest[..good_manifest.len() / 2].to_string(),
            "EOF while parsing",
        ),
        (
            "truncated pointer",
            pointer.clone(),
            good_pointer[..good_pointer.len() / 2].to_string(),
            "EOF while parsing",
        ),
        (
            "edited pointer",
            pointer.clone(),
            good_pointer.replacen("\"version\":1", "\"version\":7", 1),
            "does not match manifest",
        ),
    ];
    for (what, path, bad, detail) in cases {
        assert_ne!(bad, std::fs::read_to_string(&path).unwrap(), "{what}");
        std::fs::write(&path, &bad).unwrap();
        let object = path
            .strip_prefix(f.table_dir())
            .unwrap()
            .display()
            .to_string();
        // Reading and running both refuse, naming the object and what is wrong.
        let err = job.query(None, "SELECT * FROM orders").await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&object), "{what}: {msg}");
        assert!(msg.contains(detail), "{what}: {msg}");
        assert_eq!(err.exit_code(), wap::exit_code::FAILURE, "{what}");
        let err = job.run("2024-01-02", Mode::Publish).await.unwrap_err();
        assert!(err.to_string().contains(&object), "{what}: {err}");
        // Nothing was published on top of it.
        assert!(
            !f.table_dir()
                .join("_wap/manifests/00000000000000000002.json")
                .exists(),
            "{what}"
        );
        // Repaired, the table reads again.
        std::fs::write(&manifest, &good_manifest).unwrap();
        std::fs::write(&pointer, &good_pointer).unwrap();
        assert_eq!(rows(&job, None).await.len(), 3, "{what}");
    }
    let after: Vec<String> = f.listing().into_keys().collect();
    let staged_by_refused_runs: Vec<&String> = after
        .iter()
        .filter(|k| !before.contains_key(*k))
        .filter(|k| !k.starts_with("staging/"))
        .collect();
    assert!(
        staged_by_refused_runs.is_empty(),
        "{staged_by_refused_runs:?}"
    );
}

#[tokio::test]
async fn a_missing_or_edited_segment_is_reported_and_gc_deletes_nothing() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    let current = job.show(None).await.unwrap();
    let segment = current.segments().next().unwrap().to_string();
    let path = f.table_dir().join(&segment);
    let good = std::fs::read_to_string(&path).unwrap();
    let edited = good.replacen("\"rows\":3", "\"rows\":4", 1);
    assert_ne!(edited, good);
    for (what, bad) in [("edited", Some(edited)), ("missing", None)] {
        match &bad {
            Some(text) => std::fs::write(&path, text).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let before = f.listing();
        // The index still reads; the files do not, and the error names the segment.
        assert_eq!(job.show(None).await.unwrap().rows(), 3, "{what}");
        let err = job.query(None, "SELECT * FROM orders").await;
        let msg = match err {
            Ok(df) => wap::table::collect(df).await.unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(&segment), "{what}: {msg}");
        let err = job.show_files(None).await.unwrap_err();
        assert!(err.to_string().contains(&segment), "{what}: {err}");
        let gc = wap::gc::GcOptions {
            older_than_seconds: 0,
            now: chrono::Utc::now() + chrono::Duration::days(1),
            ..Default::default()
        };
        let err = job.gc(&gc).await.unwrap_err();
        assert!(err.to_string().contains(&segment), "{what}: {err}");
        assert_eq!(f.listing(), before, "{what}: gc deleted something");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(rows(&job, None).await.len(), 3, "{what}: repaired");
    }
}

#[tokio::test]
async fn segments_of_the_current_version_are_read_only_when_a_rule_reads_it() {
    let f = Fixture::new();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    f.orders("2024-01-03", &[(3001, 12, "8.75", "placed")]);
    f.job().run("2024-01-01", Mode::Publish).await.unwrap();
    let v1_segment = f
        .job()
        .show(None)
        .await
        .unwrap()
        .segments()
        .next()
        .unwrap()
        .to_string();
    let segment_reads = |rec: &RecordingStore| {
        rec.requests()
            .iter()
            .filter(|r| r.op == "get" && r.path == v1_segment)
            .count()
    };
    // The shipped rules read `staged` only: the current version's file lists are never needed.
    let rec = RecordingStore::new(f.table_store());
    let out = f
        .job_on(rec.clone())
        .run("2024-01-02", Mode::Publish)
        .await
        .unwrap();
    assert_eq!(out.status, Status::Published);
    assert_eq!(segment_reads(&rec), 0);
    // A rule over `result` (the table as it would be) reads them, once for all its queries.
    let rules = f.dir.path().join("audits/orders.yaml");
    let mut text = std::fs::read_to_string(&rules).unwrap();
    text.push_str(
        "  - name: unique_across_table\n    sql: SELECT order_id FROM result GROUP BY order_id HAVING count(*) > 1\n  - name: table_not_empty\n    sql: SELECT 1 AS x FROM (SELECT count(*) AS n FROM result) WHERE n = 0\n",
    );
    std::fs::write(&rules, text).unwrap();
    let rec = RecordingStore::new(f.table_store());
    let out = f
        .job_on(rec.clone())
        .run("2024-01-03", Mode::Publish)
        .await
        .unwrap();
    assert_eq!(out.status, Status::Published);
    assert_eq!(segment_reads(&rec), 1);
    assert_eq!(rows(&f.job(), None).await.len(), 6);
}

#[tokio::test]
async fn the_run_log_tells_each_runs_fate() {
    use wap::inspect::RunStatus;
    let f = Fixture::new();
    std::fs::write(
        f.dir.path().join("audits/orders.yaml"),
        "rules:\n  - {name: ids, not_null: [order_id]}\n",
    )
    .unwrap();
    f.orders("2024-01-01", DAY1);
    f.orders("2024-01-02", DAY2);
    f.raw(
        "2024-01-03",
        "orders.csv",
        "order_id,customer_id,amount,status,order_ts\n",
    );
    let job = f.job();
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(
        job.run("2024-01-02", Mode::AuditOnly).await.unwrap().status,
        Status::AuditPassed
    );
    assert_eq!(
        job.run("2024-01-03", Mode::Publish).await.unwrap().status,
        Status::Unchanged
    );
    job.audit_version(None).await.unwrap();
    // A re-run of day 1 is recorded against it.
    assert_eq!(
        job.run("2024-01-01", Mode::Publish).await.unwrap().status,
        Status::Unchanged
    );
    let runs = job.runs().await.unwrap();
    let fate: Vec<(String, RunStatus, Option<u64>, bool)> = runs
        .iter()
        .map(|r| {
            (
                r.logical_date.clone(),
                r.status,
                r.version,
                r.last_unchanged.is_some(),
            )
        })
        .collect();
    let mut fate = fate;
    fate.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        fate,
        [
            (
                "2024-01-01".to_string(),
                RunStatus::Published,
                Some(1),
                true
            ),
            (
                "2024-01-01".to_string(),
                RunStatus::VersionAudit,
                None,
                false
            ),
            (
                "2024-01-02".to_string(),
                RunStatus::NotPublished,
                None,
                false
            ),
            (
                "2024-01-03".to_string(),
                RunStatus::NothingToPublish,
                None,
                false
            ),
        ]
    );
}

#[tokio::test]
async fn rows_sharing_a_key_are_written_in_one_order_whatever_the_input_order() {
    // The same rows, keys repeated with different other columns, in two input orders: the
    // staged bytes are the same (sort by key, then a hash of the other columns).
    let rows = [
        "7,1,3.00,placed,2024-01-01T01:00:00",
        "7,2,1.00,shipped,2024-01-01T02:00:00",
        "7,3,2.00,returned,2024-01-01T03:00:00",
        "5,9,9.00,placed,2024-01-01T04:00:00",
        "5,8,8.00,lost,2024-01-01T05:00:00",
        "6,1,1.00,placed,2024-01-01T06:00:00",
    ];
    let mut staged = Vec::new();
    for order in [[0, 1, 2, 3, 4, 5], [5, 2, 4, 0, 3, 1]] {
        let f = Fixture::new();
        std::fs::write(f.dir.path().join("audits/orders.yaml"), "rules: []\n").unwrap();
        let mut csv = String::from("order_id,customer_id,amount,status,order_ts\n");
        for i in order {
            csv.push_str(rows[i]);
            csv.push('\n');
        }
        f.raw("2024-01-01", "orders.csv", &csv);
        let out = f.job().run("2024-01-01", Mode::AuditOnly).await.unwrap();
        let file = f.table_dir().join(format!(
            "staging/{}/order_date=2024-01-01/part-00000.parquet",
            out.run_id
        ));
        staged.push(std::fs::read(file).unwrap());
    }
    assert_eq!(
        staged[0], staged[1],
        "input order leaked into the staged bytes"
    );
}
