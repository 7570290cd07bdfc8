//! A store wrapper for tests: records every request and can inject a fault into one of them,
//! chosen by (operation, path pattern) or by its number in the request sequence.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// One recorded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: &'static str,
    pub path: String,
}

/// When a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The request fails without reaching the store.
    Before,
    /// The request reaches the store, then the caller sees an error.
    After,
    /// The request is answered `Precondition` without reaching the store.
    Precondition,
    /// The request is held back a while, then forwarded.
    Delay,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Before,
        FaultKind::After,
        FaultKind::Precondition,
        FaultKind::Delay,
    ];
}

#[derive(Debug, Clone)]
enum Fault {
    /// The next request with this op on a path containing the pattern.
    Matching {
        op: &'static str,
        path_contains: String,
        kind: FaultKind,
    },
    /// The request with this number (1-based, counting every recorded request).
    At { number: usize, kind: FaultKind },
}

/// How the wrapper treats conditional puts (to imitate weaker stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditions {
    /// Forward them.
    Honour,
    /// Turn them into plain overwrites, as a store that ignores `If-None-Match` would.
    Ignore,
    /// Answer `NotImplemented`, as a store without conditional writes does.
    Unsupported,
}

/// A rendezvous: the store signals `reached` when the paused request arrives and forwards it
/// only after `proceed`.
#[derive(Debug, Default)]
pub struct Pause {
    pub reached: tokio::sync::Notify,
    pub proceed: tokio::sync::Notify,
}

/// Records requests; optionally fails, or holds back, the first request matching an
/// (op, path) pattern.
#[derive(Debug)]
pub struct RecordingStore {
    inner: Arc<dyn ObjectStore>,
    log: Arc<Mutex<Vec<Request>>>,
    fault: Arc<Mutex<Option<Fault>>>,
    pause: Mutex<Option<(&'static str, String, Arc<Pause>)>>,
    conditions: Mutex<Conditions>,
}

impl fmt::Display for RecordingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordingStore({})", self.inner)
    }
}

impl RecordingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(RecordingStore {
            inner,
            log: Arc::new(Mutex::new(Vec::new())),
            fault: Arc::new(Mutex::new(None)),
            pause: Mutex::new(None),
            conditions: Mutex::new(Conditions::Honour),
        })
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// Forgets recorded requests.
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// Arms a one-shot fault for the next `op` on a path containing `path_contains`.
    pub fn fail_next(&self, op: &'static str, path_contains: &str, kind: FaultKind) {
        *self.fault.lock().unwrap() = Some(Fault::Matching {
            op,
            path_contains: path_contains.to_string(),
            kind,
        });
    }

    /// Arms a one-shot fault for request number `number` (1-based) from the last `clear`.
    pub fn fail_at(&self, number: usize, kind: FaultKind) {
        *self.fault.lock().unwrap() = Some(Fault::At { number, kind });
    }

    /// True while an armed fault has not fired.
    pub fn armed(&self) -> bool {
        self.fault.lock().unwrap().is_some()
    }

    /// Changes how conditional puts are treated from now on.
    pub fn set_conditions(&self, c: Conditions) {
        *self.conditions.lock().unwrap() = c;
    }

    /// Holds back the next `op` on a path containing `path_contains` until `proceed`.
    pub fn pause_next(&self, op: &'static str, path_contains: &str) -> Arc<Pause> {
        let pause = Arc::new(Pause::default());
        *self.pause.lock().unwrap() = Some((op, path_contains.to_string(), Arc::clone(&pause)));
        pause
    }

    async fn maybe_pause(&self, op: &'static str, path: &Path) {
        let hit = {
            let mut guard = self.pause.lock().unwrap();
            match &*guard {
                Some((o, p, _)) if *o == op && path.as_ref().contains(p.as_str()) => {
                    guard.take().map(|(_, _, pause)| pause)
                }
                _ => None,
            }
        };
        if let Some(pause) = hit {
            pause.reached.notify_one();
            pause.proceed.notified().await;
        }
    }

    fn record(&self, op: &'static str, path: &Path) -> Option<FaultKind> {
        record(&self.log, &self.fault, op, path)
    }

    fn injected(op: &'static str, path: &Path) -> object_store::Error {
        object_store::Error::Generic {
            store: "RecordingStore",
            source: format!("injected fault on {op} {path}").into(),
        }
    }
}

/// Logs a request and returns the fault to apply to it, if one is armed for it (disarming it).
fn record(
    log: &Mutex<Vec<Request>>,
    fault: &Mutex<Option<Fault>>,
    op: &'static str,
    path: &Path,
) -> Option<FaultKind> {
    let number = {
        let mut log = log.lock().unwrap();
        log.push(Request {
            op,
            path: path.to_string(),
        });
        log.len()
    };
    let mut fault = fault.lock().unwrap();
    let kind = match &*fault {
        Some(Fault::Matching {
            op: o,
            path_contains,
            kind,
        }) if *o == op && path.as_ref().contains(path_contains.as_str()) => *kind,
        Some(Fault::At { number: n, kind }) if *n == number => *kind,
        _ => return None,
    };
    *fault = None;
    Some(kind)
}

