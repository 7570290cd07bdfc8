//! The versioned table format: immutable manifests and the pointer to the current one.
//!
//! Where each object lives is [`crate::layout`]'s business. A manifest is the index of one version: every partition with its row, byte and file counts
//! and the run that wrote it, the table schema, the watermarks and the audit summary of the run
//! that produced it. Its `checksum` covers every other byte of its canonical JSON, so a truncated
//! or edited manifest is refused, not read.
//!
//! The file lists live in segments: one immutable, content-addressed file per published run
//! (named by the SHA-256 of its bytes, so it cannot change under a manifest that names it), with
//! the files of each partition that run wrote. A new version reuses the segments of every
//! partition it keeps, so publishing costs the size of the index, not of the table's file list.
//! Format-1 manifests (files inline) are still read; their partitions keep their inline lists
//! until a run replaces them.
//!
//! This module knows nothing of DataFusion and never talks to storage.

use std::collections::BTreeMap;

use crate::layout;
use arrow::datatypes::{Schema, SchemaRef};
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this build writes (it also reads [`FORMAT_V1`]).
pub const FORMAT: &str = "wap-manifest/2";
/// The first format: every partition's files inline in the manifest.
pub const FORMAT_V1: &str = "wap-manifest/1";
/// The format of segments (file lists).
pub const SEGMENT_FORMAT: &str = "wap-segment/1";

/// Errors decoding manifests or the pointer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest {path} is not valid JSON of format {FORMAT}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("manifest {path} does not read as format {FORMAT} though it says it is")]
    Unreadable { path: String },
    #[error("manifest {path} has format `{found}`; this wap reads {FORMAT} and {FORMAT_V1}")]
    Format { path: String, found: String },
    #[error("manifest {path} is corrupt: checksum {found} does not match its content ({computed})")]
    Checksum {
        path: String,
        found: String,
        computed: String,
    },
    #[error("manifest {path} claims version {found}, expected {expected}")]
    Version {
        path: String,
        found: u64,
        expected: u64,
    },
    #[error("pointer {path} is not valid JSON: {source}")]
    PointerParse {
        path: String,
        source: serde_json::Error,
    },
    #[error("pointer {path} is corrupt: {message}")]
    Pointer { path: String, message: String },
    #[error("segment {path} is corrupt: {message}")]
    Segment { path: String, message: String },
    #[error("segment {path} is not valid JSON: {source}")]
    SegmentParse {
        path: String,
        source: serde_json::Error,
    },
}

/// One data file of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Path relative to the table root.
    pub path: String,
    pub size: u64,
    pub rows: u64,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Smallest and largest key in the file (the file is sorted by key), rendered as text.
    pub key_min: Vec<Option<String>>,
    pub key_max: Vec<Option<String>>,
    /// Column statistics from the file's footer, by column (files written before they were
    /// kept have none). Only exact values are kept: a bound that the footer truncated is left
    /// out, so that other engines that prune files by them never skip a file wrongly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, ColumnStats>,
}

/// Statistics of one column of one data file. Values are in the column's physical form, whatever
/// format reads them: integers and floats as JSON numbers, a date as days since 1970-01-01, a
/// timestamp as an integer in its Arrow unit, a decimal as its unscaled integer in a string,
/// strings as strings, booleans as booleans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// NULLs in the column (`None`: a row group did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nulls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
}

impl Eq for ColumnStats {}

/// One partition of a version, as the index holds it.
#[derive(Debug, Clone, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Hive-style path relative to the staging run folder, e.g. `order_date=2024-01-02`
    /// (empty for an unpartitioned table).
    pub path: String,
    /// Partition column values as text; `None` is NULL.
    pub values: BTreeMap<String, Option<String>>,
    pub rows: u64,
    /// Bytes in all files of this partition.
    pub bytes: u64,
    /// Number of files.
    pub file_count: u64,
    /// The run that wrote this partition and its logical date.
    pub run_id: String,
    pub logical_date: String,
    /// The segment holding this partition's file list (path relative to the table root).
    /// `None` only for a partition carried over from a format-1 manifest: its files are inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// The files: inline (format 1), or filled in from the segment by
    /// [`crate::versions::resolve_files`]. Written to the index only when `segment` is `None`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DataFile>,
    /// The smallest and largest key of the partition (its first file's first key, its last
    /// file's last key: a partition is written as one sorted run), so that a merge finds the
    /// partitions that may hold a key from the index alone. `None` for partitions written
    /// before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_min: Option<Vec<Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_max: Option<Vec<Option<String>>>,
}

