//! The Delta Lake projection (`formats: [delta]`): every published version N is also Delta
//! version N-1, a commit under `_delta_log/` derived from manifests N-1 and N. No data is
//! copied: `add` actions name the files the manifest names.
//!
//! ```text
//!  manifest N created (the commit point) ─► _delta_log/<N-1>.json created ─► _wap/current moves
//!                                            (put-if-absent; every 10th also a checkpoint)
//! ```
//!
//! Invariants:
//! - A Delta commit is written only after its manifest is committed, so other engines never see
//!   a version `wap` did not publish. A crash in between leaves the log behind; the next writer
//!   ([`DeltaLog::prepare`]) writes every missing commit, in order, before its own.
//! - Commits are derived from manifests alone (times from `published_at`, the table id from
//!   the manifest's `table_id`), so whoever writes commit N-1 writes the same actions.
//! - A log entry that exists and is not ours for that version (another writer's) is never
//!   overwritten: publishing stops and names it.
//! - Checkpoints are derived from the previous checkpoint and the commits since (a fixed number
//!   of reads), never from the whole history; gc deletes only commits a checkpoint covers.
//!
//! This module knows nothing of DataFusion; its storage goes through the table's `ObjectStore`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde_json::{Value, json};

use crate::layout::{self, DeltaEntry};
use crate::manifest::{ChangeKind, ColumnStats, DataFile, Manifest, Partition};
use crate::versions::{self, VersionsError};

/// A checkpoint is written at every Delta version divisible by this (and where the log starts).
pub const CHECKPOINT_INTERVAL: u64 = 10;
/// Longest string kept whole in `add.stats`; a longer minimum is cut to this many characters
/// (still a lower bound), a longer maximum is left out.
const STATS_STRING_CHARS: usize = 32;
/// Retention told to other engines: so long that their `VACUUM` and log cleanup delete nothing.
const FOREVER: &str = "interval 36500 days";

/// Errors of the Delta projection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    #[error(
        "refusing to publish: {path} exists and is not the Delta commit wap derives for {what}: \
         another writer writes into this table's Delta log; nothing was overwritten\n\
         help: this table is written only by wap; move that file out of _delta_log (it is not \
         part of any wap version) and run again, or run `wap doctor --conf FILE`"
    )]
    Foreign { path: String, what: String },
    #[error("column `{column}` has type {data_type}, which a Delta table cannot hold: {hint}")]
    Type {
        column: String,
        data_type: String,
        hint: String,
    },
    #[error(
        "partition {partition}: `{column}` is the empty string, which Delta cannot tell from NULL; \
         nothing was published\nhelp: turn it into NULL or a placeholder in the transform, \
         e.g. NULLIF({column}, '') or COALESCE(NULLIF({column}, ''), 'unknown')"
    )]
    EmptyPartitionValue { partition: String, column: String },
    #[error("Delta log: unable to {phase} {path}: {source}")]
    Storage {
        phase: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error("Delta log: {path} is not readable: {message}")]
    Corrupt { path: String, message: String },
    #[error(
        "Delta log: version {version} needs manifest {missing}, which is gone\n\
         help: the Delta log can only be rebuilt from manifests gc kept"
    )]
    MissingManifest { version: u64, missing: u64 },
    #[error(transparent)]
    Versions(#[from] VersionsError),
}

impl DeltaError {
    /// True when the table's content cannot be projected (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DeltaError::Type { .. } | DeltaError::EmptyPartitionValue { .. }
        )
    }

    fn storage(phase: &'static str, path: &Path, source: object_store::Error) -> Self {
        DeltaError::Storage {
            phase,
            path: path.to_string(),
            source,
        }
    }

    fn corrupt(path: &Path, message: impl std::fmt::Display) -> Self {
        DeltaError::Corrupt {
            path: path.to_string(),
            message: message.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Types and values
// ---------------------------------------------------------------------------------------------

/// The Delta type of an Arrow type, as it appears in `schemaString`.
fn delta_type(column: &str, t: &DataType) -> Result<Value, DeltaError> {
    let refuse = |hint: &str| DeltaError::Type {
        column: column.to_string(),
        data_type: t.to_string(),
        hint: hint.to_string(),
    };
    Ok(match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "byte".into(),
        DataType::Int16 => "short".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "long".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            return Err(refuse(
                "Delta timestamps are microseconds; cast it in the transform, e.g. \
                 arrow_cast(col, 'Timestamp(Microsecond, None)') (or 'Timestamp(Microsecond, \
                 Some(\"UTC\"))' for a time zone)",
            ));
        }
        DataType::Timestamp(_, Some(_)) => "timestamp".into(),
        DataType::Timestamp(_, None) => "timestamp_ntz".into(),
        DataType::Decimal128(p, s) if *s >= 0 && *p <= 38 => format!("decimal({p},{s})").into(),
        DataType::List(f) | DataType::LargeList(f) => json!({
            "type": "array",
            "elementType": delta_type(column, f.data_type())?,
            "containsNull": f.is_nullable(),
        }),
        DataType::Struct(fields) => struct_type(fields)?,
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => json!({
                "type": "map",
                "keyType": delta_type(column, kv[0].data_type())?,
                "valueType": delta_type(column, kv[1].data_type())?,
                "valueContainsNull": kv[1].is_nullable(),
            }),
            _ => return Err(refuse("a map without key and value fields")),
        },
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            return Err(refuse(
                "Delta has no unsigned integers; cast it to a wider signed type (SMALLINT, INT, \
                 BIGINT, or DECIMAL(20,0) for UBIGINT)",
            ));
        }
        DataType::Null => return Err(refuse("give the column a type, e.g. CAST(NULL AS VARCHAR)")),
        DataType::Date64 => return Err(refuse("cast it to DATE")),
        DataType::Decimal256(..) | DataType::Decimal128(..) => {
            return Err(refuse(
                "Delta decimals have at most 38 digits and a scale >= 0",
            ));
        }
        _ => {
            return Err(refuse(
                "cast it to a string, integer, decimal, date or timestamp",
            ));
        }
    })
}

