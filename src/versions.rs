//! Reading a table's version history from storage: the pointer, the manifests, and the probe that
//! finds versions committed after the pointer was last moved.
//!
//! The commit point of a version is the creation of its manifest (put-if-absent); `_wap/current`
//! is a hint that is moved afterwards. A process that dies between the two leaves a committed
//! version the pointer does not name yet, so readers start at the pointer and probe forward
//! (one HEAD in the common case) until a version is missing. Reading the current version costs
//! pointer + probe + manifest, whatever the history length.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, UpdateVersion};

use crate::layout;
use crate::manifest::{DataFile, Manifest, ManifestError, Partition, Pointer, Segment};

/// Segments read at once.
const SEGMENT_CONCURRENCY: usize = 32;

/// Most versions a reader walks past a stale pointer before giving up.
const MAX_PROBE: u64 = 10_000;

/// Errors reading versions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VersionsError {
    #[error("unable to {op} {path}: {source}")]
    Storage {
        op: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("version {version} does not exist (current version: {current})")]
    NoSuchVersion { version: u64, current: u64 },
    #[error(
        "segment {segment} does not match the index for partition {partition}: {message}\n\
         help: the version cannot be read as it is; restore {segment} from a backup, or `wap \
         rollback --to` a version that does not use it"
    )]
    SegmentMismatch {
        segment: String,
        partition: String,
        message: String,
    },
}

impl VersionsError {
    /// True when the caller asked for something that is not there.
    pub fn is_usage(&self) -> bool {
        matches!(self, VersionsError::NoSuchVersion { .. })
    }

    pub(crate) fn storage(
        op: &'static str,
        path: &object_store::path::Path,
        source: object_store::Error,
    ) -> Self {
        VersionsError::Storage {
            op,
            path: path.to_string(),
            source,
        }
    }
}

/// The pointer as read, with what a compare-and-swap needs.
#[derive(Debug, Clone)]
pub struct PointerRead {
    pub pointer: Pointer,
    pub version: UpdateVersion,
}

/// Reads `_wap/current`; `None` for a table that has never been published.
pub async fn read_pointer(
    store: &Arc<dyn ObjectStore>,
) -> Result<Option<PointerRead>, VersionsError> {
    let path = layout::pointer_path();
    let got = match store.get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(VersionsError::storage("read", &path, e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| VersionsError::storage("read", &path, e))?;
    Ok(Some(PointerRead {
        pointer: Pointer::decode(&bytes)?,
        version,
    }))
}

/// Reads and verifies the manifest of `version`.
pub async fn read_manifest(
    store: &Arc<dyn ObjectStore>,
    version: u64,
) -> Result<Manifest, VersionsError> {
    let path = layout::manifest_path(version);
    let got = match store.get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            let current = latest_version(store).await.unwrap_or(0);
            return Err(VersionsError::NoSuchVersion { version, current });
        }
        Err(e) => return Err(VersionsError::storage("read manifest", &path, e)),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| VersionsError::storage("read manifest", &path, e))?;
    Ok(Manifest::decode(&path, &bytes, version)?)
}

/// True when the manifest of `version` exists (one HEAD).
pub async fn manifest_exists(
    store: &Arc<dyn ObjectStore>,
    version: u64,
) -> Result<bool, VersionsError> {
    let path = layout::manifest_path(version);
    match store.head(&path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(VersionsError::storage("probe", &path, e)),
    }
}

/// The newest committed version (0 when none): the pointer, then a probe forward.
pub async fn latest_version(store: &Arc<dyn ObjectStore>) -> Result<u64, VersionsError> {
    let mut version = read_pointer(store).await?.map_or(0, |p| p.pointer.version);
    let limit = version + MAX_PROBE;
    while version < limit && manifest_exists(store, version + 1).await? {
        version += 1;
    }
    Ok(version)
}

/// The current version's manifest, `None` for a table never published.
pub async fn current(store: &Arc<dyn ObjectStore>) -> Result<Option<Manifest>, VersionsError> {
    match latest_version(store).await? {
        0 => Ok(None),
        v => Ok(Some(read_manifest(store, v).await?)),
    }
}

