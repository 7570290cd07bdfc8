//! `formats: [iceberg]`: every published version read by the real Iceberg readers (pyiceberg,
//! DuckDB's iceberg extension, polars, installed by `scripts/test.sh`) equals `wap query` of that
//! version, row for row; the metadata stays whole through crashes, gc and foreign writers.

use std::collections::BTreeSet;
use std::path::Path as FsPath;
use std::process::Command;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;
use wap::job::{Job, Mode, Status};
use wap::layout::{self, IcebergEntry};
use wap::versions;

use crate::delta::{
    awkward_batch, awkward_fixture, canonical, open_job, overwrite_sequence, python, read_parquet,
    wap_rows,
};
use crate::fixture::{Fixture, REPO};

/// The catalog a test registers its table in: (URL, catalog name, identifier).
pub type CatalogRef<'a> = Option<(&'a str, &'a str, &'a str)>;

/// Turns on `formats: [iceberg]` (and `extra` more YAML) in the job file at `conf`. The merge
/// fixtures' nanosecond timestamps become microseconds.
pub fn enable_iceberg(conf: &FsPath, extra: &str) {
    let text = std::fs::read_to_string(conf)
        .unwrap()
        .replace(
            "CAST(updated_at AS TIMESTAMP)",
            "arrow_cast(updated_at, 'Timestamp(Microsecond, None)')",
        )
        .replace("formats: [delta]", "formats: [delta, iceberg]");
    let formats = if text.contains("formats:") {
        ""
    } else {
        "formats: [iceberg]\n"
    };
    std::fs::write(conf, format!("{text}\n{formats}{extra}")).unwrap();
}

/// The orders fixture with `formats: [iceberg]` and the order timestamp kept.
pub fn iceberg_orders() -> Fixture {
    let fx = Fixture::new();
    fx.edit_conf(
        "CAST(order_ts AS DATE) AS order_date",
        "order_ts, CAST(order_ts AS DATE) AS order_date",
    );
    enable_iceberg(&fx.conf, "");
    fx
}

/// Reads `uri` with every reader at each of `versions` and at the latest, and asserts that each
/// equals `wap query` of that version (the latest: of the current version). Returns the number
/// of rows compared.
pub async fn assert_iceberg_readers_match(
    job: &Job,
    uri: &str,
    versions: &[u64],
    catalog: CatalogRef<'_>,
) -> usize {
    let out = tempfile::tempdir().unwrap();
    let script = FsPath::new(REPO).join("tests/readers/iceberg_read.py");
    let mut args: Vec<String> = vec![
        script.display().to_string(),
        uri.to_string(),
        out.path().display().to_string(),
    ];
    let mut latest_readers = vec!["duckdb-hint"];
    if let Some((url, name, ident)) = catalog {
        args.extend(["--catalog".into(), url.into(), name.into(), ident.into()]);
        latest_readers.extend(["catalog", "polars-catalog"]);
    }
    args.extend(versions.iter().map(|v| v.to_string()));
    args.push("latest".into());
    let run = Command::new(python()).args(&args).output().unwrap();
    assert!(
        run.status.success(),
        "readers failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let current = versions::current(job.store())
        .await
        .unwrap()
        .unwrap()
        .version;
    let mut compared = 0;
    let wanted = versions
        .iter()
        .map(|&v| {
            (
                v.to_string(),
                v,
                vec!["pyiceberg", "history", "duckdb", "polars"],
            )
        })
        .chain([("latest".to_string(), current, latest_readers)]);
    for (label, version, readers) in wanted {
        let (expected, schema) = wap_rows(job, version).await;
        for reader in readers {
            let error = out.path().join(format!("{reader}-{label}.error"));
            if error.exists() {
                panic!(
                    "{reader} could not read Iceberg version {label} (wap version {version}):\n{}",
                    std::fs::read_to_string(error).unwrap()
                );
            }
            let batches = read_parquet(&out.path().join(format!("{reader}-{label}.parquet")));
            let got = canonical(&batches, &schema);
            assert_eq!(
                got, expected,
                "{reader} at Iceberg version {label} differs from wap version {version}"
            );
            compared += got.len();
        }
    }
    compared
}

/// The versions with Iceberg metadata, by listing.
pub async fn metadata_versions(store: &Arc<dyn ObjectStore>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut list = store.list(Some(&layout::iceberg_folder()));
    use futures::StreamExt;
    while let Some(m) = list.next().await {
        if let Some(IcebergEntry::Metadata(v)) = layout::iceberg_entry(&m.unwrap().location) {
            out.push(v);
        }
    }
    out.sort();
    out
}

/// The metadata of `version`.
pub async fn metadata(store: &Arc<dyn ObjectStore>, version: u64) -> Value {
    let bytes = store
        .get(&layout::iceberg_metadata(version))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The current snapshot of `meta`.
fn current_snapshot(meta: &Value) -> &Value {
    let id = meta["current-snapshot-id"].as_i64().unwrap();
    meta["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot-id"].as_i64() == Some(id))
        .unwrap()
}

/// Asserts the metadata is exactly the projection of the committed versions: metadata for
/// every version from the first projected one to the latest, each naming its version's run
/// (where that manifest is kept), and the version hint at the latest.
pub async fn assert_metadata_whole(store: &Arc<dyn ObjectStore>) {
    let latest = versions::latest_version(store).await.unwrap();
    let found = metadata_versions(store).await;
    let first = found.first().copied().unwrap_or(1);
    assert_eq!(
        found,
        (first..=latest).collect::<Vec<_>>(),
        "Iceberg metadata for wap versions 1..={latest}"
    );
    let kept = versions::list_versions(store).await.unwrap();
    for v in found.into_iter().filter(|v| kept.contains(v)) {
        let manifest = versions::read_manifest(store, v).await.unwrap();
        let meta = metadata(store, v).await;
        let summary = &current_snapshot(&meta)["summary"];
        assert_eq!(summary["published-wap-id"], manifest.change.run_id.as_str());
        assert_eq!(summary["wap.table-version"], v.to_string().as_str());
    }
    let hint = store
        .get(&layout::iceberg_version_hint())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hint.as_ref(), latest.to_string().as_bytes(), "no newline");
}