fn struct_type(fields: &Fields) -> Result<Value, DeltaError> {
    let fields: Vec<Value> = fields
        .iter()
        .map(|f| {
            Ok(json!({
                "name": f.name(),
                "type": delta_type(f.name(), f.data_type())?,
                "nullable": f.is_nullable(),
                "metadata": {},
            }))
        })
        .collect::<Result<_, DeltaError>>()?;
    Ok(json!({"type": "struct", "fields": fields}))
}

/// Checks that every column of `schema` has a Delta type: each problem, or nothing.
pub fn check_schema(schema: &Schema) -> Vec<DeltaError> {
    schema
        .fields()
        .iter()
        .filter_map(|f| delta_type(f.name(), f.data_type()).err())
        .collect()
}

/// True when a column (at any depth) is a timestamp without a time zone.
fn has_timestamp_ntz(t: &DataType) -> bool {
    match t {
        DataType::Timestamp(_, None) => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::Map(f, _) => {
            has_timestamp_ntz(f.data_type())
        }
        DataType::Struct(fields) => fields.iter().any(|f| has_timestamp_ntz(f.data_type())),
        _ => false,
    }
}

/// The protocol a schema needs: (1, 2), or (3, 7) with `timestampNtz`.
fn protocol(schema: &Schema) -> Value {
    if schema
        .fields()
        .iter()
        .any(|f| has_timestamp_ntz(f.data_type()))
    {
        json!({
            "minReaderVersion": 3,
            "minWriterVersion": 7,
            "readerFeatures": ["timestampNtz"],
            "writerFeatures": ["timestampNtz"],
        })
    } else {
        json!({"minReaderVersion": 1, "minWriterVersion": 2})
    }
}

/// Milliseconds since the epoch of a manifest's publication (0 if it has none).
fn millis(m: &Manifest) -> i64 {
    DateTime::parse_from_rfc3339(&m.change.published_at).map_or(0, |t| t.timestamp_millis())
}

/// The Delta table id: a UUID (version 5 layout) from the manifest's table id.
fn table_uuid(m: &Manifest) -> String {
    let seed = if m.table_id.is_empty() {
        crate::manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(
            format!("wap-delta\n{}", m.table).as_bytes(),
        ))
    } else {
        m.table_id.clone()
    };
    let mut h: Vec<char> = seed
        .chars()
        .chain(std::iter::repeat('0'))
        .take(32)
        .collect();
    h[12] = '5';
    h[16] = ['8', '9', 'a', 'b'][h[16].to_digit(16).unwrap_or(0) as usize % 4];
    let h: String = h.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn metadata(m: &Manifest) -> Result<Value, DeltaError> {
    let schema = struct_type(m.schema.fields())?;
    Ok(json!({
        "id": table_uuid(m),
        "name": m.table,
        "format": {"provider": "parquet", "options": {}},
        "schemaString": schema.to_string(),
        "partitionColumns": m.partition_by,
        "configuration": {
            "delta.checkpointInterval": CHECKPOINT_INTERVAL.to_string(),
            "delta.logRetentionDuration": FOREVER,
            "delta.deletedFileRetentionDuration": FOREVER,
            "delta.enableExpiredLogCleanup": "false",
            "wap.managed": "true",
            "wap.maintenance": "this table is written by wap: run `wap gc`, never VACUUM, \
                                OPTIMIZE or a log cleanup from another engine",
        },
        "createdTime": millis(m),
    }))
}

/// A file's path as a URI relative to the table root: the object key with `%` escaped again
/// (keys hold only `[A-Za-z0-9._=/%-]`, partition values escaped by [`layout::escape_value`]).
pub fn add_path(key: &str) -> String {
    key.replace('%', "%25")
}

