//! Exhaustive fault injection (the fault model of DESIGN.md): run an operation once cleanly and
//! count its requests K; then for every k in 1..=K and every fault kind, run it with that fault
//! at request k, check the table, retry without faults, and check again.
//!
//! After the faulty attempt the current version is the old one or the new one, whole, and every
//! retained version reads. After the retry the table equals the clean result row for row, with
//! no duplicate key. The same for `run`, `rollback` and `gc`, on memory, the local filesystem and
//! S3, and for merge runs and incremental merge runs, whose watermark must always be the one of
//! the version the table reads as.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::memory::InMemory;
use wap::job::{Job, Mode, Status};

use crate::fixture::{Fixture, rows};
use crate::merge::{MergeFixture, incremental_fixture};
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

/// Day 1 loads four customers in three countries. Day 2 updates one, deletes one (its
/// partition empties), moves one to another country, inserts one, deletes a missing key and
/// replays one unchanged row.
fn merge_batches(f: &MergeFixture) {
    f.batch(
        "2024-01-01",
        &[
            "1,DE,a@x,gold,pending,2024-01-01T10:00:00,I",
            "2,DE,b@x,silver,pending,2024-01-01T10:00:00,I",
            "3,FR,c@x,gold,pending,2024-01-01T10:00:00,I",
            "4,US,d@x,bronze,pending,2024-01-01T10:00:00,I",
        ],
    );
    f.batch(
        "2024-01-02",
        &[
            // Before the incremental window (watermark 10:00 minus 1h): not read then.
            "2,DE,b@late,silver,pending,2024-01-01T08:00:00,U",
            // At the watermark: read again by the lookback, unchanged.
            "1,DE,a@x,gold,pending,2024-01-01T10:00:00,I",
            "3,FR,c@x,gold,pending,2024-01-02T10:00:00,D",
            "4,DE,d@x,bronze,done,2024-01-02T11:00:00,U",
            "5,US,e@x,gold,pending,2024-01-02T12:00:00,I",
            "9,US,z@x,gold,pending,2024-01-02T12:00:00,D",
        ],
    );
}

/// The job of a case: the orders job (overwrite) or the customers job (merge).
enum Setup {
    Orders(Fixture),
    Customers(MergeFixture),
}

impl Setup {
    fn job_on(&self, store: Arc<dyn ObjectStore>) -> Job {
        match self {
            Setup::Orders(f) => f.job_on(store),
            Setup::Customers(f) => f.job_on(store),
        }
    }

    /// The table's store on the local filesystem, unwrapped.
    fn table_store(&self) -> Arc<dyn ObjectStore> {
        match self {
            Setup::Orders(f) => f.table_store(),
            Setup::Customers(f) => f.table_store(),
        }
    }

    /// A version's rows, sorted, each starting with its key.
    async fn rows(&self, job: &Job, version: Option<u64>) -> Vec<String> {
        match self {
            Setup::Orders(_) => rows(job, version).await,
            Setup::Customers(_) => crate::merge::table(job, version).await,
        }
    }
}

/// A fresh table on `backend` with the sources of `op` written.
fn table(backend: Backend, name: &str, op: Operation) -> (Setup, Arc<dyn ObjectStore>) {
    table_in(backend, name, op, Projected::None)
}

/// The other formats a fault test projects into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projected {
    None,
    Delta,
    Iceberg,
    Both,
}

impl Projected {
    pub fn delta(self) -> bool {
        matches!(self, Projected::Delta | Projected::Both)
    }

    pub fn iceberg(self) -> bool {
        matches!(self, Projected::Iceberg | Projected::Both)
    }

    /// After any fault: no projection names a version `wap` did not commit.
    pub async fn never_ahead(self, store: &Arc<dyn ObjectStore>) {
        if self.delta() {
            crate::delta::assert_log_never_ahead(store).await;
        }
        if self.iceberg() {
            crate::iceberg::assert_metadata_never_ahead(store).await;
        }
    }

