//! The Apache Iceberg projection (`formats: [iceberg]`): every published version N is also an
//! Iceberg (format version 2) table metadata file `metadata/v<N>.metadata.json` whose current
//! snapshot holds exactly the files manifest N names. No data is copied.
//!
//! ```text
//!  manifest N created ─► manifests of changed runs ─► manifest list ─► v<N>.metadata.json ─►
//!  (the commit point)    (put-if-absent, by content)  (put-if-absent)   (put-if-absent)
//!                        version-hint.text, catalog swap ─► _wap/current moves
//! ```
//!
//! Invariants:
//! - Nothing under `metadata/` names a version before its manifest is committed; a crash in
//!   between leaves the projection behind and the next writer ([`IcebergLog::prepare`]) writes
//!   every missing version, in order, before its own.
//! - Everything is derived from the manifests and the previous Iceberg metadata (snapshot ids,
//!   the table uuid, times, sequence numbers), so whoever writes version N writes the same
//!   bytes; an object that exists with other content and is not ours is refused, never replaced.
//! - One Iceberg manifest per run, holding that run's live files: a version reuses the manifest
//!   of every run whose partitions it keeps, and rewrites (with `EXISTING` entries) only those of
//!   runs that lost partitions. A publish writes a constant number of objects.
//! - The catalog's `metadata_location` only moves forward (compare-and-swap).
//!
//! This module knows nothing of DataFusion; its storage goes through the table's `ObjectStore`.

pub mod avro;
pub mod catalog;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::Schema;
use bytes::Bytes;
use chrono::DateTime;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::layout::{self, IcebergEntry};
use crate::manifest::{ChangeKind, DataFile, Manifest, Partition};
use crate::versions::{self, VersionsError};
use avro::{AvroError, Datum};
use catalog::{Catalog, CatalogError};
use schema::{Prim, Typed};

/// Entry status of a manifest entry.
const EXISTING: i32 = 0;
const ADDED: i32 = 1;

