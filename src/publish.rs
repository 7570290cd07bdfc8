//! Phase 3, publish: make staged partitions current by committing a new immutable manifest and
//! moving the pointer. Files are referenced in place, never copied: publish costs the same few
//! requests whatever the data size.
//!
//! ```text
//!  read pointer (B, ETag) ─► read manifest B ─► build B+1 ─► create manifest B+1 (put-if-absent)
//!                                                   ▲               │ ok: committed
//!                                                   │ rebase        ▼
//!              AlreadyExists: other run, disjoint ──┘        swap pointer (CAS on ETag) ─► done
//!              AlreadyExists: our run id  ─────────────────────────►┘
//!              AlreadyExists: other run, same partitions ─► Conflict (nothing changed)
//! ```
//!
//! Invariants:
//! - Creating `_wap/manifests/{v}.json` with put-if-absent is the commit point: exactly one writer
//!   wins each version. The pointer only ever names a committed version; readers probe past it.
//! - A version replaces only the partitions its run produced (dynamic partition overwrite);
//!   watermarks and the audit summary travel in the same manifest, so they move atomically with
//!   the data.
//! - Publishing content the base version already holds (same run id, same files) writes nothing.
//! - This is the only module that writes under `_wap/manifests` or `_wap/current`.
//! - With a Delta log ([`Publisher::with_delta`]): before each attempt the log is brought up to
//!   the base (missing commits written, a foreign one in the next slot refused); after the
//!   manifest is committed and before the pointer moves, its Delta commit is written. Nothing
//!   reaches `_delta_log` before its manifest is committed.
//! - With Iceberg metadata ([`Publisher::with_iceberg`]): the same, after the Delta commit
//!   (metadata, version hint, catalog). Nothing reaches `metadata/` before its manifest is
//!   committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Schema};
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tracing::{debug, info, warn};

use crate::delta::{DeltaError, DeltaLog};
use crate::iceberg::{IcebergError, IcebergLog};
use crate::layout;
use crate::manifest::{self, AuditSummary, Change, ChangeKind, Manifest, Partition, Pointer};
use crate::versions::{self, PointerRead, VersionsError};
use crate::watermark::Mark;

/// Errors of phase 3.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error(
        "publish conflict: version {version} (run {other_run}) already replaced partition(s) {} \
         that this run also replaces; nothing was published\n\
         help: re-run the job so that it audits and publishes on top of version {version}",
        partitions.join(", ")
    )]
    Conflict {
        version: u64,
        other_run: String,
        partitions: Vec<String>,
    },
    #[error(
        "rollback conflict: version {version} (run {other_run}) was published while rolling back; \
         nothing was published\nhelp: check `wap log` and run the rollback again"
    )]
    RollbackConflict { version: u64, other_run: String },
    #[error(
        "schema change refused: {message}; partitions this run does not replace would no longer \
         read\nhelp: keep the column's type, add columns instead, or re-run every partition"
    )]
    SchemaChange { message: String },
    #[error(
        "refusing to publish: the store holding {path} does not support put-if-absent, so two \
         publishers could both think they committed the same version\n\
         help: run `wap doctor --conf FILE` to see which conditional writes this store supports"
    )]
    NoPutIfAbsent { path: String },
    #[error("unable to {phase} {path}: {source}")]
    Storage {
        phase: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error(transparent)]
    Versions(#[from] VersionsError),
    /// Before the commit: the Delta log could not be brought up to date, or refuses this
    /// version. Nothing was published.
    #[error(transparent)]
    Delta(#[from] Box<DeltaError>),
    /// After the commit: the version is published, its Delta commit is not.
    #[error(
        "version {version} is published, but its Delta commit was not written: {source}\n\
         help: the next run, rollback or gc (or `wap doctor --repair`) writes the missing commit"
    )]
    DeltaAfterCommit {
        version: u64,
        source: Box<DeltaError>,
    },
    /// Before the commit: the Iceberg metadata could not be brought up to date, or refuses
    /// this version.
    #[error(transparent)]
    Iceberg(#[from] Box<IcebergError>),
    /// After the commit: the version is published, its Iceberg metadata is not (complete).
    #[error(
        "version {version} is published, but its Iceberg metadata was not written: {source}\n\
         help: the next run (or `wap doctor --repair`) writes it; readers of the Iceberg table \
         see the previous version until then"
    )]
    IcebergAfterCommit {
        version: u64,
        source: Box<IcebergError>,
    },
    #[error("gave up publishing after {attempts} attempts: other writers kept committing first")]
    Exhausted { attempts: u32 },
}

