//! Audit rules: every kind passes and fails on purpose; thresholds at, below and above their
//! bound; NULL predicates fail; the shared scan agrees with one query per rule.

use std::collections::BTreeMap;

use wap::job::{Mode, Status};

use crate::fixture::Fixture;

/// Ten rows: order 2 has a NULL amount, order 3 a NULL customer and an unknown status, order 4
/// is duplicated, order 6 has a negative amount. Newest order_ts: 2024-03-10T09:00:00.
const CSV: &str = "order_id,customer_id,amount,status,order_ts
1,10,5.00,placed,2024-03-10T01:00:00
2,11,,shipped,2024-03-10T02:00:00
3,,7.00,lost,2024-03-10T03:00:00
4,12,8.00,placed,2024-03-10T04:00:00
4,12,8.00,placed,2024-03-10T04:00:00
6,13,-1.00,returned,2024-03-10T05:00:00
7,14,70.00,shipped,2024-03-10T06:00:00
8,15,80.00,placed,2024-03-10T07:00:00
9,16,90.00,placed,2024-03-10T08:00:00
10,17,100.00,placed,2024-03-10T09:00:00
";

const RULES: &str = r#"rules:
  - name: not_null_pass
    not_null: [order_id, status]
  - name: not_null_fail
    not_null: [customer_id, amount]
  - name: unique_pass
    unique: [order_id, status, customer_id, amount, order_date, ts_text]
    max_failing_rows: 2
  - name: unique_fail
    unique: [order_id]
  - name: accepted_pass
    accepted_values: {column: customer_id, values: [10, 11, 12, 13, 14, 15, 16, 17]}
  - name: accepted_fail
    accepted_values: {column: status, values: [placed, shipped, returned]}
  - name: range_pass
    range: {column: amount, min: -1, max: 100}
  - name: range_fail
    range: {column: amount, min: 0}
  - name: row_count_pass
    row_count: {min: 10, max: 10}
  - name: row_count_fail
    row_count: {min: 11}
  - name: expression_pass
    expression: order_id > 0
  - name: expression_null_fails
    expression: amount >= -1
  - name: sql_pass
    sql: SELECT * FROM staged WHERE order_id > 100
  - name: sql_fail
    sql: SELECT order_id FROM staged WHERE amount > 75
  - name: fresh_pass
    freshness: {column: order_ts_parsed, max_age: 1d}
  - name: fresh_fail
    freshness: {column: order_ts_parsed, max_age: 12h}
  - name: schema_pass
    schema: {columns: {order_id: BIGINT, status: Utf8, amount: "decimal(18,2)", order_date: date}, allow_extra: true}
  - name: schema_fail
    schema: {columns: {order_id: int, missing_col: string}}
"#;

fn setup(rules: &str) -> Fixture {
    let f = Fixture::new();
    f.raw("2024-03-11", "orders.csv", CSV);
    f.edit_conf(
        "CAST(order_ts AS DATE) AS order_date",
        "CAST(order_ts AS DATE) AS order_date, CAST(order_ts AS TIMESTAMP) AS order_ts_parsed, CAST(order_ts AS VARCHAR) AS ts_text",
    );
    std::fs::write(f.dir.path().join("audits/orders.yaml"), rules).unwrap();
    f
}

async fn verdicts(f: &Fixture) -> BTreeMap<String, (bool, u64)> {
    let out = f.job().run("2024-03-11", Mode::AuditOnly).await.unwrap();
    out.audit_report
        .unwrap()
        .rules
        .into_iter()
        .map(|r| (r.name, (r.passed, r.failing_rows)))
        .collect()
}