impl PartialEq for Partition {
    /// Same content: with a segment, the segment (content-addressed) stands for the files,
    /// whether or not they were resolved.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.values == other.values
            && self.rows == other.rows
            && self.bytes == other.bytes
            && self.file_count == other.file_count
            && self.run_id == other.run_id
            && self.logical_date == other.logical_date
            && self.segment == other.segment
            && self.key_min == other.key_min
            && self.key_max == other.key_max
            && (self.segment.is_some() || self.files == other.files)
    }
}

impl Partition {
    /// A partition of `files` whose list is stored in `segment`.
    pub fn new(
        path: &str,
        values: BTreeMap<String, Option<String>>,
        files: &[DataFile],
        run_id: &str,
        logical_date: &str,
        segment: &str,
    ) -> Self {
        Partition {
            path: path.to_string(),
            values,
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.size).sum(),
            file_count: files.len() as u64,
            run_id: run_id.to_string(),
            logical_date: logical_date.to_string(),
            segment: Some(segment.to_string()),
            files: files.to_vec(),
            key_min: files.first().map(|f| f.key_min.clone()),
            key_max: files.last().map(|f| f.key_max.clone()),
        }
    }

    /// True when `files` holds this partition's file list (inline, or resolved).
    pub fn files_known(&self) -> bool {
        self.files.len() as u64 == self.file_count
    }

    /// This partition as written to the index: without resolved file lists.
    fn for_index(&self) -> Partition {
        let mut p = self.clone();
        if p.segment.is_some() {
            p.files.clear();
        }
        p
    }
}

/// The file lists of the partitions one run wrote. Immutable and content-addressed: its name
/// carries the SHA-256 of its bytes, which [`Segment::decode`] checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub format: String,
    /// Files of each partition, by partition path.
    pub partitions: BTreeMap<String, Vec<DataFile>>,
}

/// Most partitions one segment lists: a run that writes more (a backfill) writes several, so
/// that whoever needs the files of one partition (a Delta commit replacing it, a merge, a query
/// of a few partitions) reads at most this many partitions' lists, not the whole run's.
pub const SEGMENT_PARTITIONS: usize = 256;

impl Segment {
    /// A segment of these partitions.
    pub fn new(partitions: BTreeMap<String, Vec<DataFile>>) -> Self {
        Segment {
            format: SEGMENT_FORMAT.to_string(),
            partitions,
        }
    }

    /// The segments of one run's partitions: [`SEGMENT_PARTITIONS`] each, in path order (so the
    /// same partitions always make the same segments).
    pub fn chunked(partitions: BTreeMap<String, Vec<DataFile>>) -> Vec<Self> {
        let mut out = Vec::new();
        let mut chunk = BTreeMap::new();
        for (path, files) in partitions {
            chunk.insert(path, files);
            if chunk.len() == SEGMENT_PARTITIONS {
                out.push(Segment::new(std::mem::take(&mut chunk)));
            }
        }
        if !chunk.is_empty() {
            out.push(Segment::new(chunk));
        }
        out
    }

    /// Its path in the staging folder `folder`, and its bytes.
    pub fn encode(&self, folder: &str) -> (Path, Vec<u8>) {
        let bytes = serde_json::to_vec(self).expect("segment serializes");
        (layout::segment_path(folder, &sha256_hex(&bytes)), bytes)
    }

    /// Parses a segment read from `path`, checking its bytes against the digest in its name.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, ManifestError> {
        let err = |message: String| ManifestError::Segment {
            path: path.to_string(),
            message,
        };
        let named = layout::segment_digest(path)
            .ok_or_else(|| err("not a segment name (_wap-files-<sha256>.json)".into()))?;
        let computed = sha256_hex(bytes);
        if computed != named {
            return Err(err(format!(
                "its bytes hash to {computed}, not to the digest in its name"
            )));
        }
        let segment: Segment =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::SegmentParse {
                path: path.to_string(),
                source,
            })?;
        if segment.format != SEGMENT_FORMAT {
            return Err(err(format!(
                "format `{}`; this wap reads {SEGMENT_FORMAT}",
                segment.format
            )));
        }
        Ok(segment)
    }
}

/// How a version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A job run replaced the partitions it produced.
    Run,
    /// A rollback restored the content of an older version.
    Rollback,
}

