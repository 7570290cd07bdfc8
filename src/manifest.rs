//! The versioned table format: immutable manifests and the pointer to the current one.
//!
//! ```text
//! <table>/_wap/current                              {"version": 7, "run_id": …}   (a hint)
//! <table>/_wap/manifests/00000000000000000007.json  version 7, immutable, checksummed
//! <table>/staging/<run_id>/<col>=<value>/part-00000.parquet   data, referenced in place
//! ```
//!
//! A manifest lists every partition of one version with its files, the table schema, the
//! watermarks and the audit summary of the run that produced it. Its `checksum` covers every
//! other byte of its canonical JSON, so a truncated or edited manifest is refused, not read.
//! This module knows nothing of DataFusion and never talks to storage.

use std::collections::BTreeMap;

use arrow::datatypes::{Schema, SchemaRef};
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this build writes and reads.
pub const FORMAT: &str = "wap-manifest/1";

/// Errors decoding manifests or the pointer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest {path} is not valid JSON of format {FORMAT}: {message}")]
    Parse { path: String, message: String },
    #[error("manifest {path} has format `{found}`; this wap reads {FORMAT}")]
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
    #[error("pointer {path} is corrupt: {message}")]
    Pointer { path: String, message: String },
}

/// Path of the pointer object, relative to the table root.
pub fn pointer_path() -> Path {
    Path::from("_wap/current")
}

/// Path of the manifest of `version`, relative to the table root. Zero-padded so listings sort.
pub fn manifest_path(version: u64) -> Path {
    Path::from(format!("_wap/manifests/{version:020}.json"))
}

/// Prefix under which all manifests live.
pub fn manifests_prefix() -> Path {
    Path::from("_wap/manifests")
}

/// The version a manifest path names, if it is one.
pub fn version_of(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Path of a run's audit report.
pub fn report_path(run_id: &str) -> Path {
    Path::from(format!("_wap/runs/{run_id}/report.json"))
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
}

/// One partition of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Hive-style path relative to the staging run folder, e.g. `order_date=2024-01-02`
    /// (empty for an unpartitioned table).
    pub path: String,
    /// Partition column values as text; `None` is NULL.
    pub values: BTreeMap<String, Option<String>>,
    pub rows: u64,
    pub files: Vec<DataFile>,
    /// The run that wrote this partition and its logical date.
    pub run_id: String,
    pub logical_date: String,
}

impl Partition {
    /// Bytes in all files of this partition.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
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
    /// SHA-256 over the canonical JSON with this field empty.
    #[serde(default)]
    pub checksum: String,
}

/// Lower-case hex of `bytes` (digests, run ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    /// Every data file of this version.
    pub fn files(&self) -> impl Iterator<Item = &DataFile> {
        self.partitions.values().flat_map(|p| &p.files)
    }

    fn canonical(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.checksum.clear();
        serde_json::to_vec_pretty(&copy).expect("manifest serializes")
    }

    /// Serializes with a fresh checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut sealed = self.clone();
        sealed.checksum = sha256_hex(&self.canonical());
        serde_json::to_vec_pretty(&sealed).expect("manifest serializes")
    }

    /// Parses and verifies a manifest read from `path`, which must hold `expected` version.
    pub fn decode(path: &Path, bytes: &[u8], expected: u64) -> Result<Self, ManifestError> {
        let path_s = path.to_string();
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse {
                path: path_s.clone(),
                message: e.to_string(),
            })?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(ManifestError::Format {
                path: path_s,
                found: format.to_string(),
            });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| ManifestError::Parse {
                path: path_s.clone(),
                message: e.to_string(),
            })?;
        let computed = sha256_hex(&manifest.canonical());
        if computed != manifest.checksum {
            return Err(ManifestError::Checksum {
                path: path_s,
                found: manifest.checksum,
                computed,
            });
        }
        if manifest.version != expected {
            return Err(ManifestError::Version {
                path: path_s,
                found: manifest.version,
                expected,
            });
        }
        Ok(manifest)
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
            manifest: manifest_path(version).to_string(),
        }
    }

    /// Serialized form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("pointer serializes")
    }

    /// Parses the pointer object.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let p: Pointer = serde_json::from_slice(bytes).map_err(|e| ManifestError::Pointer {
            path: pointer_path().to_string(),
            message: e.to_string(),
        })?;
        if p.manifest != manifest_path(p.version).to_string() {
            return Err(ManifestError::Pointer {
                path: pointer_path().to_string(),
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
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    pub(crate) fn sample(version: u64) -> Manifest {
        let mut partitions = BTreeMap::new();
        partitions.insert(
            "d=2024-01-01".to_string(),
            Partition {
                path: "d=2024-01-01".into(),
                values: [("d".to_string(), Some("2024-01-01".to_string()))].into(),
                rows: 3,
                files: vec![DataFile {
                    path: "staging/r1/d=2024-01-01/part-00000.parquet".into(),
                    size: 100,
                    rows: 3,
                    sha256: "ab".into(),
                    key_min: vec![Some("1".into())],
                    key_max: vec![Some("3".into())],
                }],
                run_id: "r1".into(),
                logical_date: "2024-01-01".into(),
            },
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
    }

    #[test]
    fn detects_truncation_edits_and_wrong_version() {
        let bytes = sample(3).encode();
        let p = manifest_path(3);
        let err = Manifest::decode(&p, &bytes[..bytes.len() / 2], 3).unwrap_err();
        assert!(matches!(err, ManifestError::Parse { .. }), "{err}");
        let edited = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"rows\": 3", "\"rows\": 4");
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
    fn version_paths_sort_and_parse() {
        assert_eq!(
            manifest_path(7).as_ref(),
            "_wap/manifests/00000000000000000007.json"
        );
        assert_eq!(version_of(&manifest_path(12345)), Some(12345));
        assert_eq!(version_of(&Path::from("_wap/manifests/x.json")), None);
        assert!(manifest_path(9).as_ref() < manifest_path(10).as_ref());
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
