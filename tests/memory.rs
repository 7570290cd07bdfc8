//! Writing streams: the heap a run needs does not grow with the size of its input.
//!
//! A counting global allocator measures the peak heap of a job run over one partition of N rows
//! and of 4N rows under the same 32 MiB memory budget (both inputs are larger than the budget). If phase 1 collected its input (or a partition)
//! in memory, the larger run's peak would grow with the data. Its own binary, so no other test
//! allocates at the same time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use wap::conf::JobConf;
use wap::engine::EngineOptions;
use wap::job::{Job, JobOptions, Mode, Status};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Writes a job over `rows` rows in one partition and returns (peak heap during the run, CSV bytes).
async fn peak_for(rows: usize) -> (usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/2024-01-01");
    std::fs::create_dir_all(&data).unwrap();
    let csv = data.join("orders.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        writeln!(w, "order_id,customer_id,amount,status,note").unwrap();
        // Ids in scrambled order so that the sort has real work to do.
        for i in 0..rows {
            let id = (i * 7_919) % rows;
            writeln!(
                w,
                "{id},{},{}.{:02},placed,note number {i} for order {id}",
                i % 1000,
                i % 500,
                i % 100
            )
            .unwrap();
        }
    }
    let size = std::fs::metadata(&csv).unwrap().len();
    let conf = dir.path().join("job.yaml");
    std::fs::write(
        &conf,
        "name: big\ntable: lake/big\npartition_by: [d]\nkey: [order_id]\nsource:\n  format: csv\n  path: data/{date}/\ntransform: SELECT *, DATE '{date}' AS d FROM source\n",
    )
    .unwrap();
    let options = JobOptions {
        engine: EngineOptions {
            memory_limit: 32 << 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let job = Job::open(JobConf::load(&conf).unwrap(), options).unwrap();
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert_eq!(out.status, Status::Published);
    assert_eq!(out.rows, rows as u64);
    (peak, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_heap_does_not_grow_with_the_input() {
    let (small, small_csv) = peak_for(800_000).await;
    let (large, large_csv) = peak_for(3_200_000).await;
    eprintln!(
        "peak heap: {:.1} MiB for {:.1} MiB of CSV, {:.1} MiB for {:.1} MiB of CSV",
        small as f64 / 1048576.0,
        small_csv as f64 / 1048576.0,
        large as f64 / 1048576.0,
        large_csv as f64 / 1048576.0
    );
    assert!(large_csv > 4 * small_csv - small_csv / 10);
    assert!(
        (large as f64) < (small as f64) * 1.6,
        "peak heap grew with the input: {small} -> {large} bytes"
    );
    assert!(
        (large as u64) < large_csv,
        "peak heap {large} is not below the input size {large_csv}: the input was held in memory"
    );
}
