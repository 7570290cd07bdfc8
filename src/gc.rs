//! Retention and cleanup (`wap gc`): deletes what no retained version needs, once it is older
//! than the retention period.
//!
//! Invariants:
//! - A retained version always reads completely: no file it references is ever deleted.
//! - The current version (the newest committed manifest, even if the pointer lags) is always
//!   retained. A version is retained while it is among the `keep_versions` newest or while it
//!   was current less than `older_than` ago (a reader that read its manifest then may still be
//!   reading its files).
//! - Nothing younger than `older_than` is deleted, so a job still writing its staging prefix is
//!   never hurt. Objects outside `staging/` and `_wap/manifests/` are never touched (reports and
//!   quarantined rows under `_wap/runs/` are audit history), but for a Delta log's commits and
//!   checkpoints older than the checkpoint the oldest retained version reads from, and the
//!   Iceberg metadata and manifest lists of expired versions and the Iceberg manifests no
//!   retained version's snapshot names.
//! - Deleting is idempotent and every decision is made from manifests read before the first
//!   delete: gc interrupted at any request leaves every retained version readable, and a retry
//!   finishes the job. If any manifest cannot be read or verified, nothing is deleted.
//! - Expired manifests go before the files only they referenced, so no listed version ever
//!   misses a file, even while gc runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use crate::layout;
use crate::manifest::Manifest;
use crate::versions::{self, VersionsError};

/// Default retention: 7 days.
pub const DEFAULT_OLDER_THAN_SECONDS: i64 = 7 * 86_400;

/// Errors of gc. Nothing was deleted unless the error names a delete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    #[error(transparent)]
    Versions(#[from] VersionsError),
    #[error("gc: unable to list {prefix}: {source}")]
    List {
        prefix: String,
        source: object_store::Error,
    },
    #[error("gc: unable to delete {path}: {source} (gc is idempotent: run it again)")]
    Delete {
        path: String,
        source: object_store::Error,
    },
    #[error(
        "gc: version {version} has no readable publication time ({published_at:?}); nothing deleted\nhelp: gc decides retention from publication times and never guesses; restore that manifest from a backup or run gc with a --keep-versions that also keeps the version before it"
    )]
    BadTime { version: u64, published_at: String },
}

/// What to keep.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Retention in seconds: nothing younger is deleted, and a version stays while it was current
    /// less than this long ago.
    pub older_than_seconds: i64,
    /// Keep at least this many newest versions whatever their age (None: age alone decides).
    pub keep_versions: Option<usize>,
    /// List what would go, delete nothing.
    pub dry_run: bool,
    /// The clock (tests pin it).
    pub now: DateTime<Utc>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            older_than_seconds: DEFAULT_OLDER_THAN_SECONDS,
            keep_versions: None,
            dry_run: false,
            now: Utc::now(),
        }
    }
}

/// Why an object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A staged file of a run no version ever referenced (failed audit, crash, conflict).
    UnpublishedRun,
    /// A data file only expired versions referenced.
    ExpiredVersion,
    /// The manifest of an expired version.
    ExpiredManifest,
    /// A Delta commit or checkpoint older than the checkpoint the oldest retained version
    /// reads from.
    ExpiredDeltaLog,
    /// Iceberg metadata or a manifest list of an expired version, or an Iceberg manifest no
    /// retained version's snapshot names.
    ExpiredIcebergMetadata,
}

/// One object gc deletes (or would, with `dry_run`).
#[derive(Debug, Clone, Serialize)]
pub struct Doomed {
    pub path: String,
    pub bytes: u64,
    pub reason: Reason,
}

/// The result of `wap gc` (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Objects last modified before this are old enough to delete (RFC 3339).
    pub cutoff: String,
    pub current_version: u64,
    pub retained_versions: Vec<u64>,
    pub expired_versions: Vec<u64>,
    pub deleted: Vec<Doomed>,
    pub deleted_bytes: u64,
    /// Unreferenced staged objects kept because they are younger than the cutoff.
    pub kept_young: usize,
}

impl crate::job::Job {
    /// `wap gc` on the job's table: see [`gc`]. With `formats: [delta]`, first writes any
    /// missing Delta commit, then also deletes the Delta log entries that a checkpoint covers
    /// and no retained version needs ([`crate::delta::DeltaLog::expired`]).
    pub async fn gc(&self, options: &GcOptions) -> crate::Result<GcReport> {
        let delta = self
            .conf()
            .formats
            .contains(&crate::conf::TableFormat::Delta);
        let iceberg = self.iceberg();
        if (delta || iceberg.is_some()) && !options.dry_run {
            let latest = versions::latest_version(self.store()).await?;
            self.sync_formats(latest).await?;
        }
        let mut report = gc(self.store(), options).await?;
        if let (true, Some(&oldest)) = (delta, report.retained_versions.first()) {
            let log = crate::delta::DeltaLog::new(Arc::clone(self.store()));
            let doomed: Vec<Doomed> = log
                .expired(oldest)
                .await?
                .into_iter()
                .map(|p| Doomed {
                    path: p.to_string(),
                    bytes: 0,
                    reason: Reason::ExpiredDeltaLog,
                })
                .collect();
            if !options.dry_run {
                delete_all(self.store(), &doomed.iter().collect::<Vec<_>>()).await?;
            }
            report.deleted.extend(doomed);
        }
        if let Some(log) = iceberg {
            let cutoff = options.now - chrono::Duration::seconds(options.older_than_seconds.max(0));
            let mut doomed = Vec::new();
            for (path, at, bytes) in log.expired(&report.retained_versions).await? {
                let manifest = matches!(
                    layout::iceberg_entry(&path),
                    Some(layout::IcebergEntry::Manifest(_))
                );
                // A manifest not yet named by any list may be a publish under way.
                if manifest && at >= cutoff {
                    report.kept_young += 1;
                    continue;
                }
                doomed.push(Doomed {
                    path: path.to_string(),
                    bytes,
                    reason: Reason::ExpiredIcebergMetadata,
                });
            }
            if !options.dry_run {
                delete_all(self.store(), &doomed.iter().collect::<Vec<_>>()).await?;
            }
            report.deleted_bytes += doomed.iter().map(|d| d.bytes).sum::<u64>();
            report.deleted.extend(doomed);
        }
        Ok(report)
    }
}

