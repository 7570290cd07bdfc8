//! The physical floor of a `wap run` on this machine: a bare decode of the source plus a bare
//! encode of the run's output with the writer settings `wap` uses, nothing in between (no
//! transform, bucketing, sort, audit, hashing, upload or publish).
//!
//!     cargo bench --bench floor -- SOURCE FORMAT TABLE_DIR [ROUNDS]
//!
//! `SOURCE`: a local file or folder (`~/.cache/wap-bench/tpch-sf1/lineitem.parquet`); `FORMAT`:
//! `parquet` or `csv` (with a header); `TABLE_DIR`: a local table `wap` published from that
//! source (`target/bench/out/wap/lineitem` after `bench/run.sh`). `ROUNDS` (default 5).
//!
//! - **decode**: `SELECT *` over the source in a `wap` session (the same readers, batch size
//!   and one stream per core), every batch dropped; the wall time.
//! - **encode**: every data file of the table's current version, read back into batches of
//!   8,192 rows (untimed), then written to memory by parquet's `ArrowWriter` with
//!   [`wap::write::writer_properties`] (chosen on the file's first batch, delta encoding on the
//!   first key column as `wap` does), one thread per core taking files in turn. The figure is
//!   the encode CPU time of all threads divided by the threads: the wall time of a perfectly
//!   balanced parallel encode.
//!
//! Prints each phase's median with its min and max over the rounds, and their sum (the floor).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions};
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use wap::engine::{EngineOptions, session};

fn spread(mut v: Vec<Duration>) -> (f64, String) {
    v.sort();
    let s = |d: Duration| d.as_secs_f64();
    let median = s(v[v.len() / 2]);
    (
        median,
        format!("{median:.2} s ({:.2}-{:.2})", s(v[0]), s(v[v.len() - 1])),
    )
}

async fn decode(source: &str, format: &str) -> (Duration, usize) {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
    let ctx = session(&EngineOptions::default(), store, None).unwrap();
    // As `wap` reads Parquet: strings as plain arrays, not views.
    ctx.sql("SET datafusion.execution.parquet.schema_force_view_types = false")
        .await
        .unwrap();
    let started = Instant::now();
    match format {
        "parquet" => ctx
            .register_parquet("source", source, ParquetReadOptions::default())
            .await
            .unwrap(),
        "csv" => ctx
            .register_csv("source", source, CsvReadOptions::new().has_header(true))
            .await
            .unwrap(),
        other => panic!("FORMAT is parquet or csv, not {other}"),
    }
    let df = ctx.table("source").await.unwrap();
    let streams = df.execute_stream_partitioned().await.unwrap();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut rows = 0;
                while let Some(b) = s.next().await {
                    rows += b.unwrap().num_rows();
                }
                rows
            })
        })
        .collect();
    let mut rows = 0;
    for t in tasks {
        rows += t.await.unwrap();
    }
    (started.elapsed(), rows)
}

/// Encodes `batches` as `wap` writes a file; the encoded size.
fn encode(batches: &[RecordBatch], sorted: Option<usize>) -> usize {
    let props = wap::write::writer_properties(&batches[0], sorted);
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
    for b in batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    out.len()
}

/// The encode CPU time of every file over `threads` threads, divided by `threads`; the bytes.
fn encode_all(files: &[Bytes], key: &str, threads: usize) -> (Duration, usize) {
    let next = AtomicUsize::new(0);
    let per_thread: Vec<(Duration, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut busy, mut bytes) = (Duration::ZERO, 0);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = files.get(i) else { break };
                        let reader = ParquetRecordBatchReaderBuilder::try_new(file.clone())
                            .unwrap()
                            .with_batch_size(8192)
                            .build()
                            .unwrap();
                        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
                        if batches.is_empty() {
                            continue;
                        }
                        let sorted = batches[0].schema().index_of(key).ok();
                        let t = Instant::now();
                        bytes += encode(&batches, sorted);
                        busy += t.elapsed();
                    }
                    (busy, bytes)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let busy: Duration = per_thread.iter().map(|p| p.0).sum();
    let bytes = per_thread.iter().map(|p| p.1).sum();
    (busy / threads as u32, bytes)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [source, format, dir, ..] = args.as_slice() else {
        eprintln!("usage: cargo bench --bench floor -- SOURCE FORMAT TABLE_DIR [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(5);
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
    let mut manifest = wap::versions::current(&store)
        .await
        .unwrap()
        .expect("a published table");
    wap::versions::resolve_files(&store, [&mut manifest])
        .await
        .unwrap();
    let key = manifest.key.first().cloned().unwrap_or_default();
    let mut files = Vec::new();
    for f in manifest.files() {
        let meta = wap::table::object_meta(f);
        files.push(
            store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        );
    }
    let on_disk: usize = files.iter().map(Bytes::len).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} output files, {} bytes, {} rows; {threads} threads",
        files.len(),
        on_disk,
        manifest.rows()
    );
    let (mut decodes, mut encodes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which phase runs first, so that neither always follows the other.
        let mut run_decode = async || {
            let (d, rows) = decode(source, format).await;
            assert_eq!(
                rows as u64,
                manifest.rows(),
                "the source's rows are the table's"
            );
            decodes.push(d);
        };
        let run_encode = |encodes: &mut Vec<Duration>| {
            let (e, bytes) = encode_all(&files, &key, threads);
            assert_eq!(bytes, on_disk, "encoded again to the same size");
            encodes.push(e);
        };
        if round % 2 == 0 {
            run_decode().await;
            run_encode(&mut encodes);
        } else {
            run_encode(&mut encodes);
            run_decode().await;
        }
    }
    let (d, ds) = spread(decodes);
    let (e, es) = spread(encodes);
    println!("decode {ds}");
    println!("encode {es}");
    println!("floor (median decode + median encode) {:.2} s", d + e);
}