/// Asserts no Iceberg metadata names a version `wap` did not commit (it may lag).
pub async fn assert_metadata_never_ahead(store: &Arc<dyn ObjectStore>) {
    let latest = versions::latest_version(store).await.unwrap();
    if let Some(&last) = metadata_versions(store).await.last() {
        assert!(
            last <= latest,
            "Iceberg metadata v{last} exists, but wap committed only {latest} versions"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_reads_the_same_in_pyiceberg_duckdb_and_polars() {
    let fx = iceberg_orders();
    let db = fx.dir.path().join("catalog.db");
    let url = format!("sqlite:///{}", db.display());
    enable_iceberg(
        &fx.conf,
        &format!("iceberg:\n  catalog: {url}\n  namespace: lake\n"),
    );
    let published = overwrite_sequence(&fx).await;
    let job = fx.job();
    assert_metadata_whole(job.store()).await;
    let uri = fx.table_dir().display().to_string();
    let compared = assert_iceberg_readers_match(
        &job,
        &uri,
        &published,
        Some((&url, "default", "lake.orders")),
    )
    .await;
    assert!(compared > 50, "{compared} rows compared");
    eprintln!("compared {compared}");
    let store = job.store();
    // Snapshots chain, sequence numbers and times never go back, operations say what happened.
    let meta = metadata(store, 5).await;
    let snaps = meta["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 5);
    for w in snaps.windows(2) {
        assert_eq!(w[1]["parent-snapshot-id"], w[0]["snapshot-id"]);
        assert!(w[1]["sequence-number"].as_i64() > w[0]["sequence-number"].as_i64());
        assert!(w[1]["timestamp-ms"].as_i64() >= w[0]["timestamp-ms"].as_i64());
    }
    let ops: Vec<&str> = snaps
        .iter()
        .map(|s| s["summary"]["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["append", "append", "overwrite", "overwrite", "overwrite"]
    );
    assert_eq!(snaps[0]["summary"]["wap.logical-date"], "2024-01-01");
    assert_eq!(snaps[3]["summary"]["wap.change"], "rollback");
    // The added column got a new field id; the old ones kept theirs.
    let schemas = meta["schemas"].as_array().unwrap();
    assert_eq!(schemas.len(), 2, "{schemas:?}");
    let id_of = |s: &Value, name: &str| {
        s["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["id"].as_i64().unwrap())
    };
    assert_eq!(
        id_of(&schemas[0], "order_id"),
        id_of(&schemas[1], "order_id")
    );
    assert_eq!(
        id_of(&schemas[1], "doubled"),
        Some(meta["last-column-id"].as_i64().unwrap())
    );
    assert_eq!(meta["properties"]["gc.enabled"], "false");
    assert!(
        meta["properties"]["schema.name-mapping.default"]
            .as_str()
            .unwrap()
            .contains("\"order_id\"")
    );
    // A re-run writes the same bytes: the metadata is derived, not stamped.
    let again = job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!(again.status, Status::Unchanged);
    assert_eq!(metadata(store, 5).await, meta);
}
