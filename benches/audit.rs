//! Audit speed: 20 column rules over 5 million rows, evaluated the way `wap` does (one aggregate
//! scan), against a bare scan of the same columns and against one query per rule.
//!
//!     cargo bench --bench audit [-- ROWS]
//!
//! Target: the 20 rules take less than twice the bare scan. Exits 1 when missed.
//! `wap` first proves what it can from the Parquet metadata (null counts, exact min/max,
//! dictionary pages) and scans for the rest; the line "no metadata proofs" is the scan alone,
//! what the rules cost on data where no proof applies. `WAP_BENCH_BREAKDOWN=1` adds each rule
//! alone.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use wap::audit::StagedFiles;
use wap::audit::plan::{Evaluation, ScanCheck, evaluation};
use wap::audit::run::{Baseline, STAGED};
use wap::conf::rules::RuleFile;
use wap::engine::{EngineOptions, session};

const RULES: &str = "rules:
  - {name: r01, not_null: [id]}
  - {name: r02, not_null: [customer]}
  - {name: r03, not_null: [amount, quantity]}
  - {name: r04, not_null: [status]}
  - {name: r05, not_null: [day]}
  - {name: r06, accepted_values: {column: status, values: [placed, shipped, returned, lost]}}
  - {name: r07, accepted_values: {column: region, values: [north, south, east, west]}}
  - {name: r08, range: {column: amount, min: 0, max: 100000}}
  - {name: r09, range: {column: quantity, min: 1, max: 50}}
  - {name: r10, range: {column: discount, min: 0, max: 1}}
  - {name: r11, range: {column: customer, min: 0}}
  - {name: r12, range: {column: day, min: '2020-01-01', max: '2030-01-01'}}
  - {name: r13, expression: amount >= 0}
  - {name: r14, expression: quantity * amount < 10000000}
  - {name: r15, expression: discount < 0.9 OR amount < 100}
  - {name: r16, expression: length(status) > 3}
  - {name: r17, expression: id >= 0}
  - {name: r18, row_count: {min: 1}}
  - {name: r19, expression: region <> 'nowhere'}
  - {name: r20, expression: customer < 100000}
";

const COLUMNS: &[&str] = &[
    "id", "customer", "amount", "quantity", "discount", "status", "region", "day",
];

fn batch(start: usize, n: usize) -> RecordBatch {
    let statuses = ["placed", "shipped", "returned", "lost"];
    let regions = ["north", "south", "east", "west"];
    let ids: Vec<i64> = (start..start + n).map(|i| i as i64).collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(Int64Array::from(
            ids.iter().map(|i| (i * 7919) % 100_000).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            ids.iter()
                .map(|i| (i % 10_000) as f64 / 3.0)
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            ids.iter().map(|i| i % 50 + 1).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            ids.iter()
                .map(|i| (i % 100) as f64 / 200.0)
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| statuses[(*i % 4) as usize])
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| regions[(*i / 7 % 4) as usize])
                .collect::<Vec<_>>(),
        )),
        Arc::new(Date32Array::from(
            ids.iter()
                .map(|i| 19_000 + (*i % 365) as i32)
                .collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("customer", DataType::Int64, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new("discount", DataType::Float64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("day", DataType::Date32, true),
    ]))
}