#[tokio::test]
async fn every_kind_passes_and_fails_on_purpose() {
    let f = setup(RULES);
    let v = verdicts(&f).await;
    let expect = [
        ("not_null_pass", (true, 0)),
        ("not_null_fail", (false, 2)),
        ("unique_pass", (true, 2)),
        ("unique_fail", (false, 2)),
        ("accepted_pass", (true, 0)),
        ("accepted_fail", (false, 1)),
        ("range_pass", (true, 0)),
        ("range_fail", (false, 1)),
        ("row_count_pass", (true, 0)),
        ("row_count_fail", (false, 0)),
        ("expression_pass", (true, 0)),
        ("expression_null_fails", (false, 1)),
        ("sql_pass", (true, 0)),
        ("sql_fail", (false, 3)),
        ("fresh_pass", (true, 0)),
        ("fresh_fail", (false, 1)),
        ("schema_pass", (true, 0)),
        ("schema_fail", (false, 0)),
    ];
    let expect: BTreeMap<String, (bool, u64)> =
        expect.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(v, expect);
}

#[tokio::test]
async fn failing_rules_explain_themselves() {
    let f = setup(RULES);
    let out = f.job().run("2024-03-11", Mode::AuditOnly).await.unwrap();
    assert_eq!(out.status, Status::AuditFailed);
    let report = out.audit_report.unwrap();
    let by = |n: &str| report.rules.iter().find(|r| r.name == n).unwrap().clone();
    let fresh = by("fresh_fail");
    assert!(
        fresh.message.contains("2024-03-10T09:00:00"),
        "{}",
        fresh.message
    );
    assert!(
        fresh.message.contains("TIMESTAMP '2024-03-10 12:00:00'"),
        "{}",
        fresh.message
    );
    let schema = by("schema_fail");
    assert!(
        schema.message.contains("`order_id` is Int64, expected int"),
        "{}",
        schema.message
    );
    assert!(
        schema.message.contains("`missing_col` is missing"),
        "{}",
        schema.message
    );
    assert!(
        schema.message.contains("`status` is not in the rule"),
        "{}",
        schema.message
    );
    let nulls = by("expression_null_fails");
    assert_eq!(nulls.samples.len(), 1);
    assert!(
        nulls.samples[0]["amount"].is_null(),
        "a NULL predicate is a failure and its row is kept"
    );
    // Passing not_null and range rules over exact types are proven from the Parquet footers.
    for name in ["not_null_pass", "range_pass"] {
        let r = by(name);
        assert!(
            r.message.contains("(proven from Parquet metadata)"),
            "{name}: {}",
            r.message
        );
    }
    assert!(
        !by("range_fail").message.contains("proven"),
        "a failing range is counted by the scan"
    );
    let rc = by("row_count_fail");
    assert!(
        rc.message.contains("row count 10 is below the minimum 11"),
        "{}",
        rc.message
    );
}

#[tokio::test]
async fn dictionary_proofs_are_exact() {
    let rules = r#"rules:
  - {name: status_known, accepted_values: {column: status, values: [placed, shipped, returned, lost]}}
  - {name: status_long, expression: length(status) >= 4}
  - {name: status_fail, accepted_values: {column: status, values: [placed, shipped]}}
  - {name: customer_null_fails, expression: customer_id <> 99}
  - {name: two_columns, expression: order_id > 0 OR amount > 0}
  - {name: volatile, expression: random() < 2.0 AND status <> 'x'}
"#;
    let f = setup(rules);
    let out = f.job().run("2024-03-11", Mode::AuditOnly).await.unwrap();
    let report = out.audit_report.unwrap();
    let by = |n: &str| report.rules.iter().find(|r| r.name == n).unwrap().clone();
    let verdict = |n: &str| {
        let r = by(n);
        (r.passed, r.failing_rows, r.message.contains("proven"))
    };
    // Every value in the status dictionary is accepted / long enough: no scan needed.
    assert_eq!(verdict("status_known"), (true, 0, true));
    assert_eq!(verdict("status_long"), (true, 0, true));
    // A dictionary value fails: the scan counts the rows (lost and returned).
    assert_eq!(verdict("status_fail"), (false, 2, false));
    // customer_id has a NULL, for which the predicate is NULL: a failure the proof must not hide.
    assert_eq!(verdict("customer_null_fails"), (false, 1, false));
    // Two columns, or a volatile function: never proven from one column's values.
    assert_eq!(verdict("two_columns"), (true, 0, false));
    assert_eq!(verdict("volatile"), (true, 0, false));
}

