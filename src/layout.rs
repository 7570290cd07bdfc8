//! The table layout: every object path under a table root, and the Hive escaping of partition
//! values. No other module spells a path of the layout; they all ask this one.
//!
//! ```text
//! <table>/
//!   staging/<run_id>/<col>=<value>/part-00000.parquet   phase 1 writes here (data files)
//!   staging/<run_id>/_wap-files-<sha256>.json           the run's file lists (a segment)
//!   staging/<run_id>-clean/…                            a quarantining run's kept rows
//!   _wap/manifests/00000000000000000007.json            one immutable manifest per version
//!   _wap/current                                        pointer to the current version (a hint)
//!   _wap/runs/<run_id>/report.json                      audit report of every run
//!   _wap/runs/<run_id>/samples/<rule>.parquet           a failing rule's sample rows
//!   _wap/runs/<run_id>/quarantine/<col>=<value>/…       a quarantining run's held-back rows
//!   _wap/runs/<run_id>/unchanged.json                   the last re-run that found it published
//!   _wap/doctor/probe-<pid>/…                           `wap doctor`'s probes, deleted after
//!   _delta_log/00000000000000000006.json                Delta commit of version 7 (`formats: [delta]`)
//!   _delta_log/00000000000000000010.checkpoint.parquet  Delta checkpoint, every 10 Delta versions
//!   _delta_log/_last_checkpoint                         the newest Delta checkpoint (a hint)
//!   metadata/v7.metadata.json                           Iceberg table metadata of version 7 (`formats: [iceberg]`)
//!   metadata/snap-<snapshot id>-7-<digest>.avro         its manifest list
//!   metadata/<run_id>-<segment>-<digest>-m0.avro        the Iceberg manifest of a run's live files
//!   metadata/version-hint.text                          the newest Iceberg version (a hint)
//! ```
//!
//! Invariants: a partition value, once escaped, is one path segment that is never `.` or `..`
//! and never contains `/`, so no value can name an object outside its run's folder; escaping
//! is injective, so two partitions never share a folder. Paths are relative to the table root
//! and written as they are (object stores see the `%XX` of an escaped value literally).

use object_store::path::Path;

/// Folder of every run's staged data files.
pub const STAGING: &str = "staging";
/// Folder of the immutable manifests.
const MANIFESTS: &str = "_wap/manifests";
/// Folder of the run records (reports, samples, quarantined rows).
const RUNS: &str = "_wap/runs";
/// File name prefix of a segment (`_wap-files-<sha256>.json`).
const SEGMENT_PREFIX: &str = "_wap-files-";
/// The escaped form of a NULL partition value (Hive's own spelling).
const NULL_VALUE: &str = "__HIVE_DEFAULT_PARTITION__";
/// The escaped form of an empty partition value.
const EMPTY_VALUE: &str = "__EMPTY__";

/// `staging/<run_id>`: where a run's data files and segment go.
pub fn staging_folder(run_id: &str) -> String {
    format!("{STAGING}/{run_id}")
}

/// `staging/<run_id>-clean`: the rows of a quarantining run that pass its quarantine rules.
pub fn clean_folder(run_id: &str) -> String {
    format!("{STAGING}/{run_id}-clean")
}

/// `_wap/runs/<run_id>/quarantine`: the rows a quarantining run held back.
pub fn quarantine_folder(run_id: &str) -> String {
    format!("{RUNS}/{run_id}/quarantine")
}

/// The path of data file number `part` of the partition at Hive path `partition` (empty for an
/// unpartitioned table) in `folder`.
pub fn data_file(folder: &str, partition: &str, part: usize) -> String {
    if partition.is_empty() {
        format!("{folder}/part-{part:05}.parquet")
    } else {
        format!("{folder}/{partition}/part-{part:05}.parquet")
    }
}

/// The segment whose bytes hash to `digest` (hex SHA-256), in a run's staging `folder`.
pub fn segment_path(folder: &str, digest: &str) -> Path {
    Path::from(format!("{folder}/{SEGMENT_PREFIX}{digest}.json"))
}

/// The digest a segment path names, if it is a segment's name.
pub fn segment_digest(path: &Path) -> Option<String> {
    let name = path.filename()?;
    let digest = name.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(".json")?;
    Some(digest.to_string())
}

/// `_wap/current`.
pub fn pointer_path() -> Path {
    Path::from("_wap/current")
}

