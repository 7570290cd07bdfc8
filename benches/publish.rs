//! Publish cost: latency and request count of publishing one partition onto tables of 10, 1,000
//! and 100,000 files (synthetic manifests: the data files are never read by a publish), on the
//! local filesystem and on S3.
//!
//!     scripts/with-s3.sh cargo bench --bench publish
//!
//! `scripts/with-s3.sh` starts the S3 test server (moto) and sets `WAP_TEST_S3_ENDPOINT`; without
//! it the bench stops and says so. Target: at most 4 requests, and under 50 ms on the
//! local filesystem, whatever the file count. With `formats: [delta]` (11 publishes, so that one
//! writes a Delta checkpoint) and with `formats: [iceberg]` (5 publishes): the same request
//! counts whatever the file count (for Delta: the plain publishes and the checkpoint publish
//! each; for Iceberg from 1,000 files, where a publish rewrites the manifest of the base run's
//! segment, which at 10 files it replaces whole). Prints the figures; exits 1 when a target is missed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use object_store::ObjectStoreExt;
use wap::manifest::{DataFile, Partition, Segment};
use wap::publish::{Proposal, PublishOptions, PublishOutcome, Publisher};

/// The allocator of the `wap` binary, so that the latency is the one `wap` sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The tests' request-recording store, for counting.
#[allow(dead_code)]
#[path = "../tests/it/store.rs"]
mod store;

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("day", DataType::Utf8, false),
    ])
}

/// `partitions` partitions of `files_each` files, written by `run`, whose file lists are put in
/// segments first (as a run's phase 1 ends, outside what is counted as publish).
async fn partitions(
    store: &Arc<dyn object_store::ObjectStore>,
    range: Range<usize>,
    files_each: usize,
    run: &str,
) -> Vec<Partition> {
    let lists: BTreeMap<String, Vec<DataFile>> = range
        .map(|p| {
            let path = format!("day={p:06}");
            let files = (0..files_each)
                .map(|f| DataFile {
                    path: format!("staging/{run}/{path}/part-{f:05}.parquet"),
                    size: 1 << 20,
                    rows: 1_000,
                    sha256: format!("{:064x}", p * 1_000 + f),
                    key_min: vec![Some((f * 1_000).to_string())],
                    key_max: vec![Some((f * 1_000 + 999).to_string())],
                    stats: Default::default(),
                })
                .collect();
            (path, files)
        })
        .collect();
    // As a run's phase 1 writes them: a segment per 256 partitions.
    let mut segment_of = BTreeMap::new();
    for segment in Segment::chunked(lists.clone()) {
        let (path, bytes) = segment.encode(&format!("staging/{run}"));
        store.put(&path, bytes.into()).await.unwrap();
        for p in segment.partitions.keys() {
            segment_of.insert(p.clone(), path.to_string());
        }
    }
    lists
        .iter()
        .map(|(path, files)| {
            let values = BTreeMap::from([(
                "day".to_string(),
                Some(path.trim_start_matches("day=").to_string()),
            )]);
            Partition::new(path, values, files, run, "2024-01-01", &segment_of[path])
        })
        .collect()
}

fn proposal(run: &str, parts: Vec<Partition>) -> Proposal {
    Proposal::Replace {
        run_id: run.to_string(),
        logical_date: "2024-01-01".to_string(),
        table: "bench".to_string(),
        schema: schema(),
        partition_by: vec!["day".to_string()],
        key: vec!["id".to_string()],
        partitions: parts,
        audits: Vec::new(),
        merge: None,
        yield_to: Default::default(),
    }
}

struct Figure {
    store: &'static str,
    /// `-`, `delta` or `iceberg`.
    formats: &'static str,
    files: usize,
    manifest_bytes: u64,
    latency: Duration,
    requests: usize,
    /// With Delta: the publish that also wrote a checkpoint.
    checkpoint: Option<(Duration, usize)>,
}