impl PublishError {
    /// True for a conflict with another publisher (exit code 4).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            PublishError::Conflict { .. }
                | PublishError::RollbackConflict { .. }
                | PublishError::Exhausted { .. }
        ) || matches!(self, PublishError::Iceberg(e) if e.is_conflict())
    }

    /// True when the change itself is not allowed (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            PublishError::SchemaChange { .. } | PublishError::NoPutIfAbsent { .. }
        ) || matches!(self, PublishError::Delta(e) if e.is_config())
            || matches!(self, PublishError::Iceberg(e) if e.is_config())
    }
}

/// What to publish.
#[derive(Debug, Clone)]
pub enum Proposal {
    /// Replace (or add) the run's partitions, keep the others.
    Replace {
        run_id: String,
        logical_date: String,
        table: String,
        schema: Schema,
        partition_by: Vec<String>,
        key: Vec<String>,
        partitions: Vec<Partition>,
        audits: Vec<AuditSummary>,
        /// Merge runs: what else the run changes and depends on.
        merge: Option<MergeChange>,
        /// Runs this one gives way to (the later dates of a backfill): a partition the base
        /// holds from one of them is not replaced, and a version of theirs since the base is
        /// rebased onto, never a conflict. Dates that publish out of order end as in date order.
        yield_to: BTreeSet<String>,
    },
    /// Make the content of an older version current again.
    Restore { run_id: String, target: Manifest },
}

/// What a merge run adds to its proposal.
#[derive(Debug, Clone, Default)]
pub struct MergeChange {
    /// Partitions the merge emptied: they leave the table.
    pub removed: Vec<String>,
    /// Partitions read to match keys; a version committed since the base that changed one of
    /// them (or one written or removed) is a conflict.
    pub read: Vec<String>,
    /// When the key does not contain the partition columns, a key may sit in any partition:
    /// every version committed since the base that changed partitions is a conflict.
    pub any_partition: bool,
    /// Job state to set (the greater of this and the base's value, for a watermark).
    pub watermarks: BTreeMap<String, String>,
}

impl Proposal {
    fn run_id(&self) -> &str {
        match self {
            Proposal::Replace { run_id, .. } | Proposal::Restore { run_id, .. } => run_id,
        }
    }
}

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// A new version was committed.
    Published { version: u64 },
    /// The current version already holds this content; nothing was written.
    Unchanged { version: u64 },
}

/// Retry settings.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Most manifests tried before giving up (each lost race is one attempt).
    pub max_attempts: u32,
    /// First backoff after a lost race; doubles, capped at one second.
    pub backoff: Duration,
    /// Move the pointer with compare-and-swap (true), or with an atomic overwrite on a store
    /// known to lack it (the local filesystem), saving the request that would be refused.
    pub compare_and_swap: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            max_attempts: 32,
            backoff: Duration::from_millis(5),
            compare_and_swap: true,
        }
    }
}