#[tokio::test]
async fn a_columns_dictionary_is_read_once_for_all_its_rules() {
    // Ranged reads of staged files during an audit-only run with `rules`, all proven.
    async fn ranged_reads(rules: &str) -> usize {
        let f = setup(rules);
        let rec = crate::store::RecordingStore::new(f.table_store());
        let out = f
            .job_on(rec.clone())
            .run("2024-03-11", Mode::AuditOnly)
            .await
            .unwrap();
        let report = out.audit_report.unwrap();
        assert!(
            report
                .rules
                .iter()
                .all(|r| r.passed && r.message.contains("proven")),
            "{:?}",
            report.rules
        );
        rec.requests()
            .iter()
            .filter(|r| r.op == "get_ranges" && r.path.starts_with("staging/"))
            .count()
    }
    let one = ranged_reads(
        "rules:\n  - {name: status_known, accepted_values: {column: status, values: [placed, shipped, returned, lost]}}\n",
    )
    .await;
    let three = ranged_reads(
        r#"rules:
  - {name: status_known, accepted_values: {column: status, values: [placed, shipped, returned, lost]}}
  - {name: status_long, expression: length(status) >= 4}
  - {name: status_not_x, expression: status <> 'x'}
"#,
    )
    .await;
    assert!(one > 0, "the dictionary pages are read");
    assert_eq!(
        three, one,
        "three rules on one column read its dictionary once"
    );
}

#[tokio::test]
async fn thresholds_at_below_and_above_the_bound() {
    // not_null on customer_id, amount fails 2 of 10 rows (20%).
    let rules = "rules:
  - {name: rows_below, not_null: [customer_id, amount], max_failing_rows: 1}
  - {name: rows_at, not_null: [customer_id, amount], max_failing_rows: 2}
  - {name: rows_above, not_null: [customer_id, amount], max_failing_rows: 3}
  - {name: pct_below, not_null: [customer_id, amount], max_failing_pct: 19.9}
  - {name: pct_at, not_null: [customer_id, amount], max_failing_pct: 20}
  - {name: pct_above, not_null: [customer_id, amount], max_failing_pct: 25}
  - {name: both, not_null: [customer_id, amount], max_failing_rows: 5, max_failing_pct: 10}
  - {name: sql_threshold, sql: 'SELECT * FROM staged WHERE amount > 75', max_failing_rows: 3}
  - {name: unique_threshold, unique: [order_id], max_failing_pct: 10}
";
    let f = setup(rules);
    let v = verdicts(&f).await;
    let passed: Vec<(&str, bool)> = v.iter().map(|(k, (p, _))| (k.as_str(), *p)).collect();
    assert_eq!(
        passed,
        [
            ("both", false),
            ("pct_above", true),
            ("pct_at", true),
            ("pct_below", false),
            ("rows_above", true),
            ("rows_at", true),
            ("rows_below", false),
            ("sql_threshold", true),
            ("unique_threshold", false),
        ]
    );
    // A rule within its threshold does not block publishing.
    let f = setup(
        "rules:\n  - {name: tolerated, not_null: [customer_id, amount], max_failing_rows: 2}\n",
    );
    let out = f.job().run("2024-03-11", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::Published);
    assert_eq!(out.audits[0].failing_rows, 2);
}

#[tokio::test]
async fn the_shared_scan_agrees_with_one_query_per_rule() {
    let all = setup(RULES);
    let together = verdicts(&all).await;
    // Each rule alone, in its own job run.
    let blocks: Vec<&str> = RULES.split("\n  - ").skip(1).collect();
    assert_eq!(blocks.len(), together.len());
    for block in blocks {
        let f = setup(&format!("rules:\n  - {}\n", block.trim_end()));
        let alone = verdicts(&f).await;
        assert_eq!(alone.len(), 1);
        let (name, verdict) = alone.into_iter().next().unwrap();
        assert_eq!(together[&name], verdict, "{name}");
    }
}