fn write_data(dir: &FsPath, rows: usize, files: usize) -> Vec<object_store::ObjectMeta> {
    let per_file = rows / files;
    let mut metas = Vec::new();
    for f in 0..files {
        let path = dir.join(format!("part-{f:05}.parquet"));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema(), None).unwrap();
        let mut written = 0;
        while written < per_file {
            let n = (per_file - written).min(65_536);
            w.write(&batch(f * per_file + written, n)).unwrap();
            written += n;
        }
        w.close().unwrap();
        metas.push(object_store::ObjectMeta {
            location: object_store::path::Path::from(format!("part-{f:05}.parquet")),
            last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            size: std::fs::metadata(&path).unwrap().len(),
            e_tag: None,
            version: None,
        });
    }
    metas
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let files = write_data(dir.path(), rows, 8);
    eprintln!(
        "generated {rows} rows in {} files in {:.1?}",
        files.len(),
        started.elapsed()
    );

    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let ctx = session(&EngineOptions::default(), Arc::clone(&store), None).unwrap();
    let staged = StagedFiles::new(store, schema(), files.clone());
    let table = wap::table::files_table(schema(), files).unwrap();
    ctx.register_table(STAGED, Arc::new(table)).unwrap();
    let rule_file = RuleFile::parse(FsPath::new("bench.yaml"), RULES).unwrap();
    let rules: Vec<_> = rule_file.rules.iter().collect();
    assert_eq!(rules.len(), 20);
    let base = Baseline {
        logical_date: chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
        partition_by: &[],
        staged: &[],
        files: Some(&staged),
        published: None,
        progress: None,
    };

    let bare_sql = format!(
        "SELECT count(*) FROM {STAGED} WHERE {}",
        COLUMNS
            .iter()
            .map(|c| format!("{c} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" OR ")
    );
    let time = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let t = Instant::now();
            ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            t.elapsed()
        }
    };
    // Warm the page cache and the plan caches.
    time(bare_sql.clone()).await;

    let mut bare = Vec::new();
    let mut count_star = Vec::new();
    let mut audit = Vec::new();
    let mut per_rule = Vec::new();
    let mut scan_only = Vec::new();
    let mut proven = 0;
    let evaluations: Vec<_> = rules.iter().map(|r| evaluation(r)).collect();
    let checks: Vec<&ScanCheck> = evaluations
        .iter()
        .filter_map(|e| match e {
            Evaluation::Scan { check, .. } => Some(check),
            _ => None,
        })
        .collect();
    let scan_sql = wap::audit::sql::aggregate_query(&checks, STAGED, base.logical_date);
    for _ in 0..5 {
        scan_only.push(time(scan_sql.clone()).await);
        bare.push(time(bare_sql.clone()).await);
        count_star.push(time(format!("SELECT count(*) FROM {STAGED}")).await);
        let t = Instant::now();
        let results = wap::audit::run::run(&ctx, &rules, &["id".to_string()], 10, &base)
            .await
            .unwrap();
        audit.push(t.elapsed());
        proven = results
            .iter()
            .filter(|r| r.message.contains("proven"))
            .count();
        let failed: Vec<_> = results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| &r.name)
            .collect();
        assert!(
            failed.is_empty(),
            "the bench data passes every rule: {failed:?}"
        );
        let t = Instant::now();
        for rule in &rules {
            wap::audit::run::run(&ctx, &[*rule], &["id".to_string()], 10, &base)
                .await
                .unwrap();
        }
        per_rule.push(t.elapsed());
    }
    let (bare, count_star, audit, per_rule, scan_only) = (
        median(bare),
        median(count_star),
        median(audit),
        median(per_rule),
        median(scan_only),
    );
    let ratio = audit.as_secs_f64() / bare.as_secs_f64();
    println!("rows                         {rows}");
    println!(
        "bare scan of the 8 columns              {:>8.1} ms",
        bare.as_secs_f64() * 1e3
    );
    println!(
        "SELECT count(*) (metadata)              {:>8.1} ms",
        count_star.as_secs_f64() * 1e3
    );
    println!(
        "20 rules, proofs then one shared scan   {:>8.1} ms  ({ratio:.2}x the bare scan)",
        audit.as_secs_f64() * 1e3
    );
    println!(
        "rules proven from metadata              {proven} of {}",
        rules.len()
    );
    println!(
        "20 rules, one scan, no metadata proofs  {:>8.1} ms  ({:.2}x the bare scan)",
        scan_only.as_secs_f64() * 1e3,
        scan_only.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "20 rules, one query each                {:>8.1} ms  ({:.2}x the bare scan)",
        per_rule.as_secs_f64() * 1e3,
        per_rule.as_secs_f64() / bare.as_secs_f64()
    );
    if std::env::var_os("WAP_BENCH_BREAKDOWN").is_some() {
        for rule in &rules {
            let mut times = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                wap::audit::run::run(&ctx, &[*rule], &["id".to_string()], 10, &base)
                    .await
                    .unwrap();
                times.push(t.elapsed());
            }
            println!(
                "  {:<4} alone              {:>8.1} ms",
                rule.name,
                median(times).as_secs_f64() * 1e3
            );
        }
    }
    if ratio < 2.0 {
        println!("target met: 20 column rules under 2x the bare scan");
    } else {
        println!("TARGET MISSED: 20 column rules take {ratio:.2}x the bare scan (target < 2x)");
        std::process::exit(1);
    }
}