    /// After a clean run or a retry: every projection is whole.
    pub async fn whole(self, store: &Arc<dyn ObjectStore>) {
        if self.delta() {
            crate::delta::assert_log_whole(store).await;
        }
        if self.iceberg() {
            crate::iceberg::assert_metadata_whole(store).await;
        }
    }
}

/// [`table`], optionally projected into Delta.
fn table_in(
    backend: Backend,
    name: &str,
    op: Operation,
    formats: Projected,
) -> (Setup, Arc<dyn ObjectStore>) {
    let f = match op {
        Operation::Merge => {
            let f = MergeFixture::new("", "");
            merge_batches(&f);
            Setup::Customers(f)
        }
        Operation::Incremental => {
            let f = incremental_fixture("");
            merge_batches(&f);
            Setup::Customers(f)
        }
        Operation::Run | Operation::Rollback | Operation::Gc => {
            let f = Fixture::new();
            sources(&f);
            Setup::Orders(f)
        }
    };
    let conf = match &f {
        Setup::Orders(f) => &f.conf,
        Setup::Customers(f) => &f.conf,
    };
    if formats.delta() {
        crate::delta::enable_delta(conf);
    }
    if formats.iceberg() {
        crate::iceberg::enable_iceberg(conf, "");
    }
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
    /// A merge of day 2's batch (updates, a delete, a key moving partition, inserts) into the
    /// customers table holding day 1.
    Merge,
    /// The same as an incremental merge: the window starts an hour before day 1's watermark.
    Incremental,
}

async fn prepare(op: Operation, job: &Job) {
    if matches!(op, Operation::Merge | Operation::Incremental) {
        let first = job.run("2024-01-01", Mode::Publish).await.unwrap();
        assert_eq!(first.status, Status::Published, "{:?}", first.message);
        return;
    }
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
        Operation::Run | Operation::Merge | Operation::Incremental => {
            job.run("2024-01-02", Mode::Publish).await.map(|o| o.status)
        }
        Operation::Rollback => job.rollback(1).await.map(|o| o.status),
        Operation::Gc => job.gc(&gc_options()).await.map(|_| Status::Published),
    }
}

/// Everything a check compares: the current version's rows and watermarks, and the object
/// listing (for gc).
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    rows: Vec<String>,
    watermarks: BTreeMap<String, String>,
    objects: BTreeSet<String>,
}

impl State {
    /// What a reader sees: the rows with the watermark stored beside them.
    fn visible(&self) -> (&Vec<String>, &BTreeMap<String, String>) {
        (&self.rows, &self.watermarks)
    }
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
async fn state(f: &Setup, store: &Arc<dyn ObjectStore>, context: &str) -> State {
    let job = f.job_on(Arc::clone(store));
    let current = f.rows(&job, None).await;
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
        let got = f.rows(&job, Some(m.version)).await;
        assert_eq!(
            got.len() as u64,
            m.rows(),
            "{context}: version {} does not read completely",
            m.version
        );
    }
    let watermarks = job.show(None).await.unwrap().watermarks;
    State {
        rows: current,
        watermarks,
        objects: objects(store).await,
    }
}