/// What changed from the parent version, and who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub run_id: String,
    /// Logical date of the run (empty for a rollback).
    pub logical_date: String,
    /// Partition paths this version replaced or added (for a rollback: every path that differs).
    pub partitions: Vec<String>,
    /// For a rollback: the version whose content was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_version: Option<u64>,
    /// Wall-clock time of publishing, RFC 3339. Informational only: never part of a key.
    pub published_at: String,
}

/// Result of one audit rule, as kept in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSummary {
    pub name: String,
    pub severity: String,
    pub passed: bool,
    pub failing_rows: u64,
}

/// One immutable version of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u64,
    /// 0 for the first version.
    pub parent: u64,
    pub table: String,
    pub schema: Schema,
    pub partition_by: Vec<String>,
    pub key: Vec<String>,
    /// Partitions by path, sorted.
    pub partitions: BTreeMap<String, Partition>,
    /// Job state that moves with the data (for example `max_logical_date`).
    pub watermarks: BTreeMap<String, String>,
    pub change: Change,
    /// Audit results of the run that produced this version.
    pub audits: Vec<AuditSummary>,
    /// The table's identity: set by its first version, carried by every later one (empty for
    /// tables whose first version predates it). Other formats' table ids derive from it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub table_id: String,
    /// SHA-256 over the canonical JSON with this field empty.
    #[serde(default)]
    pub checksum: String,
}

/// Lower-case hex of `bytes` (digests, run ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity of a new table: a digest of its name and of its first run and publication, so
/// that two tables of one name (or one table dropped and written again) never share it.
pub fn new_table_id(table: &str, run_id: &str, published_at: &str) -> String {
    sha256_hex(format!("wap-table\n{table}\n{run_id}\n{published_at}").as_bytes())[..32].to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Manifest {
    /// Schema as an Arrow `SchemaRef`.
    pub fn schema_ref(&self) -> SchemaRef {
        SchemaRef::new(self.schema.clone())
    }

    /// Total rows of this version.
    pub fn rows(&self) -> u64 {
        self.partitions.values().map(|p| p.rows).sum()
    }

    /// Every data file of this version. Complete only once the file lists are known (see
    /// [`Partition::files_known`] and [`crate::versions::resolve_files`]).
    pub fn files(&self) -> impl Iterator<Item = &DataFile> {
        self.partitions.values().flat_map(|p| &p.files)
    }

    /// Segments this version references.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.partitions
            .values()
            .filter_map(|p| p.segment.as_deref())
    }

    /// Serializes with a fresh checksum (resolved file lists are left out: segments hold them).
    ///
    /// The bytes are compact JSON whose last member is `"checksum"`: the SHA-256 of the same
    /// bytes with the checksum's value empty. Sealing and checking work on the bytes, so neither
    /// serializes the manifest a second time.
    pub fn encode(&self) -> Vec<u8> {
        let resolved = self
            .partitions
            .values()
            .any(|p| p.segment.is_some() && !p.files.is_empty());
        let mut unsealed = if resolved || !self.checksum.is_empty() {
            let mut copy = self.clone();
            for p in copy.partitions.values_mut() {
                *p = p.for_index();
            }
            copy.checksum.clear();
            serde_json::to_vec(&copy)
        } else {
            serde_json::to_vec(self)
        }
        .expect("manifest serializes");
        debug_assert!(unsealed.ends_with(CHECKSUM_TAIL));
        let digest = sha256_hex(&unsealed);
        unsealed.truncate(unsealed.len() - 2);
        unsealed.extend_from_slice(digest.as_bytes());
        unsealed.extend_from_slice(b"\"}");
        unsealed
    }

    /// Parses and verifies a manifest read from `path`, which must hold `expected` version.
    pub fn decode(path: &Path, bytes: &[u8], expected: u64) -> Result<Self, ManifestError> {
        let path_s = path.to_string();
        // The common case, a format-2 manifest, in one pass.
        if let Ok(manifest) = serde_json::from_slice::<Manifest>(bytes)
            && manifest.format == FORMAT
        {
            let canonical =
                unsealed(bytes, &manifest.checksum).ok_or_else(|| ManifestError::Checksum {
                    path: path_s.clone(),
                    found: manifest.checksum.clone(),
                    computed: "(the checksum is not the last member)".into(),
                })?;
            check(
                path,
                &canonical,
                &manifest.checksum,
                manifest.version,
                expected,
            )?;
            return Ok(manifest);
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
                path: path_s.clone(),
                source,
            })?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format == FORMAT_V1 {
            return v1::decode(path, value, expected);
        }
        if format != FORMAT {
            return Err(ManifestError::Format {
                path: path_s,
                found: format.to_string(),
            });
        }
        // Format 2 that does not deserialize: say why.
        Err(match serde_json::from_value::<Manifest>(value) {
            Err(source) => ManifestError::Parse {
                path: path_s,
                source,
            },
            Ok(_) => ManifestError::Unreadable { path: path_s },
        })
    }
}