/// The manifest of `version`, zero-padded to 20 digits so that listings sort.
pub fn manifest_path(version: u64) -> Path {
    Path::from(format!("{MANIFESTS}/{version:020}.json"))
}

/// The folder holding every manifest.
pub fn manifests_folder() -> Path {
    Path::from(MANIFESTS)
}

/// The version a manifest path names, if it is one.
pub fn version_of(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The Delta log folder.
pub const DELTA_LOG: &str = "_delta_log";

/// The Delta log folder as a path.
pub fn delta_log_folder() -> Path {
    Path::from(DELTA_LOG)
}

/// The Delta commit of Delta version `delta_version` (which is `wap` version minus one).
pub fn delta_commit(delta_version: u64) -> Path {
    Path::from(format!("{DELTA_LOG}/{delta_version:020}.json"))
}

/// The (single-file) Delta checkpoint of Delta version `delta_version`.
pub fn delta_checkpoint(delta_version: u64) -> Path {
    Path::from(format!(
        "{DELTA_LOG}/{delta_version:020}.checkpoint.parquet"
    ))
}

/// `_delta_log/_last_checkpoint`.
pub fn delta_last_checkpoint() -> Path {
    Path::from(format!("{DELTA_LOG}/_last_checkpoint"))
}

/// What a Delta log entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaEntry {
    Commit(u64),
    Checkpoint(u64),
}

/// The Delta log entry `path` names (commits and single-file checkpoints), if it is one.
pub fn delta_entry(path: &Path) -> Option<DeltaEntry> {
    let name = path.filename()?;
    let (digits, kind): (&str, fn(u64) -> DeltaEntry) =
        if let Some(d) = name.strip_suffix(".checkpoint.parquet") {
            (d, DeltaEntry::Checkpoint)
        } else {
            (name.strip_suffix(".json")?, DeltaEntry::Commit)
        };
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(kind))
        .flatten()
}

/// The Iceberg metadata folder.
pub const ICEBERG_METADATA: &str = "metadata";

/// The Iceberg metadata folder as a path.
pub fn iceberg_folder() -> Path {
    Path::from(ICEBERG_METADATA)
}

/// The Iceberg table metadata of `wap` version `version`.
pub fn iceberg_metadata(version: u64) -> Path {
    Path::from(format!("{ICEBERG_METADATA}/v{version}.metadata.json"))
}

/// `metadata/version-hint.text`.
pub fn iceberg_version_hint() -> Path {
    Path::from(format!("{ICEBERG_METADATA}/version-hint.text"))
}

/// The manifest list of the snapshot of `version`.
pub fn iceberg_manifest_list(version: u64, snapshot_id: i64, digest: &str) -> Path {
    Path::from(format!(
        "{ICEBERG_METADATA}/snap-{snapshot_id}-{version}-{digest}.avro"
    ))
}

/// The Iceberg manifest of the live files of `group` (a run, or one segment of a large run:
/// `<run_id>-<segment>`), one content, one digest.
pub fn iceberg_manifest(group: &str, digest: &str) -> Path {
    Path::from(format!("{ICEBERG_METADATA}/{group}-{digest}-m0.avro"))
}

/// What an object of the Iceberg metadata folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcebergEntry {
    /// `v<N>.metadata.json`.
    Metadata(u64),
    /// The manifest list of version N.
    List(u64),
    /// A manifest of the group (`<run_id>-<segment>`).
    Manifest(String),
}

/// The Iceberg object `path` names, if it is one `wap` writes (the hint is none of these).
pub fn iceberg_entry(path: &Path) -> Option<IcebergEntry> {
    let name = path.filename()?;
    let number = |d: &str| {
        (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse().ok())
            .flatten()
    };
    if let Some(d) = name
        .strip_prefix('v')
        .and_then(|n| n.strip_suffix(".metadata.json"))
    {
        return number(d).map(IcebergEntry::Metadata);
    }
    if let Some(rest) = name
        .strip_prefix("snap-")
        .and_then(|n| n.strip_suffix(".avro"))
    {
        let mut parts = rest.split('-');
        let (_, version) = (parts.next()?, parts.next()?);
        return number(version).map(IcebergEntry::List);
    }
    let rest = name.strip_suffix("-m0.avro")?;
    let (run, digest) = rest.rsplit_once('-')?;
    (!run.is_empty() && !digest.is_empty()).then(|| IcebergEntry::Manifest(run.to_string()))
}