/// A partition value in Delta's string form, from the manifest's text of a value of type `t`.
fn partition_value(
    partition: &str,
    column: &str,
    t: &DataType,
    value: Option<&str>,
) -> Result<Value, DeltaError> {
    let Some(v) = value else {
        return Ok(Value::Null);
    };
    if v.is_empty() {
        return Err(DeltaError::EmptyPartitionValue {
            partition: partition.to_string(),
            column: column.to_string(),
        });
    }
    let text = match t {
        DataType::Timestamp(_, Some(_)) => DateTime::parse_from_rfc3339(v)
            .map(|t| t.naive_utc())
            .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f"))
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
            .unwrap_or_else(|_| v.to_string()),
        DataType::Timestamp(_, None) => NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
            .unwrap_or_else(|_| v.to_string()),
        _ => v.to_string(),
    };
    Ok(Value::String(text))
}

fn partition_values(schema: &Schema, p: &Partition) -> Result<Value, DeltaError> {
    let mut out = serde_json::Map::new();
    for (column, value) in &p.values {
        let t = schema
            .field_with_name(column)
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Utf8);
        out.insert(
            column.clone(),
            partition_value(&p.path, column, &t, value.as_deref())?,
        );
    }
    Ok(Value::Object(out))
}

/// Checks that every partition of `m` can be written as Delta partition values, and its schema
/// as a Delta schema: the first problem.
pub fn check_manifest(m: &Manifest) -> Result<(), DeltaError> {
    if let Some(e) = check_schema(&m.schema).into_iter().next() {
        return Err(e);
    }
    for p in m.partitions.values() {
        partition_values(&m.schema, p)?;
    }
    Ok(())
}

/// A statistic as JSON text in Delta's form for type `t`, rounded outwards (`upper`: a maximum).
fn stat_text(t: &DataType, v: &Value, upper: bool) -> Option<String> {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64 => v.is_number().then(|| v.to_string()),
        DataType::Date32 => {
            let days = v.as_i64()?;
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)?
                .checked_add_signed(chrono::Duration::days(days))?;
            Some(Value::from(date.format("%Y-%m-%d").to_string()).to_string())
        }
        DataType::Timestamp(unit, tz) => {
            let raw = v.as_i64()?;
            let per_ms: i64 = match unit {
                TimeUnit::Second => return ms_text(raw.checked_mul(1000)?, tz.is_some()),
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            // Delta statistics have millisecond precision: round a maximum up, a minimum down.
            let ms = if upper {
                raw.div_euclid(per_ms) + i64::from(raw.rem_euclid(per_ms) != 0)
            } else {
                raw.div_euclid(per_ms)
            };
            ms_text(ms, tz.is_some())
        }
        DataType::Decimal128(_, scale) => {
            let unscaled: i128 = v.as_str()?.parse().ok()?;
            Some(decimal_text(unscaled, *scale))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = v.as_str()?;
            if s.chars().count() <= STATS_STRING_CHARS {
                Some(Value::from(s).to_string())
            } else if upper {
                None
            } else {
                let prefix: String = s.chars().take(STATS_STRING_CHARS).collect();
                Some(Value::from(prefix).to_string())
            }
        }
        _ => None,
    }
}

fn ms_text(ms: i64, utc: bool) -> Option<String> {
    let t = DateTime::from_timestamp_millis(ms)?.naive_utc();
    let text = t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
    Some(Value::from(if utc { text + "Z" } else { text }).to_string())
}

/// An unscaled decimal as a JSON number with `scale` digits after the point.
fn decimal_text(unscaled: i128, scale: i8) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    let scale = scale.max(0) as usize;
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// `add.stats`: record count and, for data columns with exact footer statistics, min, max and
/// null count.
fn stats_json(schema: &Schema, partition_by: &[String], f: &DataFile) -> String {
    let mut mins = Vec::new();
    let mut maxes = Vec::new();
    let mut nulls = Vec::new();
    for (column, s) in &f.stats {
        if partition_by.contains(column) {
            continue;
        }
        let Ok(field) = schema.field_with_name(column) else {
            continue;
        };
        let key = Value::from(column.as_str()).to_string();
        let ColumnStats { nulls: n, min, max } = s;
        if let Some(n) = n {
            nulls.push(format!("{key}:{n}"));
        }
        if let Some(v) = min
            .as_ref()
            .and_then(|v| stat_text(field.data_type(), v, false))
        {
            mins.push(format!("{key}:{v}"));
        }
        if let Some(v) = max
            .as_ref()
            .and_then(|v| stat_text(field.data_type(), v, true))
        {
            maxes.push(format!("{key}:{v}"));
        }
    }
    let mut out = format!("{{\"numRecords\":{}", f.rows);
    for (name, items) in [
        ("minValues", mins),
        ("maxValues", maxes),
        ("nullCount", nulls),
    ] {
        if !items.is_empty() {
            out.push_str(&format!(",\"{name}\":{{{}}}", items.join(",")));
        }
    }
    out.push('}');
    out
}

// ---------------------------------------------------------------------------------------------
// Commits
// ---------------------------------------------------------------------------------------------

/// The paths of partitions whose content differs between `prev` and `cur`.
fn changed(prev: Option<&Manifest>, cur: &Manifest) -> BTreeSet<String> {
    let Some(prev) = prev else {
        return cur.partitions.keys().cloned().collect();
    };
    prev.partitions
        .keys()
        .chain(cur.partitions.keys())
        .filter(|k| prev.partitions.get(*k) != cur.partitions.get(*k))
        .cloned()
        .collect()
}