/// How every sealed manifest ends before its checksum is filled in.
const CHECKSUM_TAIL: &[u8] = b",\"checksum\":\"\"}";

/// The bytes a manifest's checksum was computed over: `bytes` with the value of its final
/// `"checksum"` member emptied. `None` when the checksum is not the last member.
fn unsealed(bytes: &[u8], checksum: &str) -> Option<Vec<u8>> {
    let tail = format!(",\"checksum\":\"{checksum}\"}}");
    let head = bytes.strip_suffix(tail.as_bytes())?;
    let mut out = Vec::with_capacity(head.len() + CHECKSUM_TAIL.len());
    out.extend_from_slice(head);
    out.extend_from_slice(CHECKSUM_TAIL);
    Some(out)
}

fn check(
    path: &Path,
    canonical: &[u8],
    checksum: &str,
    version: u64,
    expected: u64,
) -> Result<(), ManifestError> {
    let computed = sha256_hex(canonical);
    if computed != checksum {
        return Err(ManifestError::Checksum {
            path: path.to_string(),
            found: checksum.to_string(),
            computed,
        });
    }
    if version != expected {
        return Err(ManifestError::Version {
            path: path.to_string(),
            found: version,
            expected,
        });
    }
    Ok(())
}

/// Format 1: the same manifest with every partition's files inline. Read only; its partitions
/// become index entries without a segment.
mod v1 {
    use super::*;

    #[derive(Clone, Serialize, Deserialize)]
    struct Partition1 {
        path: String,
        values: BTreeMap<String, Option<String>>,
        rows: u64,
        files: Vec<DataFile>,
        run_id: String,
        logical_date: String,
    }

    #[derive(Clone, Serialize, Deserialize)]
    struct Manifest1 {
        format: String,
        version: u64,
        parent: u64,
        table: String,
        schema: Schema,
        partition_by: Vec<String>,
        key: Vec<String>,
        partitions: BTreeMap<String, Partition1>,
        watermarks: BTreeMap<String, String>,
        change: Change,
        audits: Vec<AuditSummary>,
        #[serde(default)]
        checksum: String,
    }

    pub(super) fn decode(
        path: &Path,
        value: serde_json::Value,
        expected: u64,
    ) -> Result<Manifest, ManifestError> {
        let m: Manifest1 =
            serde_json::from_value(value).map_err(|source| ManifestError::Parse {
                path: path.to_string(),
                source,
            })?;
        let mut copy = m.clone();
        copy.checksum.clear();
        let canonical = serde_json::to_vec_pretty(&copy).expect("manifest serializes");
        check(path, &canonical, &m.checksum, m.version, expected)?;
        Ok(Manifest {
            format: FORMAT_V1.to_string(),
            version: m.version,
            parent: m.parent,
            table: m.table,
            schema: m.schema,
            partition_by: m.partition_by,
            key: m.key,
            partitions: m
                .partitions
                .into_iter()
                .map(|(k, p)| {
                    let entry = Partition {
                        path: p.path,
                        values: p.values,
                        rows: p.rows,
                        bytes: p.files.iter().map(|f| f.size).sum(),
                        file_count: p.files.len() as u64,
                        run_id: p.run_id,
                        logical_date: p.logical_date,
                        segment: None,
                        files: p.files,
                        key_min: None,
                        key_max: None,
                    };
                    (k, entry)
                })
                .collect(),
            watermarks: m.watermarks,
            change: m.change,
            audits: m.audits,
            table_id: String::new(),
            checksum: m.checksum,
        })
    }