/// The entries of `proposed` that change `base`: a watermark (`incremental.*`) only moves
/// forward, so a value below the base's (a rebase onto a version with a later watermark) is
/// left out; other state is set as proposed.
fn moved_watermarks(
    base: &BTreeMap<String, String>,
    proposed: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    proposed
        .iter()
        .filter(|(k, v)| match base.get(*k) {
            None => true,
            Some(old) if k.starts_with(crate::watermark::PREFIX) => {
                match (Mark::parse(old), Mark::parse(v)) {
                    (Some(a), Some(b)) => b > a,
                    _ => old != *v,
                }
            }
            Some(old) => old != *v,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Commits versions of one table.
#[derive(Debug, Clone)]
pub struct Publisher {
    store: Arc<dyn ObjectStore>,
    options: PublishOptions,
    /// The Delta log each version is projected into (`formats: [delta]`).
    delta: Option<DeltaLog>,
    /// The Iceberg metadata each version is projected into (`formats: [iceberg]`).
    iceberg: Option<IcebergLog>,
}

/// True when `a` and `b` are the same column type for a table: string layouts (views, 64-bit
/// offsets) count as one type, binary layouts as another; they hold the same values and are
/// written to Parquet alike. Used by the publish guard and the `schema_change` rule.
pub fn same_column_type(a: &DataType, b: &DataType) -> bool {
    fn logical(t: &DataType) -> &DataType {
        match t {
            DataType::Utf8View | DataType::LargeUtf8 => &DataType::Utf8,
            DataType::BinaryView | DataType::LargeBinary => &DataType::Binary,
            t => t,
        }
    }
    logical(a) == logical(b)
}

/// Whether a table of schema `old` may take files of schema `new`: the reason when not.
pub fn compatible(old: &Schema, new: &Schema) -> Result<(), String> {
    for f in old.fields() {
        match new.field_with_name(f.name()) {
            Err(_) => return Err(format!("column `{}` would be dropped", f.name())),
            Ok(n) if !same_column_type(n.data_type(), f.data_type()) => {
                return Err(format!(
                    "column `{}` would change type from {} to {}",
                    f.name(),
                    f.data_type(),
                    n.data_type()
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

impl Publisher {
    /// A publisher for the table whose root is `store`.
    pub fn new(store: Arc<dyn ObjectStore>, options: PublishOptions) -> Self {
        Publisher {
            store,
            options,
            delta: None,
            iceberg: None,
        }
    }

    /// Also publishes every version as a Delta commit (see [`crate::delta`]): missing commits
    /// are written before a publish, this version's after its manifest, before the pointer.
    pub fn with_delta(mut self) -> Self {
        self.delta = Some(DeltaLog::new(Arc::clone(&self.store)));
        self
    }

    /// Also publishes every version as Iceberg metadata (see [`crate::iceberg`]), in the same
    /// order as a Delta commit.
    pub fn with_iceberg(mut self, log: IcebergLog) -> Self {
        self.iceberg = Some(log);
        self
    }

    /// Brings the projections up to `version` (after a crash between a commit and its
    /// projection) and checks that the slot after it is free.
    async fn prepare(&self, version: u64) -> Result<(), PublishError> {
        if let Some(delta) = &self.delta {
            let written = delta.prepare(version).await.map_err(Box::new)?;
            if written > 0 {
                info!(written, version, "wrote missing Delta commits");
            }
        }
        if let Some(iceberg) = &self.iceberg {
            let written = iceberg.prepare(version).await.map_err(Box::new)?;
            if written > 0 {
                info!(written, version, "wrote missing Iceberg metadata");
            }
        }
        Ok(())
    }

    /// Projects committed `next` (on top of `base`) into the other formats.
    async fn project(&self, base: Option<&Manifest>, next: &Manifest) -> Result<(), PublishError> {
        if let Some(delta) = &self.delta {
            delta
                .publish(base, next)
                .await
                .map_err(|source| PublishError::DeltaAfterCommit {
                    version: next.version,
                    source: Box::new(source),
                })?;
        }
        if let Some(iceberg) = &self.iceberg {
            iceberg.publish(base, next).await.map_err(|source| {
                PublishError::IcebergAfterCommit {
                    version: next.version,
                    source: Box::new(source),
                }
            })?;
        }
        Ok(())
    }

    /// Builds the manifest that would follow `base`, or `None` if `base` already holds it.
    fn next(
        &self,
        base: Option<&Manifest>,
        proposal: &Proposal,
    ) -> Result<Option<Manifest>, PublishError> {
        let version = base.map_or(0, |b| b.version) + 1;
        let published_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        match proposal {
            Proposal::Replace {
                run_id,
                logical_date,
                table,
                schema,
                partition_by,
                key,
                partitions,
                audits,
                merge,
                yield_to,
            } => {
                // Partitions a later run already published stay theirs.
                let partitions: Vec<&Partition> = partitions
                    .iter()
                    .filter(|p| {
                        !base.is_some_and(|b| {
                            b.partitions
                                .get(&p.path)
                                .is_some_and(|q| yield_to.contains(&q.run_id))
                        })
                    })
                    .collect();
                let empty = MergeChange::default();
                let merge = merge.as_ref().unwrap_or(&empty);
                let base_marks = base.map(|b| b.watermarks.clone()).unwrap_or_default();
                let marks = moved_watermarks(&base_marks, &merge.watermarks);
                let same_partitions = base.map_or(partitions.is_empty(), |b| {
                    partitions
                        .iter()
                        .all(|p| b.partitions.get(&p.path).is_some_and(|q| q == *p))
                        && merge.removed.iter().all(|r| !b.partitions.contains_key(r))
                });
                if same_partitions && marks.is_empty() {
                    return Ok(None);
                }
                let mut all = base.map(|b| b.partitions.clone()).unwrap_or_default();
                for r in &merge.removed {
                    all.remove(r);
                }
                let ours: BTreeSet<&str> = partitions
                    .iter()
                    .map(|p| p.path.as_str())
                    .chain(merge.removed.iter().map(String::as_str))
                    .collect();
                let kept = all.keys().any(|k| !ours.contains(k.as_str()));
                if let (Some(b), true) = (base, kept) {
                    compatible(&b.schema, schema)
                        .map_err(|message| PublishError::SchemaChange { message })?;
                }
                for p in partitions {
                    all.insert(p.path.clone(), (*p).clone());
                }
                let mut watermarks = base_marks;
                watermarks.extend(marks);
                let max = watermarks
                    .get("max_logical_date")
                    .filter(|m| m.as_str() > logical_date.as_str())
                    .cloned()
                    .unwrap_or_else(|| logical_date.clone());
                watermarks.insert("max_logical_date".into(), max);
                watermarks.insert("last_logical_date".into(), logical_date.clone());
                Ok(Some(Manifest {
                    format: manifest::FORMAT.into(),
                    version,
                    parent: version - 1,
                    table: table.clone(),
                    schema: schema.clone(),
                    partition_by: partition_by.clone(),
                    key: key.clone(),
                    partitions: all,
                    watermarks,
                    change: Change {
                        kind: ChangeKind::Run,
                        run_id: run_id.clone(),
                        logical_date: logical_date.clone(),
                        partitions: ours.iter().map(|s| s.to_string()).collect(),
                        restored_version: None,
                        published_at: published_at.clone(),
                    },
                    audits: audits.clone(),
                    table_id: match base {
                        Some(b) => b.table_id.clone(),
                        None => manifest::new_table_id(table, run_id, &published_at),
                    },
                    checksum: String::new(),
                }))
            }
            Proposal::Restore { run_id, target } => {
                let base_parts = base.map(|b| b.partitions.clone()).unwrap_or_default();
                if base
                    .is_some_and(|b| b.partitions == target.partitions && b.schema == target.schema)
                {
                    return Ok(None);
                }
                let changed: BTreeSet<String> = base_parts
                    .iter()
                    .filter(|(k, v)| target.partitions.get(*k) != Some(v))
                    .map(|(k, _)| k.clone())
                    .chain(
                        target
                            .partitions
                            .iter()
                            .filter(|(k, v)| base_parts.get(*k) != Some(v))
                            .map(|(k, _)| k.clone()),
                    )
                    .collect();
                Ok(Some(Manifest {
                    // The target may be a format-1 manifest; what is written is an index.
                    format: manifest::FORMAT.into(),
                    version,
                    parent: version - 1,
                    change: Change {
                        kind: ChangeKind::Rollback,
                        run_id: run_id.clone(),
                        logical_date: String::new(),
                        partitions: changed.into_iter().collect(),
                        restored_version: Some(target.version),
                        published_at,
                    },
                    table_id: base.map(|b| b.table_id.clone()).unwrap_or_default(),
                    checksum: String::new(),
                    ..target.clone()
                }))
            }
        }
    }

    /// Publishes `proposal` on top of version `base` (the version the run audited against;
    /// `None`: whatever is current). Versions committed after `base` are walked one by one: a
    /// version that replaced any partition we replace is a conflict, others are rebased onto.
    pub async fn publish(
        &self,
        proposal: &Proposal,
        base: Option<u64>,
    ) -> Result<PublishOutcome, PublishError> {
        let run_id = proposal.run_id().to_string();
        let pointer = versions::read_pointer(&self.store).await?;
        let mut base_version =
            base.unwrap_or_else(|| pointer.as_ref().map_or(0, |p| p.pointer.version));
        let mut base = match base_version {
            0 => None,
            v => Some(versions::read_manifest(&self.store, v).await?),
        };
        // Versions up to the pointer were committed before this publish began: walking past
        // them is catching up, not a race, so it neither waits nor counts as an attempt.
        let committed = pointer.as_ref().map_or(0, |p| p.pointer.version);
        let mut backoff = self.options.backoff;
        let mut attempt = 1;
        while attempt <= self.options.max_attempts {
            self.prepare(base_version).await?;
            let Some(next) = self.next(base.as_ref(), proposal)? else {
                info!(
                    version = base_version,
                    "content already published; nothing to do"
                );
                return Ok(PublishOutcome::Unchanged {
                    version: base_version,
                });
            };
            let version = next.version;
            if self.delta.is_some() {
                crate::delta::check_manifest(&next).map_err(Box::new)?;
            }
            if self.iceberg.is_some() {
                crate::iceberg::check_manifest(base.as_ref(), &next).map_err(Box::new)?;
            }
            let path = layout::manifest_path(version);
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(next.encode()), opts)
                .await
            {
                Ok(_) => {
                    info!(run_id = %run_id, version, attempt, "committed manifest");
                    self.project(base.as_ref(), &next).await?;
                    self.swap_pointer(pointer, version, &run_id).await;
                    return Ok(PublishOutcome::Published { version });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let other = versions::read_manifest(&self.store, version).await?;
                    if other.change.run_id == run_id {
                        // An earlier attempt of ours landed (for example a write that timed out).
                        info!(version, "manifest already committed by this run");
                        self.project(base.as_ref(), &other).await?;
                        self.swap_pointer(pointer, version, &run_id).await;
                        return Ok(PublishOutcome::Published { version });
                    }
                    match proposal {
                        Proposal::Restore { .. } => {
                            return Err(PublishError::RollbackConflict {
                                version,
                                other_run: other.change.run_id,
                            });
                        }
                        Proposal::Replace { yield_to, .. }
                            if yield_to.contains(&other.change.run_id) => {}
                        Proposal::Replace {
                            partitions, merge, ..
                        } => {
                            let theirs: BTreeSet<&str> =
                                other.change.partitions.iter().map(String::as_str).collect();
                            let mut overlap: BTreeSet<String> = partitions
                                .iter()
                                .map(|p| p.path.as_str())
                                .chain(merge.iter().flat_map(|m| {
                                    m.removed.iter().chain(&m.read).map(String::as_str)
                                }))
                                .filter(|p| theirs.contains(p))
                                .map(str::to_string)
                                .collect();
                            if merge.as_ref().is_some_and(|m| m.any_partition) {
                                overlap.extend(theirs.iter().map(|p| p.to_string()));
                            }
                            let overlap: Vec<String> = overlap.into_iter().collect();
                            if !overlap.is_empty() {
                                return Err(PublishError::Conflict {
                                    version,
                                    other_run: other.change.run_id,
                                    partitions: overlap,
                                });
                            }
                        }
                    }
                    let catching_up = version <= committed;
                    if catching_up {
                        debug!(version, other_run = %other.change.run_id, "catching up; rebasing");
                    } else {
                        info!(version, other_run = %other.change.run_id, "lost the race; rebasing");
                    }
                    base_version = version;
                    base = Some(other);
                    if catching_up {
                        continue;
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(object_store::Error::NotImplemented { .. }) => {
                    return Err(PublishError::NoPutIfAbsent {
                        path: path.to_string(),
                    });
                }
                Err(source) => {
                    return Err(PublishError::Storage {
                        phase: "commit manifest",
                        path: path.to_string(),
                        source,
                    });
                }
            }
        }
        Err(PublishError::Exhausted {
            attempts: self.options.max_attempts,
        })
    }

    /// Moves the pointer to `version`. The version is committed already, so a failure here only
    /// leaves the pointer behind, which readers and the next writer walk past.
    async fn swap_pointer(&self, mut read: Option<PointerRead>, version: u64, run_id: &str) {
        let path = layout::pointer_path();
        let body = Pointer::new(version, run_id).encode();
        if !self.options.compare_and_swap {
            return self.overwrite_pointer(body, version).await;
        }
        for _ in 0..self.options.max_attempts {
            let mode = match &read {
                Some(p) => PutMode::Update(p.version.clone()),
                None => PutMode::Create,
            };
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(body.clone()), opts)
                .await
            {
                Ok(_) => return,
                Err(object_store::Error::NotImplemented { .. }) => {
                    return self.overwrite_pointer(body, version).await;
                }
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. },
                ) => match versions::read_pointer(&self.store).await {
                    Ok(Some(p)) if p.pointer.version >= version => return,
                    Ok(now) => read = now,
                    Err(e) => {
                        warn!(version, error = %e, "could not re-read {path}; readers will probe past it");
                        return;
                    }
                },
                Err(e) => {
                    warn!(version, error = %e, "could not move {path}; readers will probe past it");
                    return;
                }
            }
        }
    }

    /// Moves the pointer on a store without compare-and-swap (the local filesystem): an atomic
    /// overwrite. Racing writers may leave it behind the newest version; readers probe forward.
    async fn overwrite_pointer(&self, body: Vec<u8>, version: u64) {
        let path = layout::pointer_path();
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            ..Default::default()
        };
        if let Err(e) = self
            .store
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            warn!(version, error = %e, "could not move {path}; readers will probe past it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema(columns: &[(&str, DataType)]) -> Schema {
        Schema::new(
            columns
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn string_layouts_are_one_type_other_changes_are_refused() {
        let old = schema(&[("s", DataType::Utf8View), ("b", DataType::Binary)]);
        // Sources read as views by an older build, as plain strings now (and back).
        let new = schema(&[("s", DataType::Utf8), ("b", DataType::BinaryView)]);
        assert_eq!(compatible(&old, &new), Ok(()));
        assert_eq!(compatible(&new, &old), Ok(()));
        let large = schema(&[("s", DataType::LargeUtf8), ("b", DataType::LargeBinary)]);
        assert_eq!(compatible(&old, &large), Ok(()));
        let retyped = schema(&[("s", DataType::Int64), ("b", DataType::Binary)]);
        let err = compatible(&old, &retyped).unwrap_err();
        assert!(err.contains("column `s` would change type"), "{err}");
        let binary_for_string = schema(&[("s", DataType::Binary), ("b", DataType::Binary)]);
        assert!(compatible(&old, &binary_for_string).is_err());
        let dropped = schema(&[("s", DataType::Utf8)]);
        assert!(
            compatible(&old, &dropped)
                .unwrap_err()
                .contains("`b` would be dropped")
        );
    }
}