/// The files of `partitions` (resolved), by path, with each one's Delta partition values.
fn files_of<'a>(
    schema: &Schema,
    partitions: &'a [Partition],
) -> Result<BTreeMap<&'a str, (&'a DataFile, Value)>, DeltaError> {
    let mut out = BTreeMap::new();
    for p in partitions {
        let values = partition_values(schema, p)?;
        for f in &p.files {
            out.insert(f.path.as_str(), (f, values.clone()));
        }
    }
    Ok(out)
}

/// The commit of Delta version `cur.version - 1`, derived from manifest `cur` and its parent
/// `prev` (`None`: the log starts here, so every file is added). `before` and `after` are the
/// partitions of [`changed`] as `prev` and `cur` hold them, with their files resolved.
fn commit_bytes(
    prev: Option<&Manifest>,
    cur: &Manifest,
    before: &[Partition],
    after: &[Partition],
) -> Result<Vec<u8>, DeltaError> {
    let ts = millis(cur);
    let before = match prev {
        Some(p) => files_of(&p.schema, before)?,
        None => BTreeMap::new(),
    };
    let after = files_of(&cur.schema, after)?;
    let operation = match (cur.change.kind, prev) {
        (ChangeKind::Rollback, _) => "RESTORE",
        (_, None) => "CREATE TABLE AS SELECT",
        _ => "WRITE",
    };
    let passed = cur.audits.iter().all(|a| a.passed || a.severity != "error");
    let mut lines = vec![json!({"commitInfo": {
        "timestamp": ts,
        "operation": operation,
        "operationParameters": {
            "mode": "Overwrite",
            "partitionBy": serde_json::to_string(&cur.partition_by).expect("strings"),
        },
        "engineInfo": format!("wap/{}", env!("CARGO_PKG_VERSION")),
        "isBlindAppend": false,
        "wap": {
            "version": cur.version,
            "runId": cur.change.run_id,
            "logicalDate": cur.change.logical_date,
            "wapVersion": env!("CARGO_PKG_VERSION"),
            "partitions": cur.change.partitions,
            "restoredVersion": cur.change.restored_version,
            "audits": {
                "passed": passed,
                "rules": cur.audits.iter().map(|a| json!({
                    "name": a.name,
                    "severity": a.severity,
                    "passed": a.passed,
                    "failingRows": a.failing_rows,
                })).collect::<Vec<_>>(),
            },
        },
    }})];
    let proto = protocol(&cur.schema);
    let meta = metadata(cur)?;
    match prev {
        None => {
            lines.push(json!({ "protocol": proto }));
            lines.push(json!({ "metaData": meta }));
        }
        Some(p) => {
            if protocol(&p.schema) != proto {
                lines.push(json!({ "protocol": proto }));
            }
            if p.schema != cur.schema || p.partition_by != cur.partition_by {
                lines.push(json!({ "metaData": meta }));
            }
        }
    }
    lines.push(json!({"txn": {
        "appId": cur.change.run_id,
        "version": cur.version,
        "lastUpdated": ts,
    }}));
    for (&path, (f, values)) in &before {
        if !after.contains_key(path) {
            lines.push(json!({"remove": {
                "path": add_path(path),
                "deletionTimestamp": ts,
                "dataChange": true,
                "extendedFileMetadata": true,
                "partitionValues": values,
                "size": f.size,
            }}));
        }
    }
    for (&path, (f, values)) in &after {
        if !before.contains_key(path) {
            lines.push(json!({"add": {
                "path": add_path(path),
                "partitionValues": values,
                "size": f.size,
                "modificationTime": ts,
                "dataChange": true,
                "stats": stats_json(&cur.schema, &cur.partition_by, f),
            }}));
        }
    }
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// The `wap` version and run id a commit says it is (from its `commitInfo.wap`).
fn commit_identity(bytes: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        let wap = v.get("commitInfo")?.get("wap")?;
        Some((
            wap.get("version")?.as_u64()?,
            wap.get("runId")?.as_str()?.to_string(),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Log state and checkpoints
// ---------------------------------------------------------------------------------------------

/// The table state a checkpoint holds: the reconciled actions.
#[derive(Debug, Default, Clone)]
struct State {
    protocol: Option<Value>,
    metadata: Option<Value>,
    txns: BTreeMap<String, Value>,
    files: BTreeMap<String, Value>,
    tombstones: BTreeMap<String, Value>,
}

impl State {
    fn apply(&mut self, path: &Path, bytes: &[u8]) -> Result<(), DeltaError> {
        let text = std::str::from_utf8(bytes).map_err(|e| DeltaError::corrupt(path, e))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| DeltaError::corrupt(path, e))?;
            self.apply_action(v);
        }
        Ok(())
    }

    fn apply_action(&mut self, v: Value) {
        let Value::Object(map) = v else { return };
        for (kind, mut action) in map {
            if action.is_null() {
                continue;
            }
            let key = |a: &Value, k: &str| a.get(k).and_then(Value::as_str).map(str::to_string);
            match kind.as_str() {
                "protocol" => self.protocol = Some(action),
                "metaData" => self.metadata = Some(action),
                "txn" => {
                    if let Some(id) = key(&action, "appId") {
                        self.txns.insert(id, action);
                    }
                }
                "add" => {
                    if let Some(p) = key(&action, "path") {
                        action["dataChange"] = Value::Bool(false);
                        self.tombstones.remove(&p);
                        self.files.insert(p, action);
                    }
                }
                "remove" => {
                    if let Some(p) = key(&action, "path") {
                        action["dataChange"] = Value::Bool(false);
                        self.files.remove(&p);
                        self.tombstones.insert(p, action);
                    }
                }
                _ => {}
            }
        }
    }

    /// Every action of the checkpoint, one JSON object per line.
    fn lines(&self) -> Vec<Value> {
        let mut out = Vec::new();
        out.extend(self.protocol.iter().map(|p| json!({ "protocol": p })));
        out.extend(self.metadata.iter().map(|m| json!({ "metaData": m })));
        out.extend(self.txns.values().map(|t| json!({ "txn": t })));
        out.extend(self.files.values().map(|a| json!({ "add": a })));
        out.extend(self.tombstones.values().map(|r| json!({ "remove": r })));
        out
    }
}

fn string_map(name: &str) -> Field {
    Field::new(
        name,
        DataType::Map(
            Arc::new(Field::new(
                "key_value",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Utf8, true),
                ])),
                false,
            )),
            false,
        ),
        true,
    )
}