    #[cfg(test)]
    pub(crate) fn encode_for_test(m: &Manifest) -> Vec<u8> {
        let mut old = Manifest1 {
            format: FORMAT_V1.to_string(),
            version: m.version,
            parent: m.parent,
            table: m.table.clone(),
            schema: m.schema.clone(),
            partition_by: m.partition_by.clone(),
            key: m.key.clone(),
            partitions: m
                .partitions
                .iter()
                .map(|(k, p)| {
                    let old = Partition1 {
                        path: p.path.clone(),
                        values: p.values.clone(),
                        rows: p.rows,
                        files: p.files.clone(),
                        run_id: p.run_id.clone(),
                        logical_date: p.logical_date.clone(),
                    };
                    (k.clone(), old)
                })
                .collect(),
            watermarks: m.watermarks.clone(),
            change: m.change.clone(),
            audits: m.audits.clone(),
            checksum: String::new(),
        };
        old.checksum = sha256_hex(&serde_json::to_vec_pretty(&old).expect("serializes"));
        serde_json::to_vec_pretty(&old).expect("serializes")
    }
}

/// Content of `_wap/current`. It names the run as well as the version so that no two publishes
/// ever write identical bytes (S3 ETags are content hashes; compare-and-swap must tell them apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub version: u64,
    pub run_id: String,
    pub manifest: String,
}

impl Pointer {
    /// A pointer to `version`, written by `run_id`.
    pub fn new(version: u64, run_id: &str) -> Self {
        Pointer {
            version,
            run_id: run_id.to_string(),
            manifest: layout::manifest_path(version).to_string(),
        }
    }