/// Every committed version, ascending (one listing).
pub async fn list_versions(store: &Arc<dyn ObjectStore>) -> Result<Vec<u64>, VersionsError> {
    Ok(list_manifests(store).await?.into_keys().collect())
}

/// Every committed version with its manifest's size in bytes (one listing).
pub async fn list_manifests(
    store: &Arc<dyn ObjectStore>,
) -> Result<std::collections::BTreeMap<u64, u64>, VersionsError> {
    let prefix = layout::manifests_folder();
    let mut listing = store.list(Some(&prefix));
    let mut out = std::collections::BTreeMap::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| VersionsError::storage("list", &prefix, e))?;
        if let Some(v) = layout::version_of(&meta.location) {
            out.insert(v, meta.size);
        }
    }
    Ok(out)
}

/// Reads and verifies the segments at `paths`, [`SEGMENT_CONCURRENCY`] at a time.
pub async fn read_segments(
    store: &Arc<dyn ObjectStore>,
    paths: BTreeSet<String>,
) -> Result<BTreeMap<String, Segment>, VersionsError> {
    let reads = paths.into_iter().map(|p| {
        let store = Arc::clone(store);
        async move {
            let path = object_store::path::Path::from(p.as_str());
            let bytes = store
                .get(&path)
                .await
                .map_err(|e| VersionsError::storage("read segment", &path, e))?
                .bytes()
                .await
                .map_err(|e| VersionsError::storage("read segment", &path, e))?;
            Ok::<_, VersionsError>((p, Segment::decode(&path, &bytes)?))
        }
    });
    futures::stream::iter(reads)
        .buffer_unordered(SEGMENT_CONCURRENCY)
        .try_collect()
        .await
}

/// Fills in the file list of every partition of `manifests` whose files are not known yet,
/// reading each segment they name once.
pub async fn resolve_files<'a>(
    store: &Arc<dyn ObjectStore>,
    manifests: impl IntoIterator<Item = &'a mut Manifest>,
) -> Result<(), VersionsError> {
    let mut manifests: Vec<&mut Manifest> = manifests.into_iter().collect();
    let mut partitions: Vec<&mut Partition> = manifests
        .iter_mut()
        .flat_map(|m| m.partitions.values_mut())
        .collect();
    resolve_partitions(store, &mut partitions).await
}

/// [`resolve_files`] for some partitions.
pub async fn resolve_partitions(
    store: &Arc<dyn ObjectStore>,
    partitions: &mut [&mut Partition],
) -> Result<(), VersionsError> {
    let wanted: BTreeSet<String> = partitions
        .iter()
        .filter(|p| !p.files_known())
        .filter_map(|p| p.segment.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let segments = read_segments(store, wanted).await?;
    for p in partitions.iter_mut() {
        if p.files_known() {
            continue;
        }
        let Some(name) = p.segment.as_deref() else {
            continue;
        };
        let mismatch = |message: String| VersionsError::SegmentMismatch {
            segment: name.to_string(),
            partition: p.path.clone(),
            message,
        };
        let files: &Vec<DataFile> = segments
            .get(name)
            .and_then(|s| s.partitions.get(&p.path))
            .ok_or_else(|| mismatch("the segment has no file list for it".into()))?;
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        if files.len() as u64 != p.file_count || rows != p.rows {
            return Err(mismatch(format!(
                "{} files and {rows} rows in the segment, {} files and {} rows in the index",
                files.len(),
                p.file_count,
                p.rows
            )));
        }
        p.files = files.clone();
    }
    Ok(())
}

/// The file lists of `partitions` (reading their segments), without changing them.
pub async fn files_of<'a>(
    store: &Arc<dyn ObjectStore>,
    partitions: impl IntoIterator<Item = &'a Partition>,
) -> Result<Vec<DataFile>, VersionsError> {
    let mut owned: Vec<Partition> = partitions.into_iter().cloned().collect();
    let mut refs: Vec<&mut Partition> = owned.iter_mut().collect();
    resolve_partitions(store, &mut refs).await?;
    Ok(owned.into_iter().flat_map(|p| p.files).collect())
}