fn string_list(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
        true,
    )
}

fn strct(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

/// The schema of a (classic, single-file) checkpoint, with the actions `wap` writes.
fn checkpoint_schema() -> Arc<Schema> {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let l = |n: &str| Field::new(n, DataType::Int64, true);
    let b = |n: &str| Field::new(n, DataType::Boolean, true);
    Arc::new(Schema::new(vec![
        strct("txn", vec![s("appId"), l("version"), l("lastUpdated")]),
        strct(
            "add",
            vec![
                s("path"),
                string_map("partitionValues"),
                l("size"),
                l("modificationTime"),
                b("dataChange"),
                s("stats"),
            ],
        ),
        strct(
            "remove",
            vec![
                s("path"),
                l("deletionTimestamp"),
                b("dataChange"),
                b("extendedFileMetadata"),
                string_map("partitionValues"),
                l("size"),
            ],
        ),
        strct(
            "metaData",
            vec![
                s("id"),
                s("name"),
                s("description"),
                strct("format", vec![s("provider"), string_map("options")]),
                s("schemaString"),
                string_list("partitionColumns"),
                string_map("configuration"),
                l("createdTime"),
            ],
        ),
        strct(
            "protocol",
            vec![
                Field::new("minReaderVersion", DataType::Int32, true),
                Field::new("minWriterVersion", DataType::Int32, true),
                string_list("readerFeatures"),
                string_list("writerFeatures"),
            ],
        ),
    ]))
}

/// The checkpoint (Parquet) of the actions `lines` ([`State::lines`]).
fn encode_checkpoint(path: &Path, lines: &[Value]) -> Result<Vec<u8>, DeltaError> {
    let schema = checkpoint_schema();
    let mut text = Vec::new();
    for line in lines {
        text.extend_from_slice(line.to_string().as_bytes());
        text.push(b'\n');
    }
    let corrupt = |e: &dyn std::fmt::Display| DeltaError::corrupt(path, e);
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(8192)
        .build_decoder()
        .map_err(|e| corrupt(&e))?;
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, Arc::clone(&schema), None)
        .map_err(|e| corrupt(&e))?;
    let mut rest = &text[..];
    loop {
        let read = decoder.decode(rest).map_err(|e| corrupt(&e))?;
        rest = &rest[read..];
        match decoder.flush().map_err(|e| corrupt(&e))? {
            Some(batch) => writer.write(&batch).map_err(|e| corrupt(&e))?,
            None if rest.is_empty() => break,
            None => {}
        }
    }
    writer.close().map_err(|e| corrupt(&e))?;
    Ok(out)
}

fn decode_checkpoint(path: &Path, bytes: Bytes) -> Result<State, DeltaError> {
    let corrupt = |e: &dyn std::fmt::Display| DeltaError::corrupt(path, e);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| corrupt(&e))?
        .build()
        .map_err(|e| corrupt(&e))?;
    let mut text = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut text);
        for batch in reader {
            writer
                .write(&batch.map_err(|e| corrupt(&e))?)
                .map_err(|e| corrupt(&e))?;
        }
        writer.finish().map_err(|e| corrupt(&e))?;
    }
    let mut state = State::default();
    state.apply(path, &text)?;
    // A NULL partition value may come back as a missing key: put it back.
    let columns: Vec<String> = state
        .metadata
        .as_ref()
        .and_then(|m| m.get("partitionColumns"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    for action in state
        .files
        .values_mut()
        .chain(state.tombstones.values_mut())
    {
        if let Some(Value::Object(values)) = action.get_mut("partitionValues") {
            for c in &columns {
                values.entry(c.clone()).or_insert(Value::Null);
            }
        } else if let Value::Object(a) = action {
            a.insert(
                "partitionValues".into(),
                Value::Object(columns.iter().map(|c| (c.clone(), Value::Null)).collect()),
            );
        }
    }
    Ok(state)
}

// ---------------------------------------------------------------------------------------------
// The log on storage
// ---------------------------------------------------------------------------------------------

/// What `wap show` and `wap doctor` say of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogListing {
    pub commits: BTreeSet<u64>,
    pub checkpoints: BTreeSet<u64>,
}

