//! Exhaustive fault injection (the fault model of DESIGN.md): run an operation once cleanly and
//! count its requests K; then for every k in 1..=K and every fault kind, run it with that fault
//! at request k, check the table, retry without faults, and check again.
//!
//! After the faulty attempt the current version is the old one or the new one, whole, and every
//! retained version reads. After the retry the table equals the clean result row for row, with
//! no duplicate key. The same for `run`, `rollback` and `gc`, on memory, the local filesystem and
//! S3.

use std::collections::BTreeSet;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::memory::InMemory;
use wap::job::{Job, Mode, Status};

use crate::fixture::{Fixture, rows};
use crate::store::{FaultKind, RecordingStore};

/// Day 1 publishes order_date=2024-01-01 (orders 1-3). Day 2's source replaces that partition
/// (orders 1-2, new amounts) and adds order_date=2024-01-02 (orders 10-12).
fn sources(f: &Fixture) {
    f.raw(
        "2024-01-01",
        "orders.csv",
        "order_id,customer_id,amount,status,order_ts\n\
         1,1,1.00,placed,2024-01-01T01:00:00\n\
         2,1,2.00,placed,2024-01-01T02:00:00\n\
         3,2,3.00,shipped,2024-01-01T03:00:00\n",
    );
    f.raw(
        "2024-01-02",
        "orders.csv",
        "order_id,customer_id,amount,status,order_ts\n\
         1,1,1.50,shipped,2024-01-01T01:00:00\n\
         2,1,2.50,returned,2024-01-01T02:00:00\n\
         10,3,10.00,placed,2024-01-02T01:00:00\n\
         11,3,11.00,placed,2024-01-02T02:00:00\n\
         12,4,12.00,placed,2024-01-02T03:00:00\n",
    );
    // Day 3 fails its audit (unknown status): staged, never published.
    f.raw(
        "2024-01-03",
        "orders.csv",
        "order_id,customer_id,amount,status,order_ts\n\
         20,5,20.00,lost,2024-01-03T01:00:00\n",
    );
}

/// Where the table lives in one case.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Local,
    S3,
}

/// A fresh table on `backend` with the sources written.
fn table(backend: Backend, name: &str) -> (Fixture, Arc<dyn ObjectStore>) {
    let f = Fixture::new();
    sources(&f);
    let store: Arc<dyn ObjectStore> = match backend {
        Backend::Memory => Arc::new(InMemory::new()),
        Backend::Local => f.table_store(),
        Backend::S3 => {
            let s3 = crate::s3::s3();
            s3.store(&s3.prefix(name))
        }
    };
    (f, store)
}

/// What an operation does, from a prepared table.
#[derive(Clone, Copy, Debug)]
pub enum Operation {
    /// Day 2 over a table holding day 1.
    Run,
    /// Rollback to version 1 over versions 1 (day 1) and 2 (day 2).
    Rollback,
    /// gc (retention 0, keep 1 version) over versions 1 and 2 and day 3's unpublished staging.
    Gc,
}

async fn prepare(op: Operation, job: &Job) {
    let first = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(first.status, Status::Published);
    if matches!(op, Operation::Rollback | Operation::Gc) {
        let second = job.run("2024-01-02", Mode::Publish).await.unwrap();
        assert_eq!(second.status, Status::Published);
    }
    if matches!(op, Operation::Gc) {
        let third = job.run("2024-01-03", Mode::Publish).await.unwrap();
        assert_eq!(third.status, Status::AuditFailed);
    }
}

fn gc_options() -> wap::gc::GcOptions {
    wap::gc::GcOptions {
        older_than_seconds: 0,
        keep_versions: Some(1),
        dry_run: false,
        // Everything written so far is older than the cutoff.
        now: chrono::Utc::now() + chrono::Duration::hours(1),
    }
}

async fn perform(op: Operation, job: &Job) -> Result<Status, wap::Error> {
    match op {
        Operation::Run => job.run("2024-01-02", Mode::Publish).await.map(|o| o.status),
        Operation::Rollback => job.rollback(1).await.map(|o| o.status),
        Operation::Gc => job.gc(&gc_options()).await.map(|_| Status::Published),
    }
}

/// Everything a check compares: the current version's rows, and the object listing (for gc).
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    rows: Vec<String>,
    objects: BTreeSet<String>,
}