#[tokio::test]
async fn one_rule_file_serves_two_jobs_through_vars_and_samples_are_settable() {
    let f = setup(
        "rules:\n  - name: big_enough\n    range: {column: amount, min: {min_amount}}\n  - name: known\n    accepted_values: {column: status, values: [{ok_status}]}\n",
    );
    f.edit_conf("audits: [../audits/orders.yaml]", "audits: [../audits/orders.yaml]\nvars: {min_amount: 50, ok_status: placed}\naudit_samples: 2");
    let out = f.job().run("2024-03-11", Mode::AuditOnly).await.unwrap();
    let r = out.audit_report.unwrap();
    assert_eq!(
        (r.rules[0].failing_rows, r.rules[0].samples.len()),
        (5, 2),
        "5 amounts below 50, 2 samples kept"
    );
    assert_eq!(r.rules[1].failing_rows, 4);

    f.edit_conf(
        "vars: {min_amount: 50, ok_status: placed}",
        "vars: {min_amount: -5, ok_status: placed}",
    );
    let out = f.job().run("2024-03-11", Mode::AuditOnly).await.unwrap();
    assert_eq!(out.audit_report.unwrap().rules[0].failing_rows, 0);

    f.edit_conf("vars: {min_amount: -5, ok_status: placed}\n", "");
    let err = wap::conf::JobConf::load(&f.conf).unwrap_err().to_string();
    assert!(
        err.contains("audits/orders.yaml:3:") && err.contains("`{min_amount}` has no value"),
        "{err}"
    );
}

fn day(n_rows: usize, null_amounts: usize, first_id: i64) -> Vec<(i64, i64, String, &'static str)> {
    (0..n_rows)
        .map(|i| {
            let amount = if i < null_amounts {
                String::new()
            } else {
                format!("{}.00", i + 1)
            };
            (first_id + i as i64, 1, amount, "placed")
        })
        .collect()
}