/// How long a `Delay` fault holds a request.
const DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs `forward` under `fault`: fail before, answer `Precondition`, delay, or forward and fail.
async fn apply<T>(
    fault: Option<FaultKind>,
    op: &'static str,
    path: &Path,
    forward: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match fault {
        None => forward.await,
        Some(FaultKind::Before) => Err(RecordingStore::injected(op, path)),
        Some(FaultKind::Precondition) => Err(object_store::Error::Precondition {
            path: path.to_string(),
            source: format!("injected precondition failure on {op}").into(),
        }),
        Some(FaultKind::Delay) => {
            tokio::time::sleep(DELAY).await;
            forward.await
        }
        Some(FaultKind::After) => {
            let _ = forward.await;
            Err(RecordingStore::injected(op, path))
        }
    }
}

/// A multipart upload that can fail its second part.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    parts: usize,
    fail_part: bool,
    location: Path,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.parts += 1;
        if self.fail_part && self.parts == 2 {
            let err = RecordingStore::injected("put_part", &self.location);
            return Box::pin(async move { Err(err) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

/// A listing under `fault`: an error instead of the listing (Before, Precondition), after it
/// (After: the caller saw every entry, then an error), or a late start (Delay).
fn faulty_listing(
    fault: Option<FaultKind>,
    prefix: Path,
    listing: BoxStream<'static, Result<ObjectMeta>>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    use futures::StreamExt;
    let error = move || RecordingStore::injected("list", &prefix);
    match fault {
        None => listing,
        Some(FaultKind::Before | FaultKind::Precondition) => {
            futures::stream::once(async move { Err(error()) }).boxed()
        }
        Some(FaultKind::After) => listing
            .chain(futures::stream::once(async move { Err(error()) }))
            .boxed(),
        Some(FaultKind::Delay) => futures::stream::once(async {
            tokio::time::sleep(DELAY).await;
            futures::stream::empty()
        })
        .flatten()
        .chain(listing)
        .boxed(),
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for RecordingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.maybe_pause("put", location).await;
        let fault = self.record("put", location);
        let mut opts = opts;
        if opts.mode != PutMode::Overwrite {
            match *self.conditions.lock().unwrap() {
                Conditions::Honour => {}
                Conditions::Ignore => opts.mode = PutMode::Overwrite,
                Conditions::Unsupported => {
                    return Err(object_store::Error::NotImplemented {
                        operation: "conditional put".into(),
                        implementer: "RecordingStore".into(),
                    });
                }
            }
        }
        apply(
            fault,
            "put",
            location,
            self.inner.put_opts(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // A fault here fails the upload's creation (After too: an upload created and never
        // completed is invisible).
        let fault = self.record("put_multipart", location);
        if fault.is_some_and(|f| f != FaultKind::Delay) {
            return Err(Self::injected("put_multipart", location));
        }
        let inner = apply(
            fault,
            "put_multipart",
            location,
            self.inner.put_multipart_opts(location, opts),
        )
        .await?;
        // A fault armed for "put_part" on this path fails the upload's second part.
        let fail_part = {
            let mut fault = self.fault.lock().unwrap();
            match &*fault {
                Some(Fault::Matching {
                    op: "put_part",
                    path_contains,
                    ..
                }) if location.as_ref().contains(path_contains.as_str()) => {
                    *fault = None;
                    true
                }
                _ => false,
            }
        };
        Ok(Box::new(FaultyUpload {
            inner,
            parts: 0,
            fail_part,
            location: location.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let fault = self.record(op, location);
        apply(fault, op, location, self.inner.get_opts(location, options)).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let fault = self.record("get_ranges", location);
        apply(
            fault,
            "get_ranges",
            location,
            self.inner.get_ranges(location, ranges),
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        use futures::StreamExt;
        let (log, fault, inner) = (
            Arc::clone(&self.log),
            Arc::clone(&self.fault),
            Arc::clone(&self.inner),
        );
        locations
            .then(move |path| {
                let (log, fault, inner) =
                    (Arc::clone(&log), Arc::clone(&fault), Arc::clone(&inner));
                async move {
                    let path = path?;
                    let f = record(&log, &fault, "delete", &path);
                    apply(f, "delete", &path, async {
                        inner
                            .delete_stream(futures::stream::iter([Ok(path.clone())]).boxed())
                            .next()
                            .await
                            .unwrap_or(Ok(path.clone()))
                    })
                    .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = prefix.cloned().unwrap_or_default();
        let fault = self.record("list", &prefix);
        faulty_listing(fault, prefix.clone(), self.inner.list(Some(&prefix)))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = prefix.cloned().unwrap_or_default();
        let fault = self.record("list", &prefix);
        faulty_listing(
            fault,
            prefix.clone(),
            self.inner.list_with_offset(Some(&prefix), offset),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let fault = self.record("list", &prefix.cloned().unwrap_or_default());
        apply(
            fault,
            "list",
            &prefix.cloned().unwrap_or_default(),
            self.inner.list_with_delimiter(prefix),
        )
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.record("copy", from);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.record("rename", from);
        self.inner.rename_opts(from, to, options).await
    }
}