/// Errors of the Iceberg projection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IcebergError {
    #[error(
        "refusing to publish: {path} exists and is not the Iceberg metadata wap derives for \
         {what}: another writer writes into this table's metadata folder; nothing was \
         overwritten\nhelp: this table is written only by wap; move that file out of metadata/ \
         (it is not part of any wap version) and run again, or run `wap doctor --conf FILE`"
    )]
    Foreign { path: String, what: String },
    #[error(
        "column `{column}` has type {data_type}, which an Iceberg v2 table cannot hold: {hint}"
    )]
    Type {
        column: String,
        data_type: String,
        hint: String,
    },
    #[error(
        "partition {partition}: `{column}` = {value:?} does not read as its column type {kind}"
    )]
    PartitionValue {
        partition: String,
        column: String,
        value: String,
        kind: String,
    },
    #[error("Iceberg metadata: unable to {phase} {path}: {source}")]
    Storage {
        phase: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error("Iceberg metadata: {path} is not readable: {message}")]
    Corrupt { path: String, message: String },
    #[error("Iceberg metadata: {path} is not a readable Avro file: {source}")]
    Avro { path: String, source: AvroError },
    #[error(
        "Iceberg metadata: version {version} needs manifest {missing}, which is gone\n\
         help: the Iceberg metadata can only be rebuilt from manifests gc kept"
    )]
    MissingManifest { version: u64, missing: u64 },
    #[error(
        "refusing to publish: {problems}; another run changed the table's columns since this \
         run's files were written\nhelp: run it again: its files are then numbered on top of \
         the current version"
    )]
    FieldIds { problems: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Versions(#[from] VersionsError),
}

impl IcebergError {
    /// True when the table's content cannot be projected (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            IcebergError::Type { .. } | IcebergError::PartitionValue { .. }
        ) || matches!(self, IcebergError::Catalog(e) if e.is_config())
    }

    /// True when another run's publish got in the way (exit code 4: run again).
    pub fn is_conflict(&self) -> bool {
        matches!(self, IcebergError::FieldIds { .. })
    }

    fn storage(phase: &'static str, path: &Path, source: object_store::Error) -> Self {
        IcebergError::Storage {
            phase,
            path: path.to_string(),
            source,
        }
    }

    fn corrupt(path: &Path, message: impl std::fmt::Display) -> Self {
        IcebergError::Corrupt {
            path: path.to_string(),
            message: message.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Identity: uuid, snapshot ids, times
// ---------------------------------------------------------------------------------------------

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

/// The table uuid: from the manifest's table id (or, for tables older than it, the location).
fn table_uuid(m: &Manifest, location: &str) -> String {
    let seed = if m.table_id.is_empty() {
        location
    } else {
        &m.table_id
    };
    let mut b: [u8; 16] = digest(&["wap-iceberg-table", seed])[..16]
        .try_into()
        .unwrap();
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::manifest::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The snapshot id of `version`: positive, from the table uuid and the version.
fn snapshot_id(uuid: &str, version: u64) -> i64 {
    let d = digest(&["wap-iceberg-snapshot", uuid, &version.to_string()]);
    let id = i64::from_be_bytes(d[..8].try_into().unwrap()) & i64::MAX;
    id.max(1)
}

fn millis(m: &Manifest) -> i64 {
    DateTime::parse_from_rfc3339(&m.change.published_at).map_or(0, |t| t.timestamp_millis())
}

fn short_digest(bytes: &[u8]) -> String {
    crate::manifest::hex(&Sha256::digest(bytes))[..16].to_string()
}

// ---------------------------------------------------------------------------------------------
// Partition spec and tuples
// ---------------------------------------------------------------------------------------------

/// The identity partition spec over the partition columns.
struct Spec {
    /// (column, source field id, partition field id, type)
    fields: Vec<(String, i32, i32, Prim)>,
}

impl Spec {
    fn new(schema: &Schema, partition_by: &[String]) -> Result<Spec, IcebergError> {
        let mut fields = Vec::new();
        for (i, c) in partition_by.iter().enumerate() {
            let field = schema.field_with_name(c).map_err(|_| IcebergError::Type {
                column: c.clone(),
                data_type: "(missing)".into(),
                hint: "a partition column must be a column of the table".into(),
            })?;
            let p = schema::prim(field.data_type()).ok_or_else(|| IcebergError::Type {
                column: c.clone(),
                data_type: field.data_type().to_string(),
                hint: "a partition column must have a primitive type".into(),
            })?;
            if matches!(p, Prim::Binary | Prim::Fixed(_)) {
                return Err(IcebergError::Type {
                    column: c.clone(),
                    data_type: field.data_type().to_string(),
                    hint: "an Iceberg table is not partitioned by a binary column here; \
                           partition by its hex text instead, e.g. encode(col, 'hex')"
                        .into(),
                });
            }
            let id = schema::column_id(schema, c).unwrap_or(0);
            fields.push((c.clone(), id, schema::PARTITION_FIELD_BASE + i as i32, p));
        }
        Ok(Spec { fields })
    }

    fn json(&self) -> Value {
        Value::Array(
            self.fields
                .iter()
                .map(|(name, source, id, _)| {
                    json!({"name": name, "transform": "identity", "source-id": source, "field-id": id})
                })
                .collect(),
        )
    }

    fn last_partition_id(&self) -> i32 {
        schema::PARTITION_FIELD_BASE - 1 + self.fields.len() as i32
    }

    /// The typed values of partition `p`, in spec order (`None`: NULL).
    fn values(&self, p: &Partition) -> Result<Vec<Option<Typed>>, IcebergError> {
        self.fields
            .iter()
            .map(
                |(column, _, _, prim)| match p.values.get(column).cloned().flatten() {
                    None => Ok(None),
                    Some(text) => {
                        schema::partition_value(*prim, &text)
                            .map(Some)
                            .ok_or_else(|| IcebergError::PartitionValue {
                                partition: p.path.clone(),
                                column: column.clone(),
                                value: text.clone(),
                                kind: format!("{prim:?}"),
                            })
                    }
                },
            )
            .collect()
    }

    fn tuple(&self, values: &[Option<Typed>]) -> Datum {
        Datum::Record(
            self.fields
                .iter()
                .zip(values)
                .map(|((_, _, _, p), v)| Datum::optional(v.as_ref().map(|v| v.datum(*p))))
                .collect(),
        )
    }

    /// The manifest list's partition summaries over these partitions' values.
    fn summary(&self, values: &[Vec<Option<Typed>>]) -> Datum {
        let fields = self
            .fields
            .iter()
            .enumerate()
            .map(|(i, (_, _, _, p))| {
                let mut contains_null = false;
                let mut lo: Option<&Typed> = None;
                let mut hi: Option<&Typed> = None;
                for v in values {
                    match &v[i] {
                        None => contains_null = true,
                        Some(t) => {
                            if lo.is_none_or(|l| t < l) {
                                lo = Some(t);
                            }
                            if hi.is_none_or(|h| t > h) {
                                hi = Some(t);
                            }
                        }
                    }
                }
                let nan = matches!(p, Prim::Float | Prim::Double).then(|| {
                    Datum::Bool(
                        values
                            .iter()
                            .any(|v| matches!(&v[i], Some(Typed::Float(f)) if f.is_nan())),
                    )
                });
                Datum::Record(vec![
                    Datum::Bool(contains_null),
                    Datum::optional(nan),
                    Datum::optional(lo.map(|v| Datum::Bytes(v.bound(*p)))),
                    Datum::optional(hi.map(|v| Datum::Bytes(v.bound(*p)))),
                ])
            })
            .collect();
        Datum::optional(Some(Datum::Array(fields)))
    }

    fn partition_record_schema(&self) -> Value {
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|(name, _, id, p)| {
                json!({"name": name, "type": ["null", p.avro(&format!("{id}"))], "default": null, "field-id": id})
            })
            .collect();
        json!({"type": "record", "name": "r102", "fields": fields})
    }
}

// ---------------------------------------------------------------------------------------------
// Avro schemas of manifests and manifest lists (field ids as the spec assigns them)
// ---------------------------------------------------------------------------------------------

fn kv_array(name: &str, key_id: i32, value_id: i32, value: &str) -> Value {
    json!(["null", {"type": "array", "logicalType": "map", "items": {
    "type": "record", "name": name, "fields": [
        {"name": "key", "type": "int", "field-id": key_id},
        {"name": "value", "type": value, "field-id": value_id}
    ]}}])
}

fn manifest_schema(spec: &Spec) -> Value {
    json!({"type": "record", "name": "manifest_entry", "fields": [
        {"name": "status", "type": "int", "field-id": 0},
        {"name": "snapshot_id", "type": ["null", "long"], "default": null, "field-id": 1},
        {"name": "sequence_number", "type": ["null", "long"], "default": null, "field-id": 3},
        {"name": "file_sequence_number", "type": ["null", "long"], "default": null, "field-id": 4},
        {"name": "data_file", "field-id": 2, "type": {"type": "record", "name": "r2", "fields": [
            {"name": "content", "type": "int", "field-id": 134},
            {"name": "file_path", "type": "string", "field-id": 100},
            {"name": "file_format", "type": "string", "field-id": 101},
            {"name": "partition", "type": spec.partition_record_schema(), "field-id": 102},
            {"name": "record_count", "type": "long", "field-id": 103},
            {"name": "file_size_in_bytes", "type": "long", "field-id": 104},
            {"name": "column_sizes", "type": kv_array("k117_v118", 117, 118, "long"), "default": null, "field-id": 108},
            {"name": "value_counts", "type": kv_array("k119_v120", 119, 120, "long"), "default": null, "field-id": 109},
            {"name": "null_value_counts", "type": kv_array("k121_v122", 121, 122, "long"), "default": null, "field-id": 110},
            {"name": "nan_value_counts", "type": kv_array("k138_v139", 138, 139, "long"), "default": null, "field-id": 137},
            {"name": "lower_bounds", "type": kv_array("k126_v127", 126, 127, "bytes"), "default": null, "field-id": 125},
            {"name": "upper_bounds", "type": kv_array("k129_v130", 129, 130, "bytes"), "default": null, "field-id": 128},
            {"name": "key_metadata", "type": ["null", "bytes"], "default": null, "field-id": 131},
            {"name": "split_offsets", "type": ["null", {"type": "array", "items": "long", "element-id": 133}], "default": null, "field-id": 132},
            {"name": "equality_ids", "type": ["null", {"type": "array", "items": "int", "element-id": 136}], "default": null, "field-id": 135},
            {"name": "sort_order_id", "type": ["null", "int"], "default": null, "field-id": 140}
        ]}}
    ]})
}

fn manifest_list_schema() -> Value {
    json!({"type": "record", "name": "manifest_file", "fields": [
        {"name": "manifest_path", "type": "string", "field-id": 500},
        {"name": "manifest_length", "type": "long", "field-id": 501},
        {"name": "partition_spec_id", "type": "int", "field-id": 502},
        {"name": "content", "type": "int", "field-id": 517},
        {"name": "sequence_number", "type": "long", "field-id": 515},
        {"name": "min_sequence_number", "type": "long", "field-id": 516},
        {"name": "added_snapshot_id", "type": "long", "field-id": 503},
        {"name": "added_files_count", "type": "int", "field-id": 504},
        {"name": "existing_files_count", "type": "int", "field-id": 505},
        {"name": "deleted_files_count", "type": "int", "field-id": 506},
        {"name": "added_rows_count", "type": "long", "field-id": 512},
        {"name": "existing_rows_count", "type": "long", "field-id": 513},
        {"name": "deleted_rows_count", "type": "long", "field-id": 514},
        {"name": "partitions", "type": ["null", {"type": "array", "element-id": 508, "items": {
            "type": "record", "name": "r508", "fields": [
                {"name": "contains_null", "type": "boolean", "field-id": 509},
                {"name": "contains_nan", "type": ["null", "boolean"], "default": null, "field-id": 518},
                {"name": "lower_bound", "type": ["null", "bytes"], "default": null, "field-id": 510},
                {"name": "upper_bound", "type": ["null", "bytes"], "default": null, "field-id": 511}
            ]}}], "default": null, "field-id": 507},
        {"name": "key_metadata", "type": ["null", "bytes"], "default": null, "field-id": 519}
    ]})
}

/// Indexes of the manifest list fields read back.
mod list_field {
    pub const PATH: usize = 0;
}

fn kv_datum<T>(items: &[(i32, T)], value: impl Fn(&T) -> Datum) -> Datum {
    Datum::optional((!items.is_empty()).then(|| {
        Datum::Array(
            items
                .iter()
                .map(|(k, v)| Datum::Record(vec![Datum::Int(*k), value(v)]))
                .collect(),
        )
    }))
}

/// The manifest entry of a data file added by snapshot `snapshot` (sequence number `seq`).
fn added_entry(
    location: &str,
    schema: &Schema,
    f: &DataFile,
    tuple: &Datum,
    snapshot: i64,
    seq: i64,
) -> Datum {
    let m = schema::metrics(schema, f.rows, &f.stats);
    let data_file = Datum::Record(vec![
        Datum::Int(0),
        Datum::string(&format!("{location}/{}", f.path)),
        Datum::string("PARQUET"),
        tuple.clone(),
        Datum::Long(f.rows as i64),
        Datum::Long(f.size as i64),
        Datum::optional(None),
        kv_datum(&m.values, |v| Datum::Long(*v)),
        kv_datum(&m.nulls, |v| Datum::Long(*v)),
        Datum::optional(None),
        kv_datum(&m.lower, |v| Datum::Bytes(v.clone())),
        kv_datum(&m.upper, |v| Datum::Bytes(v.clone())),
        Datum::optional(None),
        Datum::optional(None),
        Datum::optional(None),
        Datum::optional(None),
    ]);
    Datum::Record(vec![
        Datum::Int(ADDED),
        Datum::optional(Some(Datum::Long(snapshot))),
        Datum::optional(Some(Datum::Long(seq))),
        Datum::optional(Some(Datum::Long(seq))),
        data_file,
    ])
}

fn entry_status(e: &Datum) -> i32 {
    match e.field(0) {
        Some(Datum::Int(s)) => *s,
        _ => -1,
    }
}

fn entry_file(e: &Datum) -> Option<&Datum> {
    e.field(4)
}

fn entry_path(e: &Datum) -> &str {
    entry_file(e)
        .and_then(|d| d.field(1))
        .and_then(Datum::as_str)
        .unwrap_or("")
}

fn entry_rows(e: &Datum) -> i64 {
    entry_file(e)
        .and_then(|d| d.field(4))
        .and_then(Datum::as_long)
        .unwrap_or(0)
}

fn entry_tuple_key(e: &Datum) -> Vec<u8> {
    entry_file(e)
        .and_then(|d| d.field(3))
        .map(avro::key)
        .unwrap_or_default()
}

/// An entry kept by a rewritten manifest: `EXISTING`, with its snapshot and sequence numbers.
fn as_existing(e: &Datum) -> Datum {
    match e {
        Datum::Record(f) => {
            let mut f = f.clone();
            f[0] = Datum::Int(EXISTING);
            Datum::Record(f)
        }
        other => other.clone(),
    }
}

/// The Iceberg manifest a partition's files belong to: its run's, and within a run the one of
/// its segment (a run's file lists are cut into segments of at most 256 partitions, so
/// replacing one partition of a large backfill rewrites the entries of 256 partitions at
/// most). Written as `<run_id>-<first 16 hex digits of the segment digest>`.
fn group_of(p: &Partition) -> String {
    let segment = p
        .segment
        .as_deref()
        .and_then(|s| layout::segment_digest(&Path::from(s)))
        .map_or_else(|| "inline".to_string(), |d| d.chars().take(16).collect());
    format!("{}-{segment}", p.run_id)
}

/// The partitions of `m` by their Iceberg manifest ([`group_of`]).
fn groups(m: &Manifest) -> BTreeMap<String, Vec<&Partition>> {
    let mut out: BTreeMap<String, Vec<&Partition>> = BTreeMap::new();
    for p in m.partitions.values() {
        out.entry(group_of(p)).or_default().push(p);
    }
    out
}

/// The current snapshot's summary field `key` of metadata `meta`.
fn current_summary<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    current_snapshot(meta)?.get("summary")?.get(key)?.as_str()
}

/// The current snapshot of `meta`.
fn current_snapshot(meta: &Value) -> Option<&Value> {
    let id = meta.get("current-snapshot-id")?.as_i64()?;
    meta.get("snapshots")?
        .as_array()?
        .iter()
        .find(|s| s.get("snapshot-id").and_then(Value::as_i64) == Some(id))
}

/// What identifies metadata as ours for a version: its table uuid, version and run.
fn identity(meta: &Value) -> Option<(String, u64, String)> {
    Some((
        meta.get("table-uuid")?.as_str()?.to_string(),
        current_summary(meta, "wap.table-version")?.parse().ok()?,
        current_summary(meta, "published-wap-id")?.to_string(),
    ))
}

/// The `wap` version a snapshot of our metadata stands for.
fn snapshot_version(s: &Value) -> Option<u64> {
    s.get("summary")?
        .get("wap.table-version")?
        .as_str()?
        .parse()
        .ok()
}

/// A listing of the metadata folder.
#[derive(Debug, Default)]
pub struct MetadataListing {
    /// Versions with a `v<N>.metadata.json`.
    pub versions: BTreeSet<u64>,
    /// Every object `wap` writes there, with its kind and age.
    pub objects: Vec<(Path, IcebergEntry, chrono::DateTime<chrono::Utc>, u64)>,
}

/// What every manifest written for one snapshot shares.
struct Written<'a> {
    spec: &'a Spec,
    /// The schema with its field ids.
    ids: &'a Schema,
    entry_schema: Value,
    /// The manifests' key-value metadata.
    metadata: BTreeMap<String, String>,
    snapshot: i64,
    seq: i64,
}