fn write_day(f: &Fixture, date: &str, rows: &[(i64, i64, String, &'static str)]) {
    let rows: Vec<crate::fixture::Order> = rows
        .iter()
        .map(|(a, b, c, d)| (*a, *b, c.as_str(), *d))
        .collect();
    f.orders(date, &rows);
}

fn rules(f: &Fixture, text: &str) {
    std::fs::write(f.dir.path().join("audits/orders.yaml"), text).unwrap();
}

async fn verdict(f: &Fixture, date: &str) -> (bool, String) {
    let out = f.job().run(date, Mode::AuditOnly).await.unwrap();
    let r = &out.audit_report.unwrap().rules[0];
    (r.passed, r.message.clone())
}

#[tokio::test]
async fn change_rules_compare_with_the_published_version() {
    let f = Fixture::new();
    rules(&f, "rules: []\n");
    for (d, id) in [
        ("2024-01-01", 100),
        ("2024-01-02", 200),
        ("2024-01-03", 300),
    ] {
        write_day(&f, d, &day(10, 1, id));
        f.job().run(d, Mode::Publish).await.unwrap();
    }

    // Row counts: a new partition against the mean of the last published ones (10 rows).
    rules(
        &f,
        "rules:\n  - name: rc\n    row_count_change: {max_pct: 30}\n",
    );
    write_day(&f, "2024-01-04", &day(13, 1, 400));
    let (ok, msg) = verdict(&f, "2024-01-04").await;
    assert!(ok, "30% is at the bound: {msg}");
    write_day(&f, "2024-01-04", &day(14, 1, 400));
    let (ok, msg) = verdict(&f, "2024-01-04").await;
    assert!(
        !ok && msg.contains("order_date=2024-01-04: 14 rows against 10.0 (40.0%)"),
        "{msg}"
    );
    // A replaced partition against itself.
    write_day(&f, "2024-01-02", &day(5, 1, 200));
    let (ok, msg) = verdict(&f, "2024-01-02").await;
    assert!(!ok && msg.contains("(50.0%)"), "{msg}");
    write_day(&f, "2024-01-02", &day(8, 1, 200));
    assert!(verdict(&f, "2024-01-02").await.0, "20% is within 30%");
    // `window: 1` compares a new partition with the newest published one only.
    rules(
        &f,
        "rules:\n  - name: rc\n    row_count_change: {max_pct: 0, window: 1}\n",
    );
    write_day(&f, "2024-01-04", &day(10, 1, 400));
    assert!(verdict(&f, "2024-01-04").await.0);

    // Null rates: 10% NULL amounts published per day.
    rules(
        &f,
        "rules:\n  - name: nr\n    null_rate_change: {column: amount, max_points: 5}\n",
    );
    write_day(&f, "2024-01-01", &day(10, 3, 100));
    let (ok, msg) = verdict(&f, "2024-01-01").await;
    assert!(
        !ok && msg.contains("30.0% NULL against 10.0% (20.0 points)"),
        "{msg}"
    );
    write_day(&f, "2024-01-05", &day(20, 2, 500));
    let (ok, msg) = verdict(&f, "2024-01-05").await;
    assert!(ok, "10% against a 10% mean: {msg}");

    // Schema changes.
    rules(&f, "rules:\n  - name: sc\n    schema_change: forbid\n");
    write_day(&f, "2024-01-01", &day(10, 1, 100));
    assert!(verdict(&f, "2024-01-01").await.0, "same schema");
    f.edit_conf("status,\n", "status, 'x' AS extra,\n");
    let (ok, msg) = verdict(&f, "2024-01-01").await;
    assert!(!ok && msg.contains("column `extra` was added"), "{msg}");
    rules(&f, "rules:\n  - name: sc\n    schema_change: additive\n");
    assert!(verdict(&f, "2024-01-01").await.0, "adding is additive");
    f.edit_conf(
        "CAST(amount AS DECIMAL(18,2)) AS amount",
        "CAST(amount AS DOUBLE) AS amount",
    );
    let (ok, msg) = verdict(&f, "2024-01-01").await;
    assert!(
        !ok && msg.contains("column `amount` changed type from Decimal128(18, 2) to Float64"),
        "{msg}"
    );
}

#[tokio::test]
async fn change_rules_pass_when_there_is_nothing_to_compare() {
    let f = Fixture::new();
    write_day(&f, "2024-01-01", &day(10, 9, 1));
    rules(
        &f,
        "rules:\n  - {name: rc, row_count_change: {max_pct: 0}}\n  - {name: nr, null_rate_change: {column: amount, max_points: 0}}\n  - {name: sc, schema_change: forbid}\n",
    );
    let out = f.job().run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::Published);
    assert!(out.audits.iter().all(|a| a.passed));
}

#[tokio::test]
async fn relationships_check_another_tables_published_version() {
    let f = setup("rules: []\n");
    // A customers table, published by its own job.
    std::fs::write(
        f.dir.path().join("conf/customers.yaml"),
        "name: customers\ntable: ../lake/customers\nkey: [customer_id]\nsource:\n  format: csv\n  path: ../data/customers/{date}.csv\n",
    )
    .unwrap();
    let dir = f.dir.path().join("data/customers");
    std::fs::create_dir_all(&dir).unwrap();
    let ids: String = (10..17).map(|i| format!("{i},name{i}\n")).collect();
    std::fs::write(
        dir.join("2024-03-11.csv"),
        format!("customer_id,name\n{ids}"),
    )
    .unwrap();

    for to in ["../conf/customers.yaml", "../lake/customers"] {
        rules(
            &f,
            &format!(
                "rules:\n  - name: known_customer\n    relationships: {{column: customer_id, to: {to}, field: customer_id}}\n"
            ),
        );
        // Before the customers table is published, every customer fails.
        if to.ends_with(".yaml") {
            let out = f.job().run("2024-03-11", Mode::AuditOnly).await.unwrap();
            assert_eq!(out.audit_report.unwrap().rules[0].failing_rows, 9);
            let customers = wap::job::Job::open(
                wap::conf::JobConf::load(f.dir.path().join("conf/customers.yaml")).unwrap(),
                Default::default(),
            )
            .unwrap();
            customers.run("2024-03-11", Mode::Publish).await.unwrap();
        }
        let out = f.job().run("2024-03-11", Mode::AuditOnly).await.unwrap();
        let r = &out.audit_report.unwrap().rules[0];
        assert_eq!(
            (r.passed, r.failing_rows),
            (false, 1),
            "{to}: {}",
            r.message
        );
        assert_eq!(r.samples[0]["customer_id"], 17);
        assert!(
            r.message.contains("with no customer_id in"),
            "{}",
            r.message
        );
    }
}

#[tokio::test]
async fn result_scope_sees_the_table_as_it_would_be_after_publishing() {
    let f = Fixture::new();
    rules(&f, "rules: []\n");
    f.orders(
        "2024-01-01",
        &[
            (1, 1, "1.00", "placed"),
            (2, 1, "2.00", "placed"),
            (3, 1, "3.00", "placed"),
        ],
    );
    f.job().run("2024-01-01", Mode::Publish).await.unwrap();
    rules(
        &f,
        "rules:
  - {name: unique_in_run, unique: [order_id]}
  - {name: unique_in_table, unique: [order_id], scope: result}
  - {name: table_size, row_count: {max: 4}, scope: result}
  - {name: total, sql: 'SELECT 1 FROM result HAVING SUM(amount) > 100'}
",
    );
    f.orders(
        "2024-01-02",
        &[(2, 1, "50.00", "placed"), (4, 1, "60.00", "placed")],
    );
    let out = f.job().run("2024-01-02", Mode::AuditOnly).await.unwrap();
    let v: BTreeMap<_, _> = out
        .audit_report
        .unwrap()
        .rules
        .into_iter()
        .map(|r| (r.name, (r.passed, r.failing_rows, r.checked_rows)))
        .collect();
    assert_eq!(v["unique_in_run"], (true, 0, 2));
    assert_eq!(v["unique_in_table"], (false, 2, 5));
    assert_eq!(v["table_size"], (false, 0, 5));
    assert_eq!(v["total"], (false, 1, 2));
    // Replacing day 1 itself: its old rows are not in `result`.
    f.orders(
        "2024-01-01",
        &[(1, 1, "1.00", "placed"), (2, 1, "2.00", "placed")],
    );
    let out = f.job().run("2024-01-01", Mode::AuditOnly).await.unwrap();
    let r = out.audit_report.unwrap();
    let table_size = r.rules.iter().find(|r| r.name == "table_size").unwrap();
    assert_eq!((table_size.passed, table_size.checked_rows), (true, 2));
    let err = wap::conf::rules::RuleFile::parse(
        std::path::Path::new("r.yaml"),
        "rules:\n  - {name: s, schema_change: forbid, scope: result}\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("scope applies to row-level rules"),
        "{err}"
    );
}

#[tokio::test]
async fn quarantine_publishes_the_good_rows_and_keeps_the_bad_ones() {
    let f = Fixture::new();
    let orders: Vec<(i64, i64, String, &'static str)> = (1..=10)
        .map(|i| {
            (
                i,
                i,
                if i % 5 == 0 {
                    format!("-{i}.00")
                } else {
                    format!("{i}.00")
                },
                "placed",
            )
        })
        .collect();
    write_day(&f, "2024-01-01", &orders);
    rules(
        &f,
        "rules:
  - {name: positive, expression: amount > 0, on_fail: quarantine, max_failing_pct: 25}
  - {name: no_negatives_left, range: {column: amount, min: 0}}
",
    );
    let job = f.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::Published);
    assert_eq!(out.rows, 8);
    let report = out.audit_report.unwrap();
    assert_eq!(report.quarantine.as_ref().unwrap().rows, 2);
    let v: BTreeMap<_, _> = report
        .rules
        .iter()
        .map(|r| (r.name.clone(), (r.passed, r.failing_rows)))
        .collect();
    assert_eq!(v["positive"], (true, 2), "20% quarantined is within 25%");
    assert_eq!(
        v["no_negatives_left"],
        (true, 0),
        "other rules see the clean rows"
    );
    let published = crate::fixture::rows(&job, None).await;
    assert_eq!(published.len(), 8);
    assert!(
        !published
            .iter()
            .any(|r| r.starts_with("5|") || r.starts_with("10|"))
    );
    // The bad rows are kept as Parquet under the run.
    let qdir = f.table_dir().join(format!(
        "_wap/runs/{}/quarantine/order_date=2024-01-01",
        out.run_id
    ));
    let file = std::fs::read_dir(&qdir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 2);
    // A re-run is a no-op.
    assert_eq!(
        job.run("2024-01-01", Mode::Publish).await.unwrap().status,
        Status::Unchanged
    );

    // Above its threshold the rule still fails the run: nothing is published.
    rules(
        &f,
        "rules:\n  - {name: positive, expression: amount > 0, on_fail: quarantine, max_failing_pct: 10}\n",
    );
    write_day(&f, "2024-01-02", &orders);
    let out = f.job().run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::AuditFailed);
    assert_eq!(f.job().log().await.unwrap().len(), 1);

    // A partition whose every row is quarantined is replaced by an empty one: its old rows go.
    let good: Vec<crate::fixture::Order> =
        vec![(100, 1, "1.00", "placed"), (101, 1, "2.00", "placed")];
    let bad: Vec<crate::fixture::Order> =
        vec![(100, 1, "-1.00", "placed"), (101, 1, "-2.00", "placed")];
    f.orders("2024-01-03", &good);
    rules(
        &f,
        "rules:\n  - {name: positive, expression: amount > 0, on_fail: quarantine, max_failing_pct: 100}\n",
    );
    let job = f.job();
    assert_eq!(
        job.run("2024-01-03", Mode::Publish).await.unwrap().status,
        Status::Published
    );
    let day3 = |rows: Vec<String>| {
        rows.into_iter()
            .filter(|r| r.ends_with("2024-01-03"))
            .count()
    };
    assert_eq!(day3(crate::fixture::rows(&job, None).await), 2);
    f.orders("2024-01-03", &bad);
    let out = job.run("2024-01-03", Mode::Publish).await.unwrap();
    assert_eq!(out.status, Status::Published, "{:?}", out.message);
    assert_eq!(out.rows, 0);
    assert_eq!(out.audit_report.unwrap().quarantine.unwrap().rows, 2);
    assert_eq!(
        day3(crate::fixture::rows(&job, None).await),
        0,
        "the old rows are gone"
    );
    let current = job.show(None).await.unwrap();
    let p = &current.partitions["order_date=2024-01-03"];
    assert_eq!((p.rows, p.file_count), (0, 0));
    assert_eq!(p.run_id, out.run_id);
    // And its re-run is a no-op.
    assert_eq!(
        job.run("2024-01-03", Mode::Publish).await.unwrap().status,
        Status::Unchanged
    );
}

