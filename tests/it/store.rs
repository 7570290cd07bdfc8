//! A store wrapper for tests: records every request and can inject a fault into one of them.

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
}

#[derive(Debug, Clone)]
struct Fault {
    op: &'static str,
    path_contains: String,
    kind: FaultKind,
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
    log: Mutex<Vec<Request>>,
    fault: Mutex<Option<Fault>>,
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
            log: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
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
        *self.fault.lock().unwrap() = Some(Fault {
            op,
            path_contains: path_contains.to_string(),
            kind,
        });
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
        self.log.lock().unwrap().push(Request {
            op,
            path: path.to_string(),
        });
        let mut fault = self.fault.lock().unwrap();
        match &*fault {
            Some(f) if f.op == op && path.as_ref().contains(&f.path_contains) => {
                let kind = f.kind;
                *fault = None;
                Some(kind)
            }
            _ => None,
        }
    }

    fn injected(op: &'static str, path: &Path) -> object_store::Error {
        object_store::Error::Generic {
            store: "RecordingStore",
            source: format!("injected fault on {op} {path}").into(),
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
        if fault == Some(FaultKind::Before) {
            return Err(Self::injected("put", location));
        }
        let result = self.inner.put_opts(location, payload, opts).await;
        if fault == Some(FaultKind::After) {
            return Err(Self::injected("put", location));
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if self.record("put_multipart", location).is_some() {
            return Err(Self::injected("put_multipart", location));
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        // A fault armed for "put_part" on this path fails the upload's second part.
        let fail_part = {
            let mut fault = self.fault.lock().unwrap();
            match &*fault {
                Some(f) if f.op == "put_part" && location.as_ref().contains(&f.path_contains) => {
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
        if self.record(op, location).is_some() {
            return Err(Self::injected(op, location));
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if self.record("get_ranges", location).is_some() {
            return Err(Self::injected("get_ranges", location));
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.log.lock().unwrap().push(Request {
            op: "delete",
            path: String::new(),
        });
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.record("list", &prefix.cloned().unwrap_or_default());
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.record("list", &prefix.cloned().unwrap_or_default());
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.record("list", &prefix.cloned().unwrap_or_default());
        self.inner.list_with_delimiter(prefix).await
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