    /// Serialized form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("pointer serializes")
    }

    /// Parses the pointer object.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let p: Pointer =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::PointerParse {
                path: layout::pointer_path().to_string(),
                source,
            })?;
        if p.manifest != layout::manifest_path(p.version).to_string() {
            return Err(ManifestError::Pointer {
                path: layout::pointer_path().to_string(),
                message: format!(
                    "version {} does not match manifest {}",
                    p.version, p.manifest
                ),
            });
        }
        Ok(p)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layout::manifest_path;
    use arrow::datatypes::{DataType, Field};

    pub(crate) fn sample(version: u64) -> Manifest {
        let mut partitions = BTreeMap::new();
        partitions.insert(
            "d=2024-01-01".to_string(),
            Partition::new(
                "d=2024-01-01",
                [("d".to_string(), Some("2024-01-01".to_string()))].into(),
                &[DataFile {
                    path: "staging/r1/d=2024-01-01/part-00000.parquet".into(),
                    size: 100,
                    rows: 3,
                    sha256: "ab".into(),
                    key_min: vec![Some("1".into())],
                    key_max: vec![Some("3".into())],
                    stats: Default::default(),
                }],
                "r1",
                "2024-01-01",
                "staging/r1/_wap-files-00.json",
            ),
        );
        Manifest {
            format: FORMAT.into(),
            version,
            parent: version - 1,
            table: "t".into(),
            schema: Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("d", DataType::Date32, true),
            ]),
            partition_by: vec!["d".into()],
            key: vec!["id".into()],
            partitions,
            watermarks: [("max_logical_date".to_string(), "2024-01-01".to_string())].into(),
            change: Change {
                kind: ChangeKind::Run,
                run_id: "r1".into(),
                logical_date: "2024-01-01".into(),
                partitions: vec!["d=2024-01-01".into()],
                restored_version: None,
                published_at: "2026-01-01T00:00:00Z".into(),
            },
            audits: vec![],
            table_id: String::new(),
            checksum: String::new(),
        }
    }

    #[test]
    fn roundtrips_and_verifies() {
        let m = sample(3);
        let bytes = m.encode();
        let back = Manifest::decode(&manifest_path(3), &bytes, 3).unwrap();
        assert_eq!(back.partitions, m.partitions);
        assert_eq!(back.schema, m.schema);
        assert!(!back.checksum.is_empty());
        // The index holds counts and the segment, not the file list.
        let p = &back.partitions["d=2024-01-01"];
        assert!(p.files.is_empty() && !p.files_known());
        assert_eq!((p.rows, p.bytes, p.file_count), (3, 100, 1));
        assert!(!String::from_utf8(bytes).unwrap().contains("part-00000"));
    }

    #[test]
    fn the_checksum_is_the_last_member_and_covers_every_other_byte() {
        let m = sample(5);
        let bytes = m.encode();
        assert!(bytes.ends_with(b"\"}"));
        let back = Manifest::decode(&manifest_path(5), &bytes, 5).unwrap();
        // Re-encoding a decoded (sealed) manifest gives the same bytes.
        assert_eq!(back.encode(), bytes);
        // A member moved after the checksum, or whitespace added, is refused.
        let text = String::from_utf8(bytes).unwrap();
        let moved = text.replacen("{\"format\"", "{\"x\":1,\"format\"", 1);
        let err = Manifest::decode(&manifest_path(5), moved.as_bytes(), 5).unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
        let spaced = format!("{text}\n");
        let err = Manifest::decode(&manifest_path(5), spaced.as_bytes(), 5).unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
    }

    #[test]
    fn reads_format_1_with_inline_files() {
        let m = sample(4);
        let bytes = v1::encode_for_test(&m);
        assert!(
            String::from_utf8(bytes.clone())
                .unwrap()
                .contains(FORMAT_V1)
        );
        let back = Manifest::decode(&manifest_path(4), &bytes, 4).unwrap();
        let p = &back.partitions["d=2024-01-01"];
        assert_eq!(p.segment, None);
        assert!(p.files_known());
        assert_eq!(p.files, m.partitions["d=2024-01-01"].files);
        assert_eq!((p.rows, p.bytes, p.file_count), (3, 100, 1));
        // Its checksum is checked like a format-2 one.
        let edited = String::from_utf8(bytes)
            .unwrap()
            .replace("\"size\": 100", "\"size\": 101");
        let err = Manifest::decode(&manifest_path(4), edited.as_bytes(), 4).unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
        // Carried into a format-2 index, the inline files stay inline.
        let mut next = back.clone();
        next.format = FORMAT.into();
        let again = Manifest::decode(&manifest_path(4), &next.encode(), 4).unwrap();
        assert_eq!(again.partitions["d=2024-01-01"].files, p.files);
    }

    #[test]
    fn a_large_run_is_cut_into_segments_of_at_most_256_partitions() {
        let lists: BTreeMap<String, Vec<DataFile>> = (0..600)
            .map(|i| (format!("d={i:04}"), sample(1).files().cloned().collect()))
            .collect();
        let segments = Segment::chunked(lists.clone());
        let sizes: Vec<usize> = segments.iter().map(|s| s.partitions.len()).collect();
        assert_eq!(sizes, [256, 256, 88]);
        // Every partition in exactly one, in path order; the same lists give the same segments.
        let all: Vec<&String> = segments.iter().flat_map(|s| s.partitions.keys()).collect();
        assert_eq!(all, lists.keys().collect::<Vec<_>>());
        assert_eq!(Segment::chunked(lists), segments);
        assert!(Segment::chunked(BTreeMap::new()).is_empty());
    }

    #[test]
    fn segments_are_content_addressed() {
        let files = sample(1).partitions["d=2024-01-01"].files.clone();
        let seg = Segment::new([("d=2024-01-01".to_string(), files)].into());
        let (path, bytes) = seg.encode("staging/r1");
        assert!(path.as_ref().starts_with("staging/r1/_wap-files-"));
        assert_eq!(Segment::decode(&path, &bytes).unwrap(), seg);
        let (again, _) = seg.encode("staging/r1");
        assert_eq!(again, path, "same content, same name");
        let tampered = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"rows\":3", "\"rows\":4");
        let err = Segment::decode(&path, tampered.as_bytes()).unwrap_err();
        assert!(err.to_string().contains(path.as_ref()), "{err}");
        let err = Segment::decode(&Path::from("staging/r1/x.json"), &bytes).unwrap_err();
        assert!(matches!(err, ManifestError::Segment { .. }), "{err}");
    }

    #[test]
    fn detects_truncation_edits_and_wrong_version() {
        let bytes = sample(3).encode();
        let p = manifest_path(3);
        let err = Manifest::decode(&p, &bytes[..bytes.len() / 2], 3).unwrap_err();
        assert!(matches!(err, ManifestError::Parse { .. }), "{err}");
        let edited = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"rows\":3", "\"rows\":4");
        let err = Manifest::decode(&p, edited.as_bytes(), 3).unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("_wap/manifests/00000000000000000003.json")
        );
        let err = Manifest::decode(&p, &bytes, 4).unwrap_err();
        assert!(matches!(err, ManifestError::Version { .. }), "{err}");
    }

    #[test]
    fn pointer_is_unique_per_publish() {
        let a = Pointer::new(2, "run-a").encode();
        let b = Pointer::new(2, "run-b").encode();
        assert_ne!(a, b);
        assert_eq!(Pointer::decode(&a).unwrap().version, 2);
        assert!(
            Pointer::decode(b"{\"version\":2,\"run_id\":\"x\",\"manifest\":\"nope\"}").is_err()
        );
    }
}