/// The folder of every run record.
pub fn runs_folder() -> Path {
    Path::from(RUNS)
}

/// A run's audit report.
pub fn report_path(run_id: &str) -> Path {
    Path::from(format!("{RUNS}/{run_id}/report.json"))
}

/// True when `path` is a run's report (in a listing of [`runs_folder`]).
pub fn is_report(path: &Path) -> bool {
    path.as_ref().starts_with(RUNS) && path.filename() == Some("report.json")
}

/// Written by a re-run that found its run already published.
pub fn unchanged_path(run_id: &str) -> Path {
    Path::from(format!("{RUNS}/{run_id}/unchanged.json"))
}

/// Written once a run's `on_publish` command succeeded: a re-run finding it does not run the
/// command again.
pub fn hook_record_path(run_id: &str) -> Path {
    Path::from(format!("{RUNS}/{run_id}/on_publish.json"))
}

/// A failing rule's samples (Parquet), beside the report. Rule names are free text: anything
/// but ASCII letters, digits, `_` and `-` becomes `_`.
pub fn samples_path(run_id: &str, rule: &str) -> Path {
    let file: String = rule
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Path::from(format!("{RUNS}/{run_id}/samples/{file}.parquet"))
}

/// The folder of `wap doctor`'s probe objects for process `pid`.
pub fn doctor_folder(pid: u32) -> String {
    format!("_wap/doctor/probe-{pid}")
}

/// Escapes one partition value for a Hive path segment. Injective, and the result can never be
/// `.`, `..` or contain `/`: every byte outside `[A-Za-z0-9._-]` becomes `%XX`, a value made only
/// of dots has its dots escaped, NULL is `__HIVE_DEFAULT_PARTITION__` and the empty string is
/// `__EMPTY__` (a literal value equal to either has its first `_` escaped).
pub fn escape_value(value: Option<&str>) -> String {
    let Some(v) = value else {
        return NULL_VALUE.to_string();
    };
    if v.is_empty() {
        return EMPTY_VALUE.to_string();
    }
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.bytes().all(|b| b == b'.') {
        out = out.replace('.', "%2E");
    }
    if out == NULL_VALUE || out == EMPTY_VALUE {
        out.replace_range(0..1, "%5F");
    }
    out
}

