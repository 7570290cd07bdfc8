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
    awkward_batch, awkward_fixture, compare_readers, open_job, overwrite_sequence, python,
    run_readers,
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
    let mut args: Vec<String> = Vec::new();
    let mut latest_readers = vec!["duckdb-hint"];
    if let Some((url, name, ident)) = catalog {
        args.extend(["--catalog".into(), url.into(), name.into(), ident.into()]);
        latest_readers.extend(["catalog", "polars-catalog"]);
    }
    args.extend(versions.iter().map(|v| v.to_string()));
    args.push("latest".into());
    let out = run_readers("iceberg_read.py", uri, &args);
    let current = versions::current(job.store())
        .await
        .unwrap()
        .unwrap()
        .version;
    let wanted = versions
        .iter()
        .map(|&v| {
            (
                v.to_string(),
                v,
                vec!["pyiceberg", "history", "duckdb", "polars"],
            )
        })
        .chain([("latest".to_string(), current, latest_readers)])
        .collect();
    compare_readers(job, out.path(), "Iceberg", wanted).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_reads_the_same_on_s3() {
    let s3 = crate::s3::s3();
    let fx = iceberg_orders();
    let table = s3.prefix("iceberg") + "/orders";
    crate::s3::point_at_s3(&fx.conf, &table, &s3);
    let published = overwrite_sequence(&fx).await;
    let job = fx.job();
    assert_metadata_whole(job.store()).await;
    let meta = metadata(job.store(), 5).await;
    assert_eq!(meta["location"], table.as_str());
    assert!(assert_iceberg_readers_match(&job, &table, &published, None).await > 50);
}