#[tokio::test]
async fn the_unique_merge_reuses_the_footers_the_proofs_read() {
    // Whole-object and footer reads (`get`) of staged files during an audit-only run.
    async fn gets(rules: &str) -> usize {
        let f = Fixture::new();
        f.orders(
            "2024-01-01",
            &[(1, 12, "19.99", "shipped"), (2, 17, "5.00", "placed")],
        );
        std::fs::write(f.dir.path().join("audits/orders.yaml"), rules).unwrap();
        let rec = crate::store::RecordingStore::new(f.table_store());
        let out = f
            .job_on(rec.clone())
            .run("2024-01-01", Mode::AuditOnly)
            .await
            .unwrap();
        // All pass: no failing rule's sample query reads the files again.
        assert!(out.audit_report.unwrap().rules.iter().all(|r| r.passed));
        rec.requests()
            .iter()
            .filter(|r| r.op == "get" && r.path.starts_with("staging/"))
            .count()
    }
    let proofs = gets("rules:\n  - {name: ids, not_null: [order_id]}\n").await;
    let both = gets(
        "rules:\n  - {name: ids, not_null: [order_id]}\n  - {name: one_per_order, unique: [order_id]}\n",
    )
    .await;
    let merge_alone = gets("rules:\n  - {name: one_per_order, unique: [order_id]}\n").await;
    assert!(proofs > 0, "the proofs read footers");
    assert_eq!(both, proofs, "the merge read no footer the proofs had read");
    assert!(
        merge_alone > 0,
        "without proofs, the merge reads the footers itself"
    );
}