/// Runs the exhaustive test of `op` on `backend` with `kinds`, optionally with `formats: [delta]`
/// (then after any fault every Delta commit is one of a committed version, and after the retry
/// the log is whole); returns (K, cases run, cases whose fault fired).
pub async fn exhaustive_in(
    backend: Backend,
    op: Operation,
    kinds: &[FaultKind],
    formats: Projected,
) -> (usize, usize, usize) {
    // The clean run: its request count and its result.
    let (f, store) = table_in(backend, "faults-clean", op, formats);
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
    formats.whole(&store).await;

    let (mut cases, mut fired) = (0, 0);
    for k in 1..=k_total {
        for &kind in kinds {
            let context = format!(
                "{op:?} on {backend:?}, {kind:?} at request {k} of {k_total} ({} {})",
                clean_requests[k - 1].op,
                clean_requests[k - 1].path
            );
            let (f, store) = table_in(backend, "faults", op, formats);
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
            formats.never_ahead(&store).await;
            assert!(
                after.visible() == old.visible() || after.visible() == clean.visible(),
                "{context}: current version is neither the old nor the new one: {:?} ({first:?})",
                after.visible()
            );
            // Retry without faults.
            let retry = f.job_on(Arc::clone(&store));
            let second = perform(op, &retry).await;
            assert!(
                second.is_ok(),
                "{context}: the retry failed: {second:?} (first attempt: {first:?})"
            );
            let end = state(&f, &store, &format!("{context}, after the retry")).await;
            formats.whole(&store).await;
            assert_eq!(
                end.visible(),
                clean.visible(),
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
                    } else if seg.starts_with("snap-") && seg.ends_with(".avro") {
                        // Iceberg manifest lists and manifests: named by snapshot ids (from
                        // the table id), runs and content.
                        "snap-<snapshot>.avro"
                    } else if seg.ends_with("-m0.avro") {
                        "<run>-<digest>-m0.avro"
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
    report_in(backend, op, kinds, Projected::None).await
}

async fn report_in(backend: Backend, op: Operation, kinds: &[FaultKind], formats: Projected) {
    let (k, cases, fired) = exhaustive_in(backend, op, kinds, formats).await;
    assert!(k > 0 && cases == k * kinds.len());
    let with = match formats {
        Projected::None => "",
        Projected::Delta => " with formats: [delta]",
        Projected::Iceberg => " with formats: [iceberg]",
        Projected::Both => " with formats: [delta, iceberg]",
    };
    println!(
        "fault injection: {op:?} on {backend:?}{with}: K = {k} requests, {cases} cases ({fired} faults fired), all converged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_with_a_delta_log() {
    for op in [
        Operation::Run,
        Operation::Rollback,
        Operation::Gc,
        Operation::Merge,
    ] {
        report_in(Backend::Memory, op, &FaultKind::ALL, Projected::Delta).await;
    }
    report_in(
        Backend::Local,
        Operation::Run,
        &FaultKind::ALL,
        Projected::Delta,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_with_a_delta_log_on_s3() {
    report_in(
        Backend::S3,
        Operation::Run,
        &FaultKind::ALL,
        Projected::Delta,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_with_iceberg_metadata() {
    for op in [
        Operation::Run,
        Operation::Rollback,
        Operation::Gc,
        Operation::Merge,
    ] {
        report_in(Backend::Memory, op, &FaultKind::ALL, Projected::Iceberg).await;
    }
    report_in(
        Backend::Local,
        Operation::Run,
        &FaultKind::ALL,
        Projected::Both,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_with_iceberg_metadata_on_s3() {
    report_in(
        Backend::S3,
        Operation::Run,
        &FaultKind::ALL,
        Projected::Iceberg,
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_of_a_merge() {
    report(Backend::Memory, Operation::Merge, &FaultKind::ALL).await;
    report(Backend::Local, Operation::Merge, &FaultKind::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_of_an_incremental_merge() {
    report(Backend::Memory, Operation::Incremental, &FaultKind::ALL).await;
    report(Backend::Local, Operation::Incremental, &FaultKind::ALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_request_of_merges_on_s3() {
    report(Backend::S3, Operation::Merge, &FaultKind::ALL).await;
    report(Backend::S3, Operation::Incremental, &FaultKind::ALL).await;
}

/// The two customers cases differ where they should: the incremental window leaves out the row
/// before it, which a plain merge applies.
#[tokio::test]
async fn the_merge_cases_differ_by_the_window() {
    for (op, want) in [
        (Operation::Merge, "b@late"),
        (Operation::Incremental, "b@x"),
    ] {
        let (f, store) = table(Backend::Memory, "window", op);
        let job = f.job_on(Arc::clone(&store));
        prepare(op, &job).await;
        perform(op, &job).await.unwrap();
        let rows = f.rows(&job, None).await;
        assert!(
            rows.iter().any(|r| r.starts_with("2|") && r.contains(want)),
            "{op:?}: {rows:?}"
        );
    }
}