/// The Delta log of one table.
#[derive(Debug, Clone)]
pub struct DeltaLog {
    store: Arc<dyn ObjectStore>,
}

impl DeltaLog {
    /// The log of the table whose root is `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        DeltaLog { store }
    }

    /// Every commit and checkpoint (one listing of `_delta_log/`; `after`: only entries past
    /// that Delta version's commit, which object stores list from without reading the rest).
    pub async fn list(&self, after: Option<u64>) -> Result<LogListing, DeltaError> {
        let folder = layout::delta_log_folder();
        let mut listing = match after {
            Some(d) => self
                .store
                .list_with_offset(Some(&folder), &layout::delta_commit(d)),
            None => self.store.list(Some(&folder)),
        };
        let mut out = LogListing::default();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| DeltaError::storage("list", &folder, e))?;
            match layout::delta_entry(&meta.location) {
                Some(DeltaEntry::Commit(v)) => out.commits.insert(v),
                Some(DeltaEntry::Checkpoint(v)) => out.checkpoints.insert(v),
                None => false,
            };
        }
        Ok(out)
    }

    async fn get(&self, path: &Path) -> Result<Option<Bytes>, DeltaError> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| DeltaError::storage("read", path, e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(DeltaError::storage("read", path, e)),
        }
    }

    /// Before publishing on top of `base`: writes every Delta commit missing up to version
    /// `base` (in order, from the manifests), and refuses if the slot of version `base + 1`
    /// holds a commit that is not `wap`'s. Costs one listing when the log is up to date.
    /// Returns how many commits it wrote.
    pub async fn prepare(&self, base: u64) -> Result<u64, DeltaError> {
        let listing = self.list(base.checked_sub(2)).await?;
        if let Some(&d) = listing.commits.iter().find(|&&d| d >= base) {
            self.check_ours(d).await?;
        }
        if base == 0 || listing.commits.contains(&(base - 1)) {
            return Ok(0);
        }
        let all = self.list(None).await?;
        let start = match all.commits.range(..base - 1).next_back() {
            Some(&d) => d + 2,
            // An empty log: it starts at `base`, with every file of that version.
            None => base,
        };
        let snapshot = start == 1 || all.commits.is_empty();
        let mut prev = match snapshot {
            true => None,
            false => Some(self.manifest(start, start - 1).await?),
        };
        for version in start..=base {
            let cur = self.manifest(version, version).await?;
            self.write(prev.as_ref(), &cur, prev.is_none()).await?;
            prev = Some(cur);
        }
        Ok(base + 1 - start)
    }

    async fn manifest(&self, version: u64, wanted: u64) -> Result<Manifest, DeltaError> {
        match versions::read_manifest(&self.store, wanted).await {
            Ok(m) => Ok(m),
            Err(e) if e.is_usage() => Err(DeltaError::MissingManifest {
                version,
                missing: wanted,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses when the commit of Delta version `d` exists and is not one `wap` wrote (a
    /// commit wap wrote for a version that is not committed yet cannot exist).
    async fn check_ours(&self, d: u64) -> Result<(), DeltaError> {
        let path = layout::delta_commit(d);
        let Some(bytes) = self.get(&path).await? else {
            return Ok(());
        };
        let version = d + 1;
        let ours = match commit_identity(&bytes) {
            Some((v, run)) if v == version => versions::read_manifest(&self.store, version)
                .await
                .is_ok_and(|m| m.change.run_id == run),
            _ => false,
        };
        if ours {
            Ok(())
        } else {
            Err(DeltaError::Foreign {
                path: path.to_string(),
                what: format!("version {version}"),
            })
        }
    }

    /// After manifest `cur` is committed on top of `prev`: writes its Delta commit (and a
    /// checkpoint when one is due).
    pub async fn publish(&self, prev: Option<&Manifest>, cur: &Manifest) -> Result<(), DeltaError> {
        self.write(prev, cur, false).await
    }

    /// Writes the commit of `cur` (resolving the files it needs), then a checkpoint when one is
    /// due (`start`: the log starts at this commit, which gets one whatever its number).
    async fn write(
        &self,
        prev: Option<&Manifest>,
        cur: &Manifest,
        start: bool,
    ) -> Result<(), DeltaError> {
        // Only the partitions that differ, resolved together (each segment read once).
        let paths = changed(prev, cur);
        let pick = |m: &Manifest| -> Vec<Partition> {
            paths
                .iter()
                .filter_map(|k| m.partitions.get(k).cloned())
                .collect()
        };
        let mut before = prev.map(pick).unwrap_or_default();
        let mut after = pick(cur);
        let mut refs: Vec<&mut Partition> = before.iter_mut().chain(after.iter_mut()).collect();
        versions::resolve_partitions(&self.store, &mut refs).await?;
        let bytes = commit_bytes(prev, cur, &before, &after)?;
        let d = cur.version - 1;
        let path = layout::delta_commit(d);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self.get(&path).await?.unwrap_or_default();
                let same = existing == bytes
                    || commit_identity(&existing) == Some((cur.version, cur.change.run_id.clone()));
                if !same {
                    return Err(DeltaError::Foreign {
                        path: path.to_string(),
                        what: format!("version {}", cur.version),
                    });
                }
            }
            Err(e) => return Err(DeltaError::storage("create", &path, e)),
        }
        if d > 0 && (d.is_multiple_of(CHECKPOINT_INTERVAL) || start) {
            self.checkpoint(d, &bytes).await?;
        }
        Ok(())
    }

    /// The newest checkpoint `_last_checkpoint` names, if readable.
    async fn last_checkpoint(&self) -> Result<Option<u64>, DeltaError> {
        let path = layout::delta_last_checkpoint();
        Ok(self
            .get(&path)
            .await?
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("version").and_then(Value::as_u64)))
    }

    /// The state at Delta version `d`, whose commit bytes are `latest`: the newest checkpoint
    /// before it plus the commits since.
    /// `last` is what `_last_checkpoint` names.
    async fn state_at(
        &self,
        d: u64,
        latest: &[u8],
        last: Option<u64>,
    ) -> Result<State, DeltaError> {
        let mut from = None;
        if let Some(c) = last.filter(|&c| c < d) {
            let path = layout::delta_checkpoint(c);
            if let Some(bytes) = self.get(&path).await? {
                from = Some((decode_checkpoint(&path, bytes)?, c + 1));
            }
        }
        let (mut state, first) = match from {
            Some(f) => f,
            None => {
                let all = self.list(None).await?;
                match all.checkpoints.range(..d).next_back() {
                    Some(&c) => {
                        let path = layout::delta_checkpoint(c);
                        let bytes = self
                            .get(&path)
                            .await?
                            .ok_or_else(|| DeltaError::corrupt(&path, "listed, then gone"))?;
                        (decode_checkpoint(&path, bytes)?, c + 1)
                    }
                    None => (State::default(), all.commits.first().copied().unwrap_or(d)),
                }
            }
        };
        for v in first..d {
            let path = layout::delta_commit(v);
            let bytes = self.get(&path).await?.ok_or_else(|| {
                DeltaError::corrupt(&path, "a commit before a checkpoint is missing")
            })?;
            state.apply(&path, &bytes)?;
        }
        state.apply(&layout::delta_commit(d), latest)?;
        Ok(state)
    }

    /// Writes the checkpoint of Delta version `d` and points `_last_checkpoint` at it.
    async fn checkpoint(&self, d: u64, latest: &[u8]) -> Result<(), DeltaError> {
        let last = self.last_checkpoint().await?;
        let lines = self.state_at(d, latest, last).await?.lines();
        let path = layout::delta_checkpoint(d);
        let bytes = encode_checkpoint(&path, &lines)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            // An existing checkpoint is derived from the same commits.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(DeltaError::storage("create", &path, e)),
        }
        // A hint: never moved back past a newer checkpoint seen before this one was written.
        if last.is_some_and(|c| c >= d) {
            return Ok(());
        }
        let hint = layout::delta_last_checkpoint();
        let body = json!({"version": d, "size": lines.len()}).to_string();
        self.store
            .put(&hint, PutPayload::from(body.into_bytes()))
            .await
            .map_err(|e| DeltaError::storage("write", &hint, e))?;
        Ok(())
    }

    /// The log entries gc may delete when `oldest` is the oldest retained `wap` version:
    /// commits and checkpoints older than the newest checkpoint at or before Delta version
    /// `oldest - 1` (no retained version needs them; readers start at that checkpoint).
    pub async fn expired(&self, oldest: u64) -> Result<Vec<Path>, DeltaError> {
        let all = self.list(None).await?;
        let Some(&keep) = all
            .checkpoints
            .range(..oldest.saturating_sub(1) + 1)
            .next_back()
        else {
            return Ok(Vec::new());
        };
        Ok(all
            .commits
            .range(..keep)
            .map(|&c| layout::delta_commit(c))
            .chain(
                all.checkpoints
                    .range(..keep)
                    .map(|&c| layout::delta_checkpoint(c)),
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_every_digit() {
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(-5, 2), "-0.05");
        assert_eq!(decimal_text(7, 0), "7");
        assert_eq!(decimal_text(-150, 3), "-0.150");
    }

    #[test]
    fn timestamps_round_outwards_to_milliseconds() {
        let us = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        // 1 ms + 1 us after the epoch.
        let v = Value::from(1_001);
        assert_eq!(
            stat_text(&us, &v, false).unwrap(),
            "\"1970-01-01T00:00:00.001Z\""
        );
        assert_eq!(
            stat_text(&us, &v, true).unwrap(),
            "\"1970-01-01T00:00:00.002Z\""
        );
        let ntz = DataType::Timestamp(TimeUnit::Second, None);
        assert_eq!(
            stat_text(&ntz, &Value::from(86_400), true).unwrap(),
            "\"1970-01-02T00:00:00.000\""
        );
        let before = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(
            stat_text(&before, &Value::from(-1), false).unwrap(),
            "\"1969-12-31T23:59:59.999\""
        );
    }

    #[test]
    fn long_strings_keep_a_lower_bound_only() {
        let t = DataType::Utf8;
        let long = Value::from("é".repeat(40));
        assert_eq!(
            stat_text(&t, &long, false).unwrap(),
            Value::from("é".repeat(32)).to_string()
        );
        assert_eq!(stat_text(&t, &long, true), None);
        assert_eq!(
            stat_text(&DataType::Boolean, &Value::from(true), false),
            None
        );
    }

    #[test]
    fn paths_are_escaped_again_and_values_take_delta_form() {
        assert_eq!(
            add_path("staging/r/c=a%20b/part-00000.parquet"),
            "staging/r/c=a%2520b/part-00000.parquet"
        );
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into()));
        assert_eq!(
            partition_value("p", "c", &ts, Some("2024-01-02T10:00:00+02:00")).unwrap(),
            Value::from("2024-01-02 08:00:00.000000")
        );
        let ntz = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(
            partition_value("p", "c", &ntz, Some("2024-01-02T10:00:00.5")).unwrap(),
            Value::from("2024-01-02 10:00:00.500000")
        );
        assert_eq!(
            partition_value("p", "c", &DataType::Utf8, None).unwrap(),
            Value::Null
        );
        let err = partition_value("c=__EMPTY__", "c", &DataType::Utf8, Some("")).unwrap_err();
        assert!(err.is_config());
        assert!(err.to_string().contains("cannot tell from NULL"), "{err}");
    }

    #[test]
    fn types_delta_cannot_hold_are_refused_with_a_way_out() {
        let schema = Schema::new(vec![
            Field::new("ok", DataType::Decimal128(12, 2), true),
            Field::new("u", DataType::UInt32, true),
            Field::new("ns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            Field::new("t", DataType::Time64(TimeUnit::Microsecond), true),
        ]);
        let problems: Vec<String> = check_schema(&schema)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("`u`") && problems[0].contains("unsigned"));
        assert!(problems[1].contains("`ns`") && problems[1].contains("Microsecond"));
        assert!(problems[2].contains("`t`"));
    }

    #[test]
    fn the_table_id_is_a_uuid_and_stable() {
        let mut m = crate::manifest::tests::sample(1);
        m.table_id = "0123456789abcdef0123456789abcdef".into();
        let id = table_uuid(&m);
        assert_eq!(id, "01234567-89ab-5def-8123-456789abcdef");
        m.version = 7;
        assert_eq!(table_uuid(&m), id);
    }

    #[test]
    fn a_checkpoint_reads_back_as_the_state_it_was_written_from() {
        let mut state = State::default();
        let commit = concat!(
            "{\"protocol\":{\"minReaderVersion\":1,\"minWriterVersion\":2}}\n",
            "{\"metaData\":{\"id\":\"x\",\"format\":{\"provider\":\"parquet\",\"options\":{}},",
            "\"schemaString\":\"{}\",\"partitionColumns\":[\"d\"],\"configuration\":{\"a\":\"b\"},",
            "\"createdTime\":5}}\n",
            "{\"txn\":{\"appId\":\"r1\",\"version\":1,\"lastUpdated\":5}}\n",
            "{\"add\":{\"path\":\"a\",\"partitionValues\":{\"d\":null},\"size\":3,",
            "\"modificationTime\":5,\"dataChange\":true,\"stats\":\"{\\\"numRecords\\\":1}\"}}\n",
            "{\"add\":{\"path\":\"b\",\"partitionValues\":{\"d\":\"x y\"},\"size\":4,",
            "\"modificationTime\":5,\"dataChange\":true}}\n",
            "{\"remove\":{\"path\":\"b\",\"deletionTimestamp\":6,\"dataChange\":true,",
            "\"extendedFileMetadata\":true,\"partitionValues\":{\"d\":\"x y\"},\"size\":4}}\n",
        );
        let path = layout::delta_checkpoint(10);
        state.apply(&path, commit.as_bytes()).unwrap();
        assert_eq!(state.files.len(), 1);
        assert_eq!(state.tombstones.len(), 1);
        let bytes = encode_checkpoint(&path, &state.lines()).unwrap();
        let back = decode_checkpoint(&path, Bytes::from(bytes)).unwrap();
        assert_eq!(back.lines(), state.lines());
    }
}