async fn objects(store: &Arc<dyn ObjectStore>) -> BTreeSet<String> {
    use futures::TryStreamExt;
    store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// Reads the table without faults: the current version's rows (checked for duplicate keys),
/// and every retained version read completely.
async fn state(f: &Fixture, store: &Arc<dyn ObjectStore>, context: &str) -> State {
    let job = f.job_on(Arc::clone(store));
    let current = rows(&job, None).await;
    let keys: BTreeSet<&str> = current
        .iter()
        .map(|r| r.split('|').next().unwrap())
        .collect();
    assert_eq!(
        keys.len(),
        current.len(),
        "{context}: duplicate keys in {current:?}"
    );
    for m in job.log().await.unwrap() {
        let got = rows(&job, Some(m.version)).await;
        assert_eq!(
            got.len() as u64,
            m.rows(),
            "{context}: version {} does not read completely",
            m.version
        );
    }
    State {
        rows: current,
        objects: objects(store).await,
    }
}

/// Runs the exhaustive test of `op` on `backend` with `kinds`; returns (K, cases run, cases
/// whose fault fired).
pub async fn exhaustive(
    backend: Backend,
    op: Operation,
    kinds: &[FaultKind],
) -> (usize, usize, usize) {
    // The clean run: its request count and its result.
    let (f, store) = table(backend, "faults-clean");
    let rec = RecordingStore::new(Arc::clone(&store));
    let job = f.job_on(rec.clone());
    prepare(op, &job).await;
    let before = state(&f, &store, "clean, before").await;
    rec.clear();
    perform(op, &job).await.unwrap();
    let k_total = rec.requests().len();
    let clean = state(&f, &store, "clean, after").await;
    assert_ne!(before, clean, "{op:?} changes something");
    let clean_requests = rec.requests();

    let (mut cases, mut fired) = (0, 0);
    for k in 1..=k_total {
        for &kind in kinds {
            let context = format!(
                "{op:?} on {backend:?}, {kind:?} at request {k} of {k_total} ({} {})",
                clean_requests[k - 1].op,
                clean_requests[k - 1].path
            );
            let (f, store) = table(backend, "faults");
            let rec = RecordingStore::new(Arc::clone(&store));
            let job = f.job_on(rec.clone());
            prepare(op, &job).await;
            let old = state(&f, &store, &context).await;
            rec.clear();
            rec.fail_at(k, kind);
            let first = perform(op, &job).await;
            // Request counts can vary by one or two between runs (DataFusion's footer cache is
            // hit or not depending on how concurrent audit queries interleave): a fault armed
            // past the last request of this attempt does not fire, and the case still counts.
            let issued = rec.requests().len();
            assert!(
                !rec.armed() || issued < k,
                "{context}: the fault never fired ({issued} requests, {first:?})"
            );
            if !rec.armed() {
                fired += 1;
            }
            let after = state(&f, &store, &format!("{context}, after the fault")).await;
            assert!(
                after.rows == old.rows || after.rows == clean.rows,
                "{context}: current version is neither the old nor the new one: {:?} ({first:?})",
                after.rows
            );
            // Retry without faults.
            let retry = f.job_on(Arc::clone(&store));
            let second = perform(op, &retry).await;
            assert!(
                second.is_ok(),
                "{context}: the retry failed: {second:?} (first attempt: {first:?})"
            );
            let end = state(&f, &store, &format!("{context}, after the retry")).await;
            assert_eq!(
                end.rows, clean.rows,
                "{context}: the retry does not converge (first attempt: {first:?})"
            );
            if matches!(op, Operation::Gc) {
                assert_eq!(
                    relative(&end.objects),
                    relative(&clean.objects),
                    "{context}: gc retried leaves other objects than a clean gc"
                );
            }
            cases += 1;
        }
    }
    assert!(
        fired + 2 * kinds.len() >= cases,
        "{fired} of {cases} faults fired"
    );
    (k_total, cases, fired)
}

/// Object names with run ids (which hash the fixture's absolute source paths, so differ between
/// tables) masked, as a sorted list; minus `unchanged.json` records, which only a retry writes.
fn relative(objects: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .filter(|o| !o.ends_with("/unchanged.json"))
        .map(|o| {
            o.split('/')
                .map(|seg| {
                    if seg.len() == 24 && seg.chars().all(|c| c.is_ascii_hexdigit()) {
                        "<run>"
                    } else if seg.starts_with("_wap-files-") {
                        // Segments are named by their content, which names the run's files.
                        "_wap-files-<sha256>.json"
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    out.sort();
    out
}

async fn report(backend: Backend, op: Operation, kinds: &[FaultKind]) {
    let (k, cases, fired) = exhaustive(backend, op, kinds).await;
    assert!(k > 0 && cases == k * kinds.len());
    println!(
        "fault injection: {op:?} on {backend:?}: K = {k} requests, {cases} cases ({fired} faults fired), all converged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_of_a_run_on_memory() {
    report(Backend::Memory, Operation::Run, &FaultKind::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_of_a_run_on_the_local_filesystem() {
    report(Backend::Local, Operation::Run, &FaultKind::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_of_a_rollback() {
    report(Backend::Memory, Operation::Rollback, &FaultKind::ALL).await;
    report(Backend::Local, Operation::Rollback, &FaultKind::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_of_gc() {
    report(Backend::Memory, Operation::Gc, &FaultKind::ALL).await;
    report(Backend::Local, Operation::Gc, &FaultKind::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_on_s3() {
    report(Backend::S3, Operation::Run, &FaultKind::ALL).await;
    report(Backend::S3, Operation::Rollback, &FaultKind::ALL).await;
    report(Backend::S3, Operation::Gc, &FaultKind::ALL).await;
}