/// The Hive path of a partition: `col=value/col2=value2` (empty for no partition columns).
pub fn hive_path(columns: &[String], values: &[Option<String>]) -> String {
    columns
        .iter()
        .zip(values)
        .map(|(c, v)| format!("{}={}", escape_value(Some(c)), escape_value(v.as_deref())))
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn iceberg_paths_read_back() {
        assert_eq!(iceberg_metadata(12).as_ref(), "metadata/v12.metadata.json");
        assert_eq!(
            iceberg_entry(&iceberg_metadata(12)),
            Some(IcebergEntry::Metadata(12))
        );
        assert_eq!(
            iceberg_entry(&iceberg_manifest_list(3, 77, "ab12")),
            Some(IcebergEntry::List(3))
        );
        assert_eq!(
            iceberg_entry(&iceberg_manifest("r1a2-0123", "00ff")),
            Some(IcebergEntry::Manifest("r1a2-0123".into()))
        );
        assert_eq!(iceberg_entry(&iceberg_version_hint()), None);
        assert_eq!(iceberg_entry(&Path::from("metadata/v.metadata.json")), None);
    }

    #[test]
    fn delta_log_paths_read_back() {
        assert_eq!(
            delta_commit(6).as_ref(),
            "_delta_log/00000000000000000006.json"
        );
        assert_eq!(delta_entry(&delta_commit(6)), Some(DeltaEntry::Commit(6)));
        assert_eq!(
            delta_entry(&delta_checkpoint(20)),
            Some(DeltaEntry::Checkpoint(20))
        );
        assert_eq!(delta_entry(&delta_last_checkpoint()), None);
        assert_eq!(delta_entry(&Path::from("_delta_log/6.json")), None);
    }

    #[test]
    fn every_path_of_the_layout() {
        assert_eq!(staging_folder("r1"), "staging/r1");
        assert_eq!(clean_folder("r1"), "staging/r1-clean");
        assert_eq!(quarantine_folder("r1"), "_wap/runs/r1/quarantine");
        assert_eq!(
            data_file("staging/r1", "d=2024-01-01", 0),
            "staging/r1/d=2024-01-01/part-00000.parquet"
        );
        assert_eq!(
            data_file("staging/r1", "", 12),
            "staging/r1/part-00012.parquet"
        );
        assert_eq!(
            segment_path("staging/r1", "ab").as_ref(),
            "staging/r1/_wap-files-ab.json"
        );
        assert_eq!(pointer_path().as_ref(), "_wap/current");
        assert_eq!(
            manifest_path(7).as_ref(),
            "_wap/manifests/00000000000000000007.json"
        );
        assert_eq!(manifests_folder().as_ref(), "_wap/manifests");
        assert_eq!(runs_folder().as_ref(), "_wap/runs");
        assert_eq!(report_path("r1").as_ref(), "_wap/runs/r1/report.json");
        assert_eq!(unchanged_path("r1").as_ref(), "_wap/runs/r1/unchanged.json");
        assert_eq!(
            samples_path("r1", "no nulls/ü").as_ref(),
            "_wap/runs/r1/samples/no_nulls__.parquet"
        );
        assert_eq!(doctor_folder(42), "_wap/doctor/probe-42");
    }

    #[test]
    fn names_read_back() {
        assert_eq!(version_of(&manifest_path(u64::MAX)), Some(u64::MAX));
        assert_eq!(version_of(&manifest_path(0)), Some(0));
        assert!(manifest_path(9).as_ref() < manifest_path(10).as_ref());
        assert_eq!(version_of(&Path::from("_wap/manifests/x.json")), None);
        assert_eq!(
            version_of(&Path::from("_wap/manifests/0000000000000000007.json")),
            None
        );
        assert_eq!(
            segment_digest(&segment_path("staging/r", "00ff")).as_deref(),
            Some("00ff")
        );
        assert_eq!(segment_digest(&Path::from("staging/r/x.json")), None);
        assert!(is_report(&report_path("r1")));
        assert!(!is_report(&unchanged_path("r1")));
        assert!(!is_report(&Path::from("staging/r1/report.json")));
    }

    #[test]
    fn escaping_keeps_values_inside_one_segment() {
        for (value, escaped) in [
            (Some("2024-01-02"), "2024-01-02"),
            (Some("a b"), "a%20b"),
            (Some("a/b"), "a%2Fb"),
            (Some("100%"), "100%25"),
            (Some("."), "%2E"),
            (Some(".."), "%2E%2E"),
            (Some("..a"), "..a"),
            (Some("x=y"), "x%3Dy"),
            (Some("ü"), "%C3%BC"),
            (Some(""), "__EMPTY__"),
            (None, "__HIVE_DEFAULT_PARTITION__"),
            (Some("__EMPTY__"), "%5F_EMPTY__"),
            (
                Some("__HIVE_DEFAULT_PARTITION__"),
                "%5F_HIVE_DEFAULT_PARTITION__",
            ),
        ] {
            assert_eq!(escape_value(value), escaped, "{value:?}");
        }
    }

    #[test]
    fn escaping_is_injective() {
        let values = [
            None,
            Some(""),
            Some("."),
            Some(".."),
            Some("%2E"),
            Some("a/b"),
            Some("a%2Fb"),
            Some("__EMPTY__"),
            Some("%5F_EMPTY__"),
            Some("__HIVE_DEFAULT_PARTITION__"),
            Some("x=y"),
            Some("with space"),
            Some("ünï"),
            Some("2024-01-02"),
        ];
        let mut seen = std::collections::BTreeMap::new();
        for v in values {
            let e = escape_value(v);
            assert!(
                !e.contains('/') && e != "." && e != ".." && !e.is_empty(),
                "{v:?} -> {e}"
            );
            assert!(
                crate::store::object_path(&format!("t/c={e}")).is_ok(),
                "{e}"
            );
            if let Some(other) = seen.insert(e.clone(), v) {
                panic!("{other:?} and {v:?} both escape to {e}");
            }
        }
    }

    #[test]
    fn hive_paths() {
        assert_eq!(
            hive_path(&cols(&["year", "month name"]), &[Some("2024".into()), None]),
            "year=2024/month%20name=__HIVE_DEFAULT_PARTITION__"
        );
        assert_eq!(hive_path(&[], &[]), "");
    }
}