/// The Iceberg view of one table.
#[derive(Debug, Clone)]
pub struct IcebergLog {
    store: Arc<dyn ObjectStore>,
    /// The table location as other engines reach it (files are named from it).
    location: String,
    catalog: Option<Catalog>,
}

impl IcebergLog {
    /// The Iceberg view of the table whose root is `store`, at `location` (a URL or absolute
    /// path).
    pub fn new(store: Arc<dyn ObjectStore>, location: &str) -> Self {
        IcebergLog {
            store,
            location: location.trim_end_matches('/').to_string(),
            catalog: None,
        }
    }

    /// Also registers every version in `catalog`.
    pub fn with_catalog(mut self, catalog: Option<Catalog>) -> Self {
        self.catalog = catalog;
        self
    }

    /// The URI of the metadata file of `version`.
    pub fn metadata_location(&self, version: u64) -> String {
        format!("{}/{}", self.location, layout::iceberg_metadata(version))
    }

    fn uri(&self, path: &Path) -> String {
        format!("{}/{path}", self.location)
    }

    async fn get(&self, path: &Path) -> Result<Option<Bytes>, IcebergError> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| IcebergError::storage("read", path, e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(IcebergError::storage("read", path, e)),
        }
    }

    async fn create(&self, path: &Path, bytes: Vec<u8>) -> Result<bool, IcebergError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(IcebergError::storage("create", path, e)),
        }
    }

    /// The metadata of `version`, if written.
    pub async fn metadata(&self, version: u64) -> Result<Option<Value>, IcebergError> {
        let path = layout::iceberg_metadata(version);
        match self.get(&path).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| IcebergError::corrupt(&path, e)),
        }
    }

    /// Every object of the metadata folder that `wap` writes (one listing).
    pub async fn list(&self) -> Result<MetadataListing, IcebergError> {
        let folder = layout::iceberg_folder();
        let mut listing = self.store.list(Some(&folder));
        let mut out = MetadataListing::default();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| IcebergError::storage("list", &folder, e))?;
            if let Some(entry) = layout::iceberg_entry(&meta.location) {
                if let IcebergEntry::Metadata(v) = entry {
                    out.versions.insert(v);
                }
                out.objects
                    .push((meta.location, entry, meta.last_modified, meta.size));
            }
        }
        Ok(out)
    }

    async fn manifest(&self, version: u64, wanted: u64) -> Result<Manifest, IcebergError> {
        match versions::read_manifest(&self.store, wanted).await {
            Ok(m) => Ok(m),
            Err(e) if e.is_usage() => Err(IcebergError::MissingManifest {
                version,
                missing: wanted,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses when `v<version>.metadata.json` exists and is not ours: not for this table, this
    /// version and the run whose manifest `version` is (if that manifest exists).
    async fn check_ours(&self, version: u64, uuid: Option<&str>) -> Result<(), IcebergError> {
        let path = layout::iceberg_metadata(version);
        let Some(bytes) = self.get(&path).await? else {
            return Ok(());
        };
        let ours = match serde_json::from_slice::<Value>(&bytes)
            .ok()
            .as_ref()
            .and_then(identity)
        {
            Some((u, v, run)) if v == version && uuid.is_none_or(|x| x == u) => {
                versions::read_manifest(&self.store, version)
                    .await
                    .is_ok_and(|m| m.change.run_id == run)
            }
            _ => false,
        };
        if ours {
            Ok(())
        } else {
            Err(IcebergError::Foreign {
                path: path.to_string(),
                what: format!("version {version}"),
            })
        }
    }

    /// Before publishing on top of `base`: writes the metadata of every version up to `base`
    /// that lacks it (in order, from the manifests; an empty folder starts at `base`), moves the
    /// catalog and the version hint up to `base`, and refuses if `v<base+1>` exists and is not
    /// ours. Costs three requests when the metadata is up to date. Returns how many versions it wrote.
    pub async fn prepare(&self, base: u64) -> Result<u64, IcebergError> {
        self.check_ours(base + 1, None).await?;
        if base == 0 {
            // A catalog entry of that name for another table is refused before the first commit.
            if let Some(c) = &self.catalog {
                c.check(&self.location).await?;
            }
            return Ok(0);
        }
        let path = layout::iceberg_metadata(base);
        let written = match self.store.head(&path).await {
            // Written, but the hint may not have followed (a crash right after the metadata).
            Ok(_) => {
                self.hint(base).await?;
                0
            }
            Err(object_store::Error::NotFound { .. }) => self.fill(base).await?,
            Err(e) => return Err(IcebergError::storage("probe", &path, e)),
        };
        if let Some(c) = &self.catalog {
            c.advance(&self.location, base).await?;
        }
        Ok(written)
    }

    async fn fill(&self, base: u64) -> Result<u64, IcebergError> {
        let listing = self.list().await?;
        let start = listing.versions.range(..base).next_back().map(|v| v + 1);
        let Some(start) = start else {
            // No metadata yet: the projection starts at `base`, with all its files.
            let cur = self.manifest(base, base).await?;
            self.write(None, None, &cur).await?;
            return Ok(1);
        };
        // The versions in between must still have their manifests; if gc took them (Iceberg
        // was turned off for a while), the projection starts again at `base`.
        for v in start - 1..=base {
            if !versions::manifest_exists(&self.store, v).await? {
                let cur = self.manifest(base, base).await?;
                self.write(None, None, &cur).await?;
                return Ok(1);
            }
        }
        let mut prev = self.manifest(start, start - 1).await?;
        for version in start..=base {
            let cur = self.manifest(version, version).await?;
            let meta = self.metadata(version - 1).await?.ok_or_else(|| {
                IcebergError::corrupt(&layout::iceberg_metadata(version - 1), "listed, then gone")
            })?;
            self.write(Some(&meta), Some(&prev), &cur).await?;
            prev = cur;
        }
        Ok(base + 1 - start)
    }

    /// After manifest `cur` is committed on top of `prev`: writes its Iceberg metadata, the
    /// version hint, and moves the catalog.
    pub async fn publish(
        &self,
        prev: Option<&Manifest>,
        cur: &Manifest,
    ) -> Result<(), IcebergError> {
        let meta = match (prev, cur.version) {
            (Some(_), v) if v > 1 => self.metadata(v - 1).await?,
            _ => None,
        };
        let prev = prev.filter(|_| meta.is_some());
        self.write(meta.as_ref(), prev, cur).await?;
        if let Some(c) = &self.catalog {
            c.advance(&self.location, cur.version).await?;
        }
        Ok(())
    }

    /// Reads a manifest list or manifest we wrote.
    async fn read_avro(&self, uri: &str) -> Result<avro::File, IcebergError> {
        let key = uri
            .strip_prefix(&self.location)
            .map(|k| k.trim_start_matches('/'))
            .ok_or_else(|| IcebergError::Corrupt {
                path: uri.to_string(),
                message: format!("not under the table location {}", self.location),
            })?;
        let path = Path::from(key);
        let bytes = self
            .get(&path)
            .await?
            .ok_or_else(|| IcebergError::corrupt(&path, "referenced, but missing"))?;
        avro::read_file(&bytes).map_err(|source| IcebergError::Avro {
            path: path.to_string(),
            source,
        })
    }

    /// The oldest `wap` version at or after `from` whose manifest still exists (gc deletes the
    /// oldest first): snapshots before it are no longer listed.
    async fn oldest_kept(&self, from: u64, upto: u64) -> Result<u64, IcebergError> {
        let mut v = from;
        while v < upto && !versions::manifest_exists(&self.store, v).await? {
            v += 1;
        }
        Ok(v)
    }

    /// Writes the Iceberg metadata of `cur`, on top of the metadata of its parent (`prev_meta`,
    /// for manifest `prev`); without them, a first snapshot with every file.
    async fn write(
        &self,
        prev_meta: Option<&Value>,
        prev: Option<&Manifest>,
        cur: &Manifest,
    ) -> Result<(), IcebergError> {
        let n = cur.version;
        // A schema without ids (a version from before Iceberg, restored by a rollback) keeps the
        // ids its columns have in the parent.
        let ids = match (schema::has_field_ids(&cur.schema), prev) {
            (false, Some(p)) => schema::with_field_ids(&cur.schema, Some(&p.schema)),
            _ => schema::numbered(&cur.schema),
        };
        let spec = Spec::new(&ids, &cur.partition_by)?;
        let uuid = match prev_meta
            .and_then(|m| m.get("table-uuid"))
            .and_then(Value::as_str)
        {
            Some(u) => u.to_string(),
            None => table_uuid(cur, &self.location),
        };
        let snapshot = snapshot_id(&uuid, n);
        let seq = n as i64;

        // The previous snapshot's manifests, by run.
        let mut prev_entries: BTreeMap<String, Datum> = BTreeMap::new();
        if let Some(list) = prev_meta.and_then(current_manifest_list) {
            for e in self.read_avro(&list).await?.records {
                let path = e
                    .field(list_field::PATH)
                    .and_then(Datum::as_str)
                    .unwrap_or("");
                if let Some(IcebergEntry::Manifest(run)) =
                    layout::iceberg_entry(&Path::from(path.rsplit('/').next().unwrap_or("")))
                {
                    prev_entries.insert(run, e.clone());
                }
            }
        }
        let prev_groups = prev.map(groups).unwrap_or_default();
        let cur_groups = groups(cur);

        // Groups whose manifest is reused as it is, and groups whose manifest is written.
        let mut list = Vec::new();
        let mut rewrite = Vec::new();
        for (group, parts) in &cur_groups {
            let before = prev_groups.get(group);
            let entry = prev_entries.get(group);
            match (before, entry) {
                (Some(b), Some(e)) if b == parts => list.push(e.clone()),
                (Some(b), Some(e)) => {
                    let kept: Vec<&Partition> =
                        parts.iter().filter(|p| b.contains(p)).copied().collect();
                    rewrite.push((group.as_str(), kept, Some(e)));
                }
                _ => rewrite.push((group.as_str(), Vec::new(), None)),
            }
        }
        let (schema_id, _) = schemas(prev_meta, &ids);
        let written = Written {
            spec: &spec,
            ids: &ids,
            entry_schema: manifest_schema(&spec),
            metadata: BTreeMap::from([
                (
                    "schema".to_string(),
                    schema::schema_json(&ids, schema_id as i32).to_string(),
                ),
                ("schema-id".to_string(), schema_id.to_string()),
                ("partition-spec".to_string(), spec.json().to_string()),
                ("partition-spec-id".to_string(), "0".to_string()),
                ("format-version".to_string(), "2".to_string()),
                ("content".to_string(), "data".to_string()),
            ]),
            snapshot,
            seq,
        };
        // One group at a time: only its own file lists are in memory.
        for (group, kept, old) in rewrite {
            let entry = self
                .write_group(&written, group, &cur_groups[group], &kept, old)
                .await?;
            list.push(entry);
        }
        list.sort_by(|a, b| {
            let p = |d: &Datum| {
                d.field(list_field::PATH)
                    .and_then(Datum::as_str)
                    .map(str::to_string)
            };
            p(a).cmp(&p(b))
        });
        let parent = prev_meta
            .and_then(|m| m.get("current-snapshot-id"))
            .and_then(Value::as_i64);
        let mut list_meta = BTreeMap::from([
            ("snapshot-id".to_string(), snapshot.to_string()),
            ("sequence-number".to_string(), seq.to_string()),
            ("format-version".to_string(), "2".to_string()),
        ]);
        if let Some(p) = parent {
            list_meta.insert("parent-snapshot-id".to_string(), p.to_string());
        }
        let list_bytes = avro::write_file(&manifest_list_schema(), &list_meta, &list);
        let list_path = layout::iceberg_manifest_list(n, snapshot, &short_digest(&list_bytes));
        self.create(&list_path, list_bytes).await?;

        let meta = self
            .metadata_json(
                prev_meta, prev, cur, &ids, &spec, &uuid, snapshot, &list_path,
            )
            .await?;
        let path = layout::iceberg_metadata(n);
        let bytes = serde_json::to_vec_pretty(&meta).expect("JSON values serialize");
        if !self.create(&path, bytes.clone()).await? {
            let existing = self.get(&path).await?.unwrap_or_default();
            let theirs = serde_json::from_slice::<Value>(&existing).ok();
            let same = existing == bytes
                || theirs.as_ref().and_then(identity)
                    == Some((uuid.clone(), n, cur.change.run_id.clone()));
            if !same {
                return Err(IcebergError::Foreign {
                    path: path.to_string(),
                    what: format!("version {n}"),
                });
            }
        }
        self.hint(n).await
    }

    /// Writes the manifest of `group` in the new snapshot: the entries of its `kept` partitions
    /// from its previous manifest `old` (as `EXISTING`), and its other partitions' files as
    /// `ADDED` (their file lists read now). Returns its manifest list entry.
    async fn write_group(
        &self,
        w: &Written<'_>,
        group: &str,
        parts: &[&Partition],
        kept: &[&Partition],
        old: Option<&Datum>,
    ) -> Result<Datum, IcebergError> {
        let mut entries = Vec::new();
        if let (false, Some(old)) = (kept.is_empty(), old) {
            let keys: BTreeSet<Vec<u8>> = kept
                .iter()
                .map(|p| Ok(avro::key(&w.spec.tuple(&w.spec.values(p)?))))
                .collect::<Result<_, IcebergError>>()?;
            let uri = old
                .field(list_field::PATH)
                .and_then(Datum::as_str)
                .unwrap_or("")
                .to_string();
            for e in self.read_avro(&uri).await?.records {
                if entry_status(&e) != 2 && keys.contains(&entry_tuple_key(&e)) {
                    entries.push(as_existing(&e));
                }
            }
        }
        let mut fresh: Vec<Partition> = parts
            .iter()
            .filter(|p| !kept.contains(p))
            .map(|p| (*p).clone())
            .collect();
        let mut refs: Vec<&mut Partition> = fresh.iter_mut().collect();
        versions::resolve_partitions(&self.store, &mut refs).await?;
        for p in &fresh {
            let tuple = w.spec.tuple(&w.spec.values(p)?);
            for f in &p.files {
                entries.push(added_entry(
                    &self.location,
                    w.ids,
                    f,
                    &tuple,
                    w.snapshot,
                    w.seq,
                ));
            }
        }
        let values = parts
            .iter()
            .map(|p| w.spec.values(p))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| entry_path(a).cmp(entry_path(b)));
        let bytes = avro::write_file(&w.entry_schema, &w.metadata, &entries);
        let path = layout::iceberg_manifest(group, &short_digest(&bytes));
        let length = bytes.len() as i64;
        self.create(&path, bytes).await?;
        let count = |status: i32| entries.iter().filter(|e| entry_status(e) == status).count();
        let rows = |status: i32| -> i64 {
            entries
                .iter()
                .filter(|e| entry_status(e) == status)
                .map(entry_rows)
                .sum()
        };
        let min_seq = entries
            .iter()
            .filter_map(|e| e.field(2).and_then(Datum::as_long))
            .min()
            .unwrap_or(w.seq);
        Ok(Datum::Record(vec![
            Datum::string(&self.uri(&path)),
            Datum::Long(length),
            Datum::Int(0),
            Datum::Int(0),
            Datum::Long(w.seq),
            Datum::Long(min_seq),
            Datum::Long(w.snapshot),
            Datum::Int(count(ADDED) as i32),
            Datum::Int(count(EXISTING) as i32),
            Datum::Int(0),
            Datum::Long(rows(ADDED)),
            Datum::Long(rows(EXISTING)),
            Datum::Long(0),
            w.spec.summary(&values),
            Datum::optional(None),
        ]))
    }

    /// Moves `version-hint.text` to `version`, never back past a newer one.
    async fn hint(&self, version: u64) -> Result<(), IcebergError> {
        let path = layout::iceberg_version_hint();
        let current = self
            .get(&path)
            .await?
            .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u64>().ok());
        if current.is_some_and(|c| c >= version) {
            return Ok(());
        }
        self.store
            .put(&path, PutPayload::from(version.to_string().into_bytes()))
            .await
            .map_err(|e| IcebergError::storage("write", &path, e))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn metadata_json(
        &self,
        prev_meta: Option<&Value>,
        prev: Option<&Manifest>,
        cur: &Manifest,
        ids: &Schema,
        spec: &Spec,
        uuid: &str,
        snapshot: i64,
        list_path: &Path,
    ) -> Result<Value, IcebergError> {
        let n = cur.version;
        let empty = Vec::new();
        let array = |key: &str| -> Vec<Value> {
            prev_meta
                .and_then(|m| m.get(key))
                .and_then(Value::as_array)
                .unwrap_or(&empty)
                .clone()
        };
        let (schema_id, schemas) = schemas(prev_meta, ids);
        let last_column_id = prev_meta
            .and_then(|m| m.get("last-column-id"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .max(i64::from(schema::last_column_id(ids)));
        let prev_ms = prev_meta
            .and_then(|m| m.get("last-updated-ms"))
            .and_then(Value::as_i64)
            .unwrap_or(i64::MIN);
        let ms = millis(cur).max(prev_ms);

        // Snapshots of versions gc has not expired.
        let mut snapshots = array("snapshots");
        let oldest_listed = snapshots.iter().filter_map(snapshot_version).min();
        let keep_from = match oldest_listed {
            Some(v) => self.oldest_kept(v, n).await?,
            None => n,
        };
        snapshots.retain(|s| snapshot_version(s).is_some_and(|v| v >= keep_from));
        let kept_ids: BTreeSet<i64> = snapshots
            .iter()
            .filter_map(|s| s["snapshot-id"].as_i64())
            .collect();
        let mut snapshot_log = array("snapshot-log");
        snapshot_log.retain(|e| {
            e["snapshot-id"]
                .as_i64()
                .is_some_and(|i| kept_ids.contains(&i))
        });
        let mut metadata_log = array("metadata-log");
        if let Some(m) = prev_meta {
            metadata_log.push(json!({
                "timestamp-ms": m["last-updated-ms"],
                "metadata-file": self.metadata_location(n - 1),
            }));
        }
        metadata_log.retain(|e| {
            let file = e["metadata-file"].as_str().unwrap_or("");
            let name = file.rsplit('/').next().unwrap_or("");
            matches!(layout::iceberg_entry(&Path::from(name)), Some(IcebergEntry::Metadata(v)) if v >= keep_from)
        });

        let summary = self.summary(prev, cur);
        let parent = prev_meta
            .and_then(|m| m.get("current-snapshot-id"))
            .and_then(Value::as_i64)
            .filter(|p| kept_ids.contains(p));
        let mut snap = json!({
            "snapshot-id": snapshot,
            "sequence-number": n,
            "timestamp-ms": ms,
            "manifest-list": self.uri(list_path),
            "summary": summary,
            "schema-id": schema_id,
        });
        if let Some(p) = parent {
            snap["parent-snapshot-id"] = json!(p);
        }
        snapshots.push(snap);
        snapshot_log.push(json!({"timestamp-ms": ms, "snapshot-id": snapshot}));

        Ok(json!({
            "format-version": 2,
            "table-uuid": uuid,
            "location": self.location,
            "last-sequence-number": n,
            "last-updated-ms": ms,
            "last-column-id": last_column_id,
            "current-schema-id": schema_id,
            "schemas": schemas,
            "default-spec-id": 0,
            "partition-specs": [{"spec-id": 0, "fields": spec.json()}],
            "last-partition-id": spec.last_partition_id(),
            "default-sort-order-id": 0,
            "sort-orders": [{"order-id": 0, "fields": []}],
            "properties": {
                "gc.enabled": "false",
                "write.metadata.delete-after-commit.enabled": "false",
                "schema.name-mapping.default": schema::name_mapping(ids).to_string(),
                "write.format.default": "parquet",
                "wap.managed": "true",
                "wap.maintenance": "this table is written by wap: run `wap gc`, never \
                                    snapshot expiry, orphan file removal or compaction from \
                                    another engine",
            },
            "current-snapshot-id": snapshot,
            "refs": {"main": {"snapshot-id": snapshot, "type": "branch"}},
            "snapshots": snapshots,
            "snapshot-log": snapshot_log,
            "metadata-log": metadata_log,
        }))
    }

    /// The snapshot summary: the operation, what changed, and `wap`'s own fields.
    fn summary(&self, prev: Option<&Manifest>, cur: &Manifest) -> Value {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for p in cur.partitions.values() {
            if prev.is_none_or(|m| m.partitions.get(&p.path) != Some(p)) {
                added.push(p);
            }
        }
        if let Some(m) = prev {
            for p in m.partitions.values() {
                if cur.partitions.get(&p.path) != Some(p) {
                    removed.push(p);
                }
            }
        }
        let operation = match (added.is_empty(), removed.is_empty()) {
            (_, true) => "append",
            (true, false) => "delete",
            (false, false) => "overwrite",
        };
        let files = |ps: &[&Partition]| ps.iter().map(|p| p.file_count).sum::<u64>().to_string();
        let rows = |ps: &[&Partition]| ps.iter().map(|p| p.rows).sum::<u64>().to_string();
        let size = |ps: &[&Partition]| ps.iter().map(|p| p.bytes).sum::<u64>().to_string();
        let all: Vec<&Partition> = cur.partitions.values().collect();
        let changed: BTreeSet<&str> = added
            .iter()
            .chain(removed.iter())
            .map(|p| p.path.as_str())
            .collect();
        let failed = cur.audits.iter().filter(|a| !a.passed).count();
        let audit = if cur.audits.is_empty() {
            "no rules".to_string()
        } else {
            format!(
                "{} of {} rules passed",
                cur.audits.len() - failed,
                cur.audits.len()
            )
        };
        let kind = match cur.change.kind {
            ChangeKind::Run => "run",
            ChangeKind::Rollback => "rollback",
        };
        let mut s = json!({
            "operation": operation,
            "added-data-files": files(&added),
            "deleted-data-files": files(&removed),
            "added-records": rows(&added),
            "deleted-records": rows(&removed),
            "added-files-size": size(&added),
            "removed-files-size": size(&removed),
            "changed-partition-count": changed.len().to_string(),
            "total-data-files": files(&all),
            "total-records": rows(&all),
            "total-files-size": size(&all),
            "total-delete-files": "0",
            "total-position-deletes": "0",
            "total-equality-deletes": "0",
            "published-wap-id": cur.change.run_id,
            "wap.table-version": cur.version.to_string(),
            "wap.change": kind,
            "wap.logical-date": cur.change.logical_date,
            "wap.audit": audit,
            "wap.build-version": env!("CARGO_PKG_VERSION"),
        });
        if let Some(r) = cur.change.restored_version {
            s["wap.restored-version"] = json!(r.to_string());
        }
        s
    }

    /// The objects gc may delete when `retained` are the versions kept: metadata and manifest
    /// lists of older versions, and manifests that no retained version's list names. Every
    /// retained version's metadata is read first; nothing it needs is returned.
    pub async fn expired(
        &self,
        retained: &[u64],
    ) -> Result<Vec<(Path, chrono::DateTime<chrono::Utc>, u64)>, IcebergError> {
        let Some(&oldest) = retained.first() else {
            return Ok(Vec::new());
        };
        let listing = self.list().await?;
        let mut needed: BTreeSet<String> = BTreeSet::new();
        for &v in retained {
            if !listing.versions.contains(&v) {
                continue;
            }
            let Some(meta) = self.metadata(v).await? else {
                continue;
            };
            if let Some(list) = current_manifest_list(&meta) {
                needed.insert(list.clone());
                for e in self.read_avro(&list).await?.records {
                    if let Some(p) = e.field(list_field::PATH).and_then(Datum::as_str) {
                        needed.insert(p.to_string());
                    }
                }
            }
        }
        let newest = listing.versions.last().copied().unwrap_or(0);
        Ok(listing
            .objects
            .into_iter()
            .filter(|(path, entry, _, _)| match entry {
                IcebergEntry::Metadata(v) | IcebergEntry::List(v) => {
                    *v < oldest && !needed.contains(&self.uri(path))
                }
                // A manifest of a version not yet listed may belong to a publish under way:
                // gc's age cutoff protects it.
                IcebergEntry::Manifest(_) => newest > 0 && !needed.contains(&self.uri(path)),
            })
            .map(|(path, _, at, size)| (path, at, size))
            .collect())
    }
}

/// The schemas of the metadata after `prev_meta` for a version of schema `ids`, and the id of
/// that schema: an earlier schema's id when one has the same fields, else the next id.
fn schemas(prev_meta: Option<&Value>, ids: &Schema) -> (i64, Vec<Value>) {
    let mut schemas = prev_meta
        .and_then(|m| m.get("schemas"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let fields = schema::schema_json(ids, 0)["fields"].clone();
    if let Some(s) = schemas.iter().find(|s| s["fields"] == fields) {
        return (s["schema-id"].as_i64().unwrap_or(0), schemas);
    }
    let id = schemas
        .iter()
        .filter_map(|s| s["schema-id"].as_i64())
        .max()
        .map_or(0, |m| m + 1);
    schemas.push(schema::schema_json(ids, id as i32));
    (id, schemas)
}

/// The manifest list of the current snapshot of `meta`.
fn current_manifest_list(meta: &Value) -> Option<String> {
    current_snapshot(meta)?
        .get("manifest-list")?
        .as_str()
        .map(str::to_string)
}

/// Every reason an Iceberg table cannot hold a table of `schema` partitioned by `partition_by`
/// (`wap check`).
pub fn check_table(schema: &Schema, partition_by: &[String]) -> Vec<IcebergError> {
    let mut problems = schema::check_schema(schema);
    if problems.is_empty()
        && let Err(e) = Spec::new(&schema::numbered(schema), partition_by)
    {
        problems.push(e);
    }
    problems
}

/// Checks that every partition of `m` has values of its column's Iceberg type, its schema
/// Iceberg types, and its field ids those of `base` (the version it is published on): the first
/// problem.
pub fn check_manifest(base: Option<&Manifest>, m: &Manifest) -> Result<(), IcebergError> {
    if let Some(b) = base {
        let problems = schema::id_conflicts(&b.schema, &m.schema);
        if !problems.is_empty() {
            return Err(IcebergError::FieldIds {
                problems: problems.join("; "),
            });
        }
    }
    if let Some(e) = schema::check_schema(&m.schema).into_iter().next() {
        return Err(e);
    }
    let spec = Spec::new(&schema::numbered(&m.schema), &m.partition_by)?;
    for p in m.partitions.values() {
        spec.values(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_valid() {
        let uuid = "0f9a3c1e-aaaa-5bbb-8ccc-dddddddddddd";
        assert_eq!(snapshot_id(uuid, 3), snapshot_id(uuid, 3));
        assert_ne!(snapshot_id(uuid, 3), snapshot_id(uuid, 4));
        assert!(snapshot_id(uuid, 3) > 0);
        let m = Manifest {
            format: crate::manifest::FORMAT.into(),
            version: 1,
            parent: 0,
            table: "t".into(),
            schema: Schema::empty(),
            partition_by: vec![],
            key: vec![],
            partitions: BTreeMap::new(),
            watermarks: BTreeMap::new(),
            change: crate::manifest::Change {
                kind: ChangeKind::Run,
                run_id: "r".into(),
                logical_date: "2024-01-01".into(),
                partitions: vec![],
                restored_version: None,
                published_at: "2024-01-01T00:00:00Z".into(),
            },
            audits: vec![],
            table_id: "abc".into(),
            checksum: String::new(),
        };
        let u = table_uuid(&m, "/t");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "5");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(
            u,
            table_uuid(&m, "/elsewhere"),
            "the table id decides, not the path"
        );
    }
}