/// The awkward fixture as an Iceberg table only.
fn awkward_iceberg() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, conf) = awkward_fixture();
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("formats: [delta]", "formats: [iceberg]");
    std::fs::write(&conf, text).unwrap();
    (dir, conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_partition_values_and_types_read_back_the_same() {
    let (dir, conf) = awkward_iceberg();
    awkward_batch(
        dir.path(),
        "2024-03-01",
        &[
            "1,a b,2024-03-01,12.345,1990-05-06,2024-03-01T10:11:12.123456,plain",
            "2,50%,2024-03-01,-0.001,1969-12-31,1969-12-31T23:59:59.999999,\"comma, quote\"\"\"",
            "3,x/y,2024-03-02,99999.999,2000-02-29,2024-03-02T00:00:00,",
            "4,k=v,2024-03-01,0,,2024-03-01T00:00:00.5,é",
            "5,日本 語,2024-03-01,1,1970-01-01,2024-03-01T00:00:00,unicode",
            "6,,2024-03-01,2,1980-01-01,2024-03-01T01:00:00,null tag",
            "7,..,2024-03-01,3,1980-01-01,2024-03-01T01:00:00,dots",
        ],
    );
    let job = open_job(&conf);
    let run = job.run("2024-03-01", Mode::Publish).await.unwrap();
    assert_eq!(run.status, Status::Published, "{:?}", run.message);
    let uri = dir.path().join("lake/tags").display().to_string();
    // 7 rows, 4 readers of version 1 and the hint reader of the latest.
    assert_eq!(
        assert_iceberg_readers_match(&job, &uri, &[1], None).await,
        7 * 5
    );
    // Partition values are typed; the spec is identity.
    let meta = metadata(job.store(), 1).await;
    let spec = &meta["partition-specs"][0]["fields"];
    assert_eq!(spec[0]["name"], "tag");
    assert_eq!(spec[1]["transform"], "identity");
    let fields = meta["schemas"][0]["fields"].as_array().unwrap();
    let ty = |name: &str| {
        fields.iter().find(|f| f["name"] == name).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(ty("amount"), "decimal(12, 3)");
    assert_eq!(ty("day"), "date");
    assert_eq!(ty("ts"), "timestamp");
    assert_eq!(ty("ts_utc"), "timestamptz");
    // A second run over one of the partitions.
    awkward_batch(
        dir.path(),
        "2024-03-05",
        &["8,a b,2024-03-01,1.5,1990-05-06,2024-03-05T00:00:00,replaced"],
    );
    let run = job.run("2024-03-05", Mode::Publish).await.unwrap();
    assert_eq!(run.version, 2);
    assert_eq!(
        assert_iceberg_readers_match(&job, &uri, &[1, 2], None).await,
        7 * 4 + 7 * 4 + 7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_strings_and_typed_partitions_are_iceberg_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    let conf = dir.path().join("conf/typed.yaml");
    std::fs::write(
        &conf,
        "name: typed\n\
         table: ../lake/typed\n\
         partition_by: [flag, price, n, label]\n\
         key: [id]\n\
         formats: [iceberg]\n\
         source:\n  format: csv\n  path: ../data/{date}/\n\
         transform: |\n  SELECT id, CAST(flag AS BOOLEAN) AS flag, \
         CAST(price AS DECIMAL(9,2)) AS price, CAST(n AS BIGINT) AS n, \
         coalesce(label, '') AS label, note FROM source\n",
    )
    .unwrap();
    crate::delta::write_rows(
        dir.path(),
        "2024-01-01",
        "id,flag,price,n,label,note",
        &[
            "1,true,-7.25,-3,,empty label",
            "2,false,0.10,0,x,plain",
            "3,,12.00,9000000000,x,null flag",
            "4,true,,1,y,null price",
        ],
    );
    let job = open_job(&conf);
    let run = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(run.status, Status::Published, "{:?}", run.message);
    let uri = dir.path().join("lake/typed").display().to_string();
    assert_eq!(
        assert_iceberg_readers_match(&job, &uri, &[1], None).await,
        4 * 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_with_updates_and_deletes_read_the_same() {
    let fx = crate::merge::MergeFixture::new("  sequence_by: updated_at\n", "");
    enable_iceberg(&fx.conf, "");
    fx.batch(
        "2024-01-01",
        &[
            "1,DE,a@x,gold,active,2024-01-01T00:00:00,U",
            "2,FR,b@x,silver,active,2024-01-01T00:00:00,U",
            "3,DE,c@x,,active,2024-01-01T00:00:00,U",
        ],
    );
    fx.batch(
        "2024-01-02",
        &[
            "1,DE,a2@x,gold,active,2024-01-02T00:00:00,U",
            "2,FR,,,,2024-01-02T00:00:00,D",
            "4,US,d@x,bronze,active,2024-01-02T00:00:00,U",
        ],
    );
    let job = fx.job();
    assert_eq!(fx.run("2024-01-01").await.version, 1);
    let merged = fx.run("2024-01-02").await;
    assert_eq!((merged.status, merged.version), (Status::Published, 2));
    assert_metadata_whole(job.store()).await;
    let uri = fx.dir.path().join("lake/customers").display().to_string();
    assert!(assert_iceberg_readers_match(&job, &uri, &[1, 2], None).await > 10);
    let meta = metadata(job.store(), 2).await;
    assert_eq!(current_snapshot(&meta)["summary"]["operation"], "overwrite");
}

/// The field ids in a Parquet file's schema, by column.
fn parquet_field_ids(path: &FsPath) -> Vec<(String, Option<i32>)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| {
            let info = f.get_basic_info();
            (f.name().to_string(), info.has_id().then(|| info.id()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_iceberg_on_an_existing_table_maps_old_files_by_name() {
    let fx = Fixture::new();
    let job = fx.job();
    for (i, date) in ["2024-01-01", "2024-01-02", "2024-01-03"]
        .iter()
        .enumerate()
    {
        fx.orders(date, &[(i as i64 + 1, 10, "5.50", "placed")]);
        job.run(date, Mode::Publish).await.unwrap();
    }
    enable_iceberg(&fx.conf, "");
    let job = fx.job();
    // The next writer starts the metadata at the current version (3), then writes 4.
    fx.orders("2024-01-04", &[(4, 10, "5.50", "placed")]);
    assert_eq!(
        job.run("2024-01-04", Mode::Publish).await.unwrap().version,
        4
    );
    assert_eq!(metadata_versions(job.store()).await, [3, 4]);
    let mut m4 = versions::read_manifest(job.store(), 4).await.unwrap();
    versions::resolve_files(job.store(), [&mut m4])
        .await
        .unwrap();
    let new = m4.partitions["order_date=2024-01-04"].files[0].path.clone();
    let old = m4.partitions["order_date=2024-01-01"].files[0].path.clone();
    let table = fx.table_dir();
    let new_ids = parquet_field_ids(&table.join(&new));
    assert!(
        new_ids.iter().all(|(_, id)| id.is_some()),
        "new files carry field ids: {new_ids:?}"
    );
    assert!(
        parquet_field_ids(&table.join(&old))
            .iter()
            .all(|(_, id)| id.is_none())
    );
    // Old files have no ids: the name mapping covers them (without it DuckDB reads NULLs).
    let meta = metadata(job.store(), 4).await;
    let mapping: Value = serde_json::from_str(
        meta["properties"]["schema.name-mapping.default"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let schema_fields = meta["schemas"][0]["fields"].as_array().unwrap();
    for (name, id) in &new_ids {
        let in_schema = schema_fields
            .iter()
            .find(|f| f["name"] == name.as_str())
            .unwrap();
        assert_eq!(in_schema["id"].as_i64(), id.map(i64::from), "{name}");
        assert!(
            mapping
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["names"][0] == name.as_str()
                    && m["field-id"].as_i64() == id.map(i64::from)),
            "{name} in {mapping}"
        );
    }
    let uri = table.display().to_string();
    assert_eq!(
        assert_iceberg_readers_match(&job, &uri, &[3, 4], None).await,
        3 * 4 + 4 * 4 + 4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_types_iceberg_cannot_hold() {
    let (dir, conf) = awkward_iceberg();
    std::fs::write(
        &conf,
        std::fs::read_to_string(&conf).unwrap().replace(
            "note FROM source",
            "CAST(id AS INT UNSIGNED) AS u, CAST(ts AS TIMESTAMP) AS ns, note FROM source",
        ),
    )
    .unwrap();
    awkward_batch(
        dir.path(),
        "2024-03-01",
        &["1,a,2024-03-01,1,1990-01-01,2024-03-01T00:00:00,n"],
    );
    let err = wap::job::check(&conf, Some("2024-03-01"), Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(
        text.contains("tags.yaml:5: formats: iceberg: column `u`") && text.contains("BIGINT"),
        "{text}"
    );
    assert!(
        text.contains("column `ns`") && text.contains("Microsecond"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_metadata_file_makes_the_next_publish_refuse_naming_it() {
    let fx = iceberg_orders();
    let job = fx.job();
    fx.orders("2024-01-01", &[(1, 10, "5.50", "placed")]);
    fx.orders("2024-01-02", &[(2, 10, "5.50", "placed")]);
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    // Another engine commits Iceberg version 2 on its own.
    let mut foreign = metadata(job.store(), 1).await;
    foreign["current-snapshot-id"] = serde_json::json!(42);
    let text = serde_json::to_vec(&foreign).unwrap();
    let path = layout::iceberg_metadata(2);
    job.store()
        .put(&path, PutPayload::from(text.clone()))
        .await
        .unwrap();
    let err = job.run("2024-01-02", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("metadata/v2.metadata.json"), "{msg}");
    assert!(msg.contains("another writer"), "{msg}");
    assert_eq!(versions::latest_version(job.store()).await.unwrap(), 1);
    let kept = job.store().get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(kept.as_ref(), text.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_is_filled_in_by_the_next_writer() {
    let fx = iceberg_orders();
    let db = fx.dir.path().join("catalog.db");
    let url = format!("sqlite:///{}", db.display());
    enable_iceberg(&fx.conf, &format!("iceberg:\n  catalog: {url}\n"));
    let job = fx.job();
    fx.orders("2024-01-01", &[(1, 10, "5.50", "placed")]);
    fx.orders("2024-01-02", &[(2, 10, "5.50", "placed")]);
    job.run("2024-01-01", Mode::Publish).await.unwrap();
    let before = metadata_objects(job.store()).await;
    job.run("2024-01-02", Mode::Publish).await.unwrap();
    // As if the process died between manifest 2 and its Iceberg metadata: every object that
    // version 2 added under metadata/ is gone, and the hint names version 1.
    let store = job.store();
    let written = store
        .get(&layout::iceberg_metadata(2))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let added: Vec<String> = metadata_objects(store)
        .await
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(
        added.len(),
        3,
        "a manifest, a list, a metadata file: {added:?}"
    );
    for p in &added {
        store.delete(&Path::from(p.as_str())).await.unwrap();
    }
    store
        .put(&layout::iceberg_version_hint(), PutPayload::from("1"))
        .await
        .unwrap();
    assert_metadata_never_ahead(store).await;
    // The re-run finds its run published, and writes the same metadata.
    let again = job.run("2024-01-02", Mode::Publish).await.unwrap();
    assert_eq!(again.status, Status::Unchanged);
    let rewritten = store
        .get(&layout::iceberg_metadata(2))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        rewritten, written,
        "the metadata is derived from the manifests"
    );
    assert_metadata_whole(store).await;
    let shown = job.projections(2).await.unwrap();
    assert_eq!(shown[0].format, "iceberg");
    assert!(shown[0].written && shown[0].object.ends_with("/metadata/v2.metadata.json"));
    // doctor sees a missing version, and --repair writes it back.
    store.delete(&layout::iceberg_metadata(2)).await.unwrap();
    let sick = job.doctor(false).await;
    let check = sick
        .checks
        .iter()
        .find(|c| c.name == "iceberg metadata")
        .unwrap();
    assert_eq!(
        check.verdict,
        wap::doctor::Verdict::Fail,
        "{}",
        check.detail
    );
    assert!(check.detail.contains("[2]"), "{}", check.detail);
    let healed = job.doctor(true).await;
    let check = healed
        .checks
        .iter()
        .find(|c| c.name == "iceberg metadata")
        .unwrap();
    assert_eq!(
        check.verdict,
        wap::doctor::Verdict::Pass,
        "{}",
        check.detail
    );
    assert!(
        check.detail.contains("catalog default.orders names v2"),
        "{}",
        check.detail
    );
    let uri = fx.table_dir().display().to_string();
    assert!(
        assert_iceberg_readers_match(
            &job,
            &uri,
            &[1, 2],
            Some((&url, "default", "default.orders"))
        )
        .await
            > 0
    );
}

/// The Iceberg objects under `metadata/` (hint excluded).
async fn metadata_objects(store: &Arc<dyn ObjectStore>) -> BTreeSet<String> {
    use futures::StreamExt;
    let mut out = BTreeSet::new();
    let mut list = store.list(Some(&layout::iceberg_folder()));
    while let Some(m) = list.next().await {
        let p = m.unwrap().location;
        if layout::iceberg_entry(&p).is_some() {
            out.insert(p.to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_many_runs_publishes_a_constant_number_of_objects() {
    use crate::publish::{partition, proposal};
    use wap::iceberg::IcebergLog;
    use wap::publish::{PublishOptions, Publisher};
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let rec = crate::store::RecordingStore::new(Arc::clone(&store));
    let recorded: Arc<dyn ObjectStore> = rec.clone();
    let publisher = Publisher::new(Arc::clone(&recorded), PublishOptions::default())
        .with_iceberg(IcebergLog::new(Arc::clone(&recorded), "memory:///t"));
    // 30 runs, two partitions each.
    for i in 0..30 {
        let run = format!("run{i:02}");
        let parts = vec![
            partition(&format!("d={i:02}a"), &run, 2),
            partition(&format!("d={i:02}b"), &run, 2),
        ];
        publisher
            .publish(&proposal(&run, parts), None)
            .await
            .unwrap();
    }
    let mut costs = Vec::new();
    for (run, parts) in [
        // Replaces one partition of run07: its manifest is rewritten, no other.
        ("late1", vec!["d=07a"]),
        // A new partition: one new manifest.
        ("late2", vec!["d=99"]),
        // Replaces both partitions of run11: run11's manifest is dropped, not rewritten.
        ("late3", vec!["d=11a", "d=11b"]),
    ] {
        let before = metadata_objects(&store).await;
        rec.clear();
        let parts = parts.iter().map(|p| partition(p, run, 3)).collect();
        publisher
            .publish(&proposal(run, parts), None)
            .await
            .unwrap();
        let requests = rec.requests().len();
        let after = metadata_objects(&store).await;
        let new: Vec<String> = after.difference(&before).cloned().collect();
        costs.push((run, new.len(), requests, new));
    }
    assert_eq!(
        costs[0].1, 4,
        "manifests of late1 and run07, a list, a metadata: {costs:?}"
    );
    assert!(
        costs[0].3.iter().any(|p| p.contains("/run07-")),
        "{costs:?}"
    );
    assert_eq!(costs[1].1, 3, "{costs:?}");
    assert_eq!(costs[2].1, 3, "{costs:?}");
    // Requests do not grow with the runs either: the same publish at 60 runs costs the same.
    for i in 30..60 {
        let run = format!("run{i:02}");
        publisher
            .publish(
                &proposal(&run, vec![partition(&format!("d={i:02}a"), &run, 2)]),
                None,
            )
            .await
            .unwrap();
    }
    rec.clear();
    publisher
        .publish(
            &proposal("late4", vec![partition("d=98", "late4", 3)]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rec.requests().len(), costs[1].2, "{costs:?}");
    // The latest list names one manifest per run with live partitions.
    let latest = versions::latest_version(&store).await.unwrap();
    let meta = metadata(&store, latest).await;
    let list = current_snapshot(&meta)["manifest-list"]
        .as_str()
        .unwrap()
        .to_string();
    let key = list.strip_prefix("memory:///t/").unwrap();
    let bytes = store
        .get(&Path::from(key))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let file = wap::iceberg::avro::read_file(&bytes).unwrap();
    let m = versions::read_manifest(&store, latest).await.unwrap();
    let runs: BTreeSet<&str> = m.partitions.values().map(|p| p.run_id.as_str()).collect();
    assert_eq!(file.records.len(), runs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_each_get_one_version_and_the_catalog_ends_at_the_latest() {
    use crate::publish::{partition, proposal};
    use wap::iceberg::IcebergLog;
    use wap::iceberg::catalog::Catalog;
    use wap::publish::{PublishOptions, PublishOutcome, Publisher};
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::parse("sqlite:///c.db", dir.path(), "default", "lake", "t").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let publisher = |s: &Arc<dyn ObjectStore>| {
        Publisher::new(Arc::clone(s), PublishOptions::default()).with_iceberg(
            IcebergLog::new(Arc::clone(s), "memory:///t").with_catalog(Some(catalog.clone())),
        )
    };
    publisher(&store)
        .publish(
            &proposal("base", vec![partition("d=base", "base", 1)]),
            None,
        )
        .await
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let p = publisher(&store);
        set.spawn(async move {
            let run = format!("run{i}");
            // Half replace a partition another task also writes: they rebase or conflict.
            let path = format!("d={}", i % 12);
            p.publish(&proposal(&run, vec![partition(&path, &run, 2)]), Some(1))
                .await
        });
    }
    let mut won = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(PublishOutcome::Published { .. }) => won += 1,
            Err(e) if e.is_conflict() => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(won >= 12, "{won} of 16 landed");
    assert_metadata_whole(&store).await;
    let latest = versions::latest_version(&store).await.unwrap();
    assert_eq!(latest, 1 + won);
    assert_eq!(
        catalog.current().await.unwrap().unwrap(),
        format!("memory:///t/metadata/v{latest}.metadata.json")
    );
    // The newest metadata's snapshot holds exactly the current version's files.
    let meta = metadata(&store, latest).await;
    assert_eq!(meta["snapshots"].as_array().unwrap().len() as u64, latest);
    let m = versions::read_manifest(&store, latest).await.unwrap();
    let total: u64 = m.partitions.values().map(|p| p.file_count).sum();
    assert_eq!(
        current_snapshot(&meta)["summary"]["total-data-files"],
        total.to_string().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_every_retained_snapshot_readable_and_lists_only_those() {
    let fx = iceberg_orders();
    let job = fx.job();
    for d in 1..=6 {
        let date = format!("2024-02-{d:02}");
        fx.orders(&date, &[(d, 10, "5.50", "placed")]);
        assert_eq!(
            job.run(&date, Mode::Publish).await.unwrap().version,
            d as u64
        );
    }
    // Replace an early partition so that an old run's files expire.
    fx.orders("2024-02-01", &[(100, 10, "1.00", "placed")]);
    assert_eq!(
        job.run("2024-02-01", Mode::Publish).await.unwrap().version,
        7
    );
    let report = job
        .gc(&wap::gc::GcOptions {
            older_than_seconds: 0,
            keep_versions: Some(3),
            dry_run: false,
            now: chrono::Utc::now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    assert_eq!(report.retained_versions, [5, 6, 7]);
    assert!(
        report
            .deleted
            .iter()
            .any(|d| d.reason == wap::gc::Reason::ExpiredIcebergMetadata),
        "{report:?}"
    );
    assert_eq!(metadata_versions(job.store()).await, [5, 6, 7]);
    let uri = fx.table_dir().display().to_string();
    assert!(assert_iceberg_readers_match(&job, &uri, &[5, 6, 7], None).await >= 3 * 4 * 5);
    // The next version lists only the retained snapshots and its own.
    fx.orders("2024-02-08", &[(8, 10, "5.50", "placed")]);
    assert_eq!(
        job.run("2024-02-08", Mode::Publish).await.unwrap().version,
        8
    );
    let meta = metadata(job.store(), 8).await;
    let listed: Vec<String> = meta["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["summary"]["wap.table-version"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(listed, ["5", "6", "7", "8"]);
    assert!(assert_iceberg_readers_match(&job, &uri, &[5, 8], None).await > 0);
    assert_metadata_whole(job.store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_settings_are_checked_with_file_and_line() {
    let fx = Fixture::new();
    // An `iceberg:` section without `formats: [iceberg]`, and a PostgreSQL URL with a password.
    let text = std::fs::read_to_string(&fx.conf).unwrap();
    std::fs::write(
        &fx.conf,
        format!("{text}\niceberg:\n  catalog: postgresql://u:hunter2@db/lake\n"),
    )
    .unwrap();
    let err = wap::conf::JobConf::load(&fx.conf).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("add `formats: [iceberg]`"), "{msg}");
    enable_iceberg(&fx.conf, "");
    let err = wap::conf::JobConf::load(&fx.conf).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("orders.yaml:") && msg.contains("PGPASSWORD") && !msg.contains("hunter2"),
        "{msg}"
    );
    // A catalog entry of the same name for another table: refused before anything is published.
    let fx = iceberg_orders();
    let db = fx.dir.path().join("catalog.db");
    let url = format!("sqlite:///{}", db.display());
    enable_iceberg(
        &fx.conf,
        &format!("iceberg:\n  catalog: {url}\n  namespace: lake\n"),
    );
    let job = fx.job();
    let catalog = job.conf().iceberg_catalog.clone().unwrap();
    catalog.advance("/another/table", 3).await.unwrap();
    fx.orders("2024-01-01", &[(1, 10, "5.50", "placed")]);
    let err = job.run("2024-01-01", Mode::Publish).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("lake.orders"), "{err}");
    assert_eq!(versions::latest_version(job.store()).await.unwrap(), 0);
}

/// The data file entries of the current snapshot of `version`'s metadata (decoded manifests).
async fn entries(
    store: &Arc<dyn ObjectStore>,
    location: &str,
    version: u64,
) -> Vec<wap::iceberg::avro::Datum> {
    use wap::iceberg::avro::{Datum, read_file};
    let meta = metadata(store, version).await;
    let read = |uri: String| {
        let store = Arc::clone(store);
        let key = uri
            .strip_prefix(&format!("{location}/"))
            .unwrap()
            .to_string();
        async move {
            let bytes = store
                .get(&Path::from(key))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            read_file(&bytes).unwrap().records
        }
    };
    let list = current_snapshot(&meta)["manifest-list"]
        .as_str()
        .unwrap()
        .to_string();
    let mut out = Vec::new();
    for m in read(list).await {
        let path = m.field(0).and_then(Datum::as_str).unwrap().to_string();
        out.extend(read(path).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_has_metrics_from_its_footer() {
    use wap::iceberg::avro::Datum;
    let (dir, conf) = awkward_iceberg();
    awkward_batch(
        dir.path(),
        "2024-03-01",
        &[
            "1,a,2024-03-01,12.345,1990-05-06,2024-03-01T10:11:12.123456,",
            "9,a,2024-03-01,-1,1969-12-31,2024-03-01T00:00:00,x",
            "5,b,2024-03-01,0,,2024-03-01T00:00:00,y",
        ],
    );
    let job = open_job(&conf);
    job.run("2024-03-01", Mode::Publish).await.unwrap();
    let uri = dir.path().join("lake/tags").display().to_string();
    let meta = metadata(job.store(), 1).await;
    let id_of = |name: &str| {
        meta["schemas"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["id"]
            .as_i64()
            .unwrap() as i32
    };
    let map = |d: &Datum| -> Vec<(i32, Datum)> {
        match d.some() {
            Some(Datum::Array(items)) => items
                .iter()
                .map(|kv| match (kv.field(0), kv.field(1)) {
                    (Some(Datum::Int(k)), Some(v)) => (*k, v.clone()),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("not a map: {other:?}"),
        }
    };
    let found = entries(job.store(), &uri, 1).await;
    assert_eq!(found.len(), 2, "one file per partition");
    for e in &found {
        let file = e.field(4).unwrap();
        let path = file.field(1).and_then(Datum::as_str).unwrap();
        let rows = file.field(4).and_then(Datum::as_long).unwrap();
        let values = map(file.field(7).unwrap());
        assert!(
            values.contains(&(id_of("id"), Datum::Long(rows))),
            "{values:?}"
        );
        let nulls = map(file.field(8).unwrap());
        let lower = map(file.field(10).unwrap());
        let upper = map(file.field(11).unwrap());
        let le = |v: i64| Datum::Bytes(v.to_le_bytes().to_vec());
        if path.contains("tag=a/") {
            assert_eq!(rows, 2);
            assert!(lower.contains(&(id_of("id"), le(1))), "{lower:?}");
            assert!(upper.contains(&(id_of("id"), le(9))), "{upper:?}");
            assert!(
                nulls.contains(&(id_of("note"), Datum::Long(1))),
                "{nulls:?}"
            );
            // A decimal bound is its unscaled value, big-endian: -1.000 is -1000.
            assert!(
                lower.contains(&(
                    id_of("amount"),
                    Datum::Bytes((-1000i16).to_be_bytes().to_vec())
                )),
                "{lower:?}"
            );
        } else {
            assert!(
                nulls.contains(&(id_of("born"), Datum::Long(1))),
                "{nulls:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_one_partition_of_a_large_backfill_rewrites_one_segment_s_manifest() {
    use crate::publish::{partition, proposal};
    use std::collections::BTreeMap;
    use wap::iceberg::IcebergLog;
    use wap::manifest::Segment;
    use wap::publish::{PublishOptions, Publisher};
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let publisher = Publisher::new(Arc::clone(&store), PublishOptions::default())
        .with_iceberg(IcebergLog::new(Arc::clone(&store), "memory:///t"));
    // A backfill of 600 partitions: its file lists are three segments (256, 256, 88).
    let mut parts: Vec<_> = (0..600)
        .map(|i| partition(&format!("d={i:04}"), "backfill", 1))
        .collect();
    let lists: BTreeMap<String, Vec<_>> = parts
        .iter()
        .map(|p| (p.path.clone(), p.files.clone()))
        .collect();
    let mut segment_of = BTreeMap::new();
    for segment in Segment::chunked(lists) {
        let (path, bytes) = segment.encode("staging/backfill");
        store.put(&path, bytes.into()).await.unwrap();
        for p in segment.partitions.keys() {
            segment_of.insert(p.clone(), path.to_string());
        }
    }
    for p in &mut parts {
        p.segment = Some(segment_of[&p.path].clone());
    }
    publisher
        .publish(&proposal("backfill", parts), None)
        .await
        .unwrap();
    assert_eq!(entries(&store, "memory:///t", 1).await.len(), 600);
    let before = metadata_objects(&store).await;
    publisher
        .publish(
            &proposal("nightly", vec![partition("d=0300", "nightly", 2)]),
            None,
        )
        .await
        .unwrap();
    let new: Vec<String> = metadata_objects(&store)
        .await
        .difference(&before)
        .cloned()
        .collect();
    let manifests: Vec<&String> = new.iter().filter(|p| p.ends_with("-m0.avro")).collect();
    assert_eq!(
        manifests.len(),
        2,
        "the nightly run's and one backfill segment's: {new:?}"
    );
    let rewritten = manifests
        .iter()
        .find(|p| p.contains("/backfill-"))
        .expect("a backfill manifest");
    let bytes = store
        .get(&Path::from(rewritten.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let kept = wap::iceberg::avro::read_file(&bytes).unwrap().records;
    assert_eq!(
        kept.len(),
        255,
        "the second segment less the replaced partition"
    );
    assert!(
        kept.iter()
            .all(|e| e.field(0) == Some(&wap::iceberg::avro::Datum::Int(0)))
    );
    let all = entries(&store, "memory:///t", 2).await;
    assert_eq!(all.len(), 599 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_partition_an_iceberg_table_and_small_integers_read_as_int() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    let conf = dir.path().join("conf/times.yaml");
    std::fs::write(
        &conf,
        "name: times\n\
         table: ../lake/times\n\
         partition_by: [at, at_utc]\n\
         key: [id]\n\
         formats: [iceberg]\n\
         source:\n  format: csv\n  path: ../data/{date}/\n\
         transform: |\n  SELECT id, CAST(id AS TINYINT) AS tiny, CAST(id * 100 AS SMALLINT) AS small, \
         to_timestamp_micros(at) AS at, \
         arrow_cast(to_timestamp_micros(at), 'Timestamp(Microsecond, Some(\"UTC\"))') AS at_utc, \
         CAST(score AS FLOAT) AS score FROM source\n",
    )
    .unwrap();
    crate::delta::write_rows(
        dir.path(),
        "2024-01-01",
        "id,at,score",
        &[
            "1,2024-01-01T00:00:00,1.5",
            "2,2024-01-01T00:00:00.000001,",
            "3,1969-12-31T23:59:59.5,-2",
            "4,,0",
        ],
    );
    let job = open_job(&conf);
    let run = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(run.status, Status::Published, "{:?}", run.message);
    let uri = dir.path().join("lake/times").display().to_string();
    assert_eq!(
        assert_iceberg_readers_match(&job, &uri, &[1], None).await,
        4 * 5
    );
    let meta = metadata(job.store(), 1).await;
    let types: Vec<String> = meta["schemas"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        ["long", "int", "int", "timestamp", "timestamptz", "float"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_numbered_on_an_older_schema_are_a_conflict_not_wrong_columns() {
    use crate::publish::{partition, proposal};
    use arrow::datatypes::{DataType, Field, Schema};
    use wap::iceberg::IcebergLog;
    use wap::iceberg::schema::with_field_ids;
    use wap::publish::{Proposal, PublishOptions, Publisher};
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let publisher = Publisher::new(Arc::clone(&store), PublishOptions::default())
        .with_iceberg(IcebergLog::new(Arc::clone(&store), "memory:///t"));
    let with_schema = |mut p: Proposal, schema: Schema| {
        if let Proposal::Replace { schema: s, .. } = &mut p {
            *s = schema;
        }
        p
    };
    let column = |name: &str| Field::new(name, DataType::Utf8, true);
    let v1 = with_field_ids(
        &Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("d", DataType::Utf8, true),
        ]),
        None,
    );
    publisher
        .publish(
            &with_schema(
                proposal("first", vec![partition("d=1", "first", 1)]),
                v1.clone(),
            ),
            None,
        )
        .await
        .unwrap();
    // Two runs on version 1 add a column each: both number it 3.
    let add = |name: &str| {
        let mut fields = v1.fields().to_vec();
        fields.push(Arc::new(column(name)));
        with_field_ids(&Schema::new(fields), Some(&v1))
    };
    publisher
        .publish(
            &with_schema(proposal("a", vec![partition("d=2", "a", 1)]), add("x")),
            Some(1),
        )
        .await
        .unwrap();
    let b_schema = {
        // x and y both, numbered on version 1 in the order y, x: y = 3, x = 4.
        let mut fields = v1.fields().to_vec();
        fields.push(Arc::new(column("y")));
        fields.push(Arc::new(column("x")));
        with_field_ids(&Schema::new(fields), Some(&v1))
    };
    let err = publisher
        .publish(
            &with_schema(proposal("b", vec![partition("d=3", "b", 1)]), b_schema),
            Some(1),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(err.to_string().contains("`x` has field id 4"), "{err}");
    assert_eq!(versions::latest_version(&store).await.unwrap(), 2);
    // Numbered on version 2 instead, the same run publishes.
    let mut fields = add("x").fields().to_vec();
    fields.insert(2, Arc::new(column("y")));
    let right = with_field_ids(&Schema::new(fields), Some(&add("x")));
    publisher
        .publish(
            &with_schema(proposal("b", vec![partition("d=3", "b", 1)]), right),
            None,
        )
        .await
        .unwrap();
    let meta = metadata(&store, 3).await;
    let fields = meta["schemas"].as_array().unwrap().last().unwrap()["fields"].clone();
    let id = |n: &str| {
        fields
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    assert_eq!((id("x"), id("y")), (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_then_on_after_gc_the_metadata_starts_again() {
    let fx = Fixture::new();
    enable_iceberg(&fx.conf, "");
    let job = fx.job();
    for d in 1..=2 {
        let date = format!("2024-03-{d:02}");
        fx.orders(&date, &[(d, 10, "5.50", "placed")]);
        job.run(&date, Mode::Publish).await.unwrap();
    }
    let on = std::fs::read_to_string(&fx.conf).unwrap();
    std::fs::write(&fx.conf, on.replace("formats: [iceberg]", "")).unwrap();
    let plain = fx.job();
    for d in 3..=6 {
        let date = format!("2024-03-{d:02}");
        fx.orders(&date, &[(d, 10, "5.50", "placed")]);
        plain.run(&date, Mode::Publish).await.unwrap();
    }
    plain
        .gc(&wap::gc::GcOptions {
            older_than_seconds: 0,
            keep_versions: Some(2),
            dry_run: false,
            now: chrono::Utc::now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    std::fs::write(&fx.conf, on).unwrap();
    let job = fx.job();
    fx.orders("2024-03-07", &[(7, 10, "5.50", "placed")]);
    assert_eq!(
        job.run("2024-03-07", Mode::Publish).await.unwrap().version,
        7
    );
    assert_eq!(metadata_versions(job.store()).await, [1, 2, 6, 7]);
    let meta = metadata(job.store(), 7).await;
    assert_eq!(
        meta["snapshots"].as_array().unwrap().len(),
        2,
        "a new lineage from 6"
    );
    let uri = fx.table_dir().display().to_string();
    assert!(assert_iceberg_readers_match(&job, &uri, &[6, 7], None).await > 0);
}

/// A PostgreSQL server for one test (pgserver from PyPI, in the readers' virtualenv), stopped
/// when dropped.
struct Postgres {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let script = FsPath::new(REPO).join("tests/readers/pg_server.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("postgresql://"),
            "the PostgreSQL server did not start: {line:?}"
        );
        Postgres {
            child,
            url: line.trim().to_string(),
            _dir: dir,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_catalog_moves_forward_and_pyiceberg_reads_it() {
    use wap::iceberg::catalog::Catalog;
    let pg = Postgres::start();
    // Concurrent writers on the same row: every swap lands or rolls forward, the newest wins.
    let dir = tempfile::tempdir().unwrap();
    let c = Catalog::parse(&pg.url, dir.path(), "default", "lake", "race").unwrap();
    assert_eq!(c.current().await.unwrap(), None);
    let mut set = tokio::task::JoinSet::new();
    for v in 1..=12 {
        let c = c.clone();
        set.spawn(async move { c.advance("/t", v).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(
        c.current().await.unwrap().as_deref(),
        Some("/t/metadata/v12.metadata.json")
    );
    c.advance("/t", 3).await.unwrap();
    assert!(
        c.current()
            .await
            .unwrap()
            .unwrap()
            .ends_with("/v12.metadata.json")
    );
    assert!(c.check("/elsewhere").await.unwrap_err().is_config());
    // A job registering its versions there, read by pyiceberg's SqlCatalog on PostgreSQL.
    let fx = iceberg_orders();
    enable_iceberg(
        &fx.conf,
        &format!("iceberg:\n  catalog: \"{}\"\n  namespace: lake\n", pg.url),
    );
    let published = overwrite_sequence(&fx).await;
    let job = fx.job();
    let uri = fx.table_dir().display().to_string();
    let sqlalchemy = pg
        .url
        .replacen("postgresql://", "postgresql+psycopg2://", 1);
    assert!(
        assert_iceberg_readers_match(
            &job,
            &uri,
            &published,
            Some((&sqlalchemy, "default", "lake.orders"))
        )
        .await
            > 50
    );
    let catalog = job.conf().iceberg_catalog.clone().unwrap();
    assert_eq!(
        catalog.current().await.unwrap().unwrap(),
        format!("{uri}/metadata/v5.metadata.json")
    );
}