/// Plans and (unless `dry_run`) carries out gc on the table at `store`.
pub async fn gc(store: &Arc<dyn ObjectStore>, options: &GcOptions) -> Result<GcReport, GcError> {
    let cutoff = options.now - chrono::Duration::seconds(options.older_than_seconds.max(0));
    // Every manifest, verified, before anything is decided.
    let sizes = versions::list_manifests(store).await?;
    let listed: Vec<u64> = sizes.keys().copied().collect();
    let latest = versions::latest_version(store)
        .await?
        .max(listed.last().copied().unwrap_or(0));
    let mut manifests: BTreeMap<u64, Manifest> = BTreeMap::new();
    let all: Vec<u64> = listed
        .iter()
        .copied()
        .chain(std::iter::once(latest).filter(|v| *v > 0))
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    let read: Vec<Manifest> = futures::stream::iter(all.iter().copied())
        .map(|v| versions::read_manifest(store, v))
        .buffered(16)
        .try_collect()
        .await?;
    for m in read {
        manifests.insert(m.version, m);
    }
    // Their file lists, each segment read once.
    versions::resolve_files(store, manifests.values_mut()).await?;

    // Retention of versions.
    let versions: Vec<u64> = manifests.keys().copied().collect();
    let mut retained = BTreeSet::new();
    for (i, v) in versions.iter().enumerate() {
        let newest_n = options
            .keep_versions
            .is_some_and(|n| versions.len() - i <= n);
        let retain = newest_n
            || match versions.get(i + 1) {
                None => true,
                Some(next) => {
                    let superseded = &manifests[next].change.published_at;
                    let at = DateTime::parse_from_rfc3339(superseded)
                        .map_err(|_| GcError::BadTime {
                            version: *next,
                            published_at: superseded.clone(),
                        })?
                        .with_timezone(&Utc);
                    at > cutoff
                }
            };
        if retain {
            retained.insert(*v);
        }
    }
    let expired: Vec<u64> = versions
        .iter()
        .copied()
        .filter(|v| !retained.contains(v))
        .collect();
    // A version needs its data files and the segments listing them.
    let referenced = |m: &'_ Manifest| -> Vec<String> {
        m.files()
            .map(|f| f.path.clone())
            .chain(m.segments().map(str::to_string))
            .collect()
    };
    let needed: BTreeSet<String> = retained
        .iter()
        .flat_map(|v| referenced(&manifests[v]))
        .collect();
    let ever: BTreeSet<String> = manifests.values().flat_map(referenced).collect();

    // Staged objects no retained version needs.
    let mut doomed = Vec::new();
    let mut kept_young = 0;
    let staging = Path::from(layout::STAGING);
    let mut listing = store.list(Some(&staging));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| GcError::List {
            prefix: staging.to_string(),
            source,
        })?;
        let path = meta.location.as_ref();
        if needed.contains(path) {
            continue;
        }
        if meta.last_modified >= cutoff {
            kept_young += 1;
            continue;
        }
        doomed.push(Doomed {
            path: path.to_string(),
            bytes: meta.size,
            reason: if ever.contains(path) {
                Reason::ExpiredVersion
            } else {
                Reason::UnpublishedRun
            },
        });
    }
    doomed.sort_by(|a, b| a.path.cmp(&b.path));
    // Manifests first: once an expired version's manifest is gone nobody can ask for it, so an
    // interrupted gc never leaves a listed version whose files are missing (only orphan files,
    // which the next gc deletes).
    let manifests_doomed: Vec<Doomed> = expired
        .iter()
        .map(|v| Doomed {
            path: layout::manifest_path(*v).to_string(),
            bytes: sizes.get(v).copied().unwrap_or(0),
            reason: Reason::ExpiredManifest,
        })
        .collect();
    let doomed: Vec<Doomed> = manifests_doomed.into_iter().chain(doomed).collect();
    if !options.dry_run {
        let (first, then): (Vec<&Doomed>, Vec<&Doomed>) = doomed
            .iter()
            .partition(|d| d.reason == Reason::ExpiredManifest);
        delete_all(store, &first).await?;
        delete_all(store, &then).await?;
    }
    Ok(GcReport {
        dry_run: options.dry_run,
        cutoff: cutoff.to_rfc3339(),
        current_version: latest,
        retained_versions: retained.into_iter().collect(),
        expired_versions: expired,
        deleted_bytes: doomed.iter().map(|d| d.bytes).sum(),
        deleted: doomed,
        kept_young,
    })
}

/// Deletes `objects`, 16 at a time; an object already gone is fine (gc is idempotent).
async fn delete_all(store: &Arc<dyn ObjectStore>, objects: &[&Doomed]) -> Result<(), GcError> {
    futures::stream::iter(objects.iter().map(|d| Path::from(d.path.as_str())))
        .map(|path| async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(source) => Err(GcError::Delete {
                    path: path.to_string(),
                    source,
                }),
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}