/// Publishes one 10-file partition onto a table of `files` files, 5 times (with `delta`: 11
/// times, the 10th writing a checkpoint); median latency and the largest request count of the
/// publishes without a checkpoint.
async fn measure(
    store_name: &'static str,
    url: &str,
    location: wap::store::Location,
    files: usize,
    formats: &'static str,
) -> Figure {
    let delta = formats == "delta";
    let options = PublishOptions {
        compare_and_swap: location.compare_and_swap,
        ..Default::default()
    };
    let store = location.scoped().unwrap();
    let files_each = 10;
    let count = (files / files_each).max(1);
    let with = |p: Publisher, s: Arc<dyn object_store::ObjectStore>| match formats {
        "delta" => p.with_delta(),
        "iceberg" => p.with_iceberg(wap::iceberg::IcebergLog::new(s, url)),
        _ => p,
    };
    let publisher = with(
        Publisher::new(Arc::clone(&store), options.clone()),
        Arc::clone(&store),
    );
    let base = proposal(
        "base",
        partitions(&store, 0..count, files_each, "base").await,
    );
    publisher
        .publish(&base, None)
        .await
        .expect("base publishes");
    let counting = store::RecordingStore::new(Arc::clone(&store));
    let publisher = with(Publisher::new(counting.clone(), options), counting.clone());
    let mut latencies = Vec::new();
    let mut requests = 0;
    let mut checkpoint = None;
    for i in 0..if delta { 11 } else { 5 } {
        let run = format!("nightly{i}");
        // Each publish replaces one partition of the table (as a nightly re-run does).
        let at = i % count;
        let p = proposal(&run, partitions(&store, at..at + 1, files_each, &run).await);
        counting.clear();
        let t = Instant::now();
        let out = publisher.publish(&p, None).await.expect("publishes");
        let took = t.elapsed();
        let PublishOutcome::Published { version } = out else {
            panic!("{out:?}")
        };
        let n = counting.requests().len();
        if delta && (version - 1) % wap::delta::CHECKPOINT_INTERVAL == 0 {
            checkpoint = Some((took, n));
        } else {
            latencies.push(took);
            requests = requests.max(n);
        }
    }
    latencies.sort();
    let current = wap::versions::latest_version(&store).await.unwrap();
    let manifest_bytes = store
        .head(&wap::layout::manifest_path(current))
        .await
        .map(|m| m.size)
        .unwrap_or(0);
    Figure {
        store: store_name,
        formats,
        files: count * files_each,
        manifest_bytes,
        latency: latencies[latencies.len() / 2],
        requests,
        checkpoint,
    }
}

#[tokio::main]
async fn main() {
    let endpoint = std::env::var("WAP_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        eprintln!(
            "WAP_TEST_S3_ENDPOINT is not set: run `scripts/with-s3.sh cargo bench --bench publish`, \
             which starts the S3 test server"
        );
        std::process::exit(2)
    });
    let bucket = std::env::var("WAP_TEST_S3_BUCKET").unwrap_or_else(|_| "wap-test".into());
    let options = wap::conf::StorageOptions {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        path_style: Some(true),
    };
    let mut figures = Vec::new();
    for formats in ["-", "delta", "iceberg"] {
        for files in [10, 1_000, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let url = dir.path().display().to_string();
            let local = wap::store::Location::parse(&url, &Default::default()).unwrap();
            figures.push(measure("local", &url, local, files, formats).await);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let url = format!("s3://{bucket}/publish-bench-{nanos}");
            let s3 = wap::store::Location::parse(&url, &options).unwrap();
            figures.push(measure("s3 (moto)", &url, s3, files, formats).await);
        }
    }
    println!(
        "| store | formats | files in table | manifest bytes | publish latency (median) | requests | with a Delta checkpoint |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut missed = Vec::new();
    for f in &figures {
        println!(
            "| {} | {} | {} | {} | {:.1} ms | {} | {} |",
            f.store,
            f.formats,
            f.files,
            f.manifest_bytes,
            f.latency.as_secs_f64() * 1e3,
            f.requests,
            f.checkpoint.map_or("-".to_string(), |(t, n)| format!(
                "{:.1} ms, {n} requests",
                t.as_secs_f64() * 1e3
            )),
        );
        if f.formats != "-" {
            // Constant in the file count: the same as the smallest table on the same store.
            // With Iceberg the 1,000-file table: in the 10-file one a publish replaces the base
            // run's only partition, so no manifest of it is rewritten (two requests fewer).
            let reference = if f.formats == "iceberg" { 1_000 } else { 10 };
            if f.files < reference {
                continue;
            }
            let small = figures
                .iter()
                .find(|g| g.formats == f.formats && g.store == f.store && g.files == reference)
                .expect("measured");
            let counts = |g: &Figure| (g.requests, g.checkpoint.map(|c| c.1));
            if counts(f) != counts(small) {
                missed.push(format!(
                    "{} with {} and {} files: {:?} requests, {:?} with {} files",
                    f.store,
                    f.formats,
                    f.files,
                    counts(f),
                    counts(small),
                    small.files
                ));
            }
            continue;
        }
        if f.requests > 4 {
            missed.push(format!(
                "{} with {} files: {} requests",
                f.store, f.files, f.requests
            ));
        }
        if f.store == "local" && f.latency > Duration::from_millis(50) {
            missed.push(format!(
                "local with {} files: {:.1} ms",
                f.files,
                f.latency.as_secs_f64() * 1e3
            ));
        }
    }
    if missed.is_empty() {
        println!(
            "targets met: at most 4 requests, local publish under 50 ms; with delta and with \
             iceberg, request counts independent of the file count"
        );
    } else {
        println!("TARGETS MISSED: {}", missed.join("; "));
        std::process::exit(1);
    }
}
