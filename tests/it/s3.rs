//! The same job and publish protocol on a real S3 endpoint (moto started by `scripts/test.sh`,
//! or MinIO: set `WAP_TEST_S3_ENDPOINT`). These tests never skip: without an endpoint they fail
//! and say how to start one.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use wap::conf::{JobConf, StorageOptions};
use wap::job::{Job, JobOptions, Mode, Status};
use wap::publish::{PublishOptions, PublishOutcome, Publisher};
use wap::store::Location;
use wap::versions;

use crate::cli::Example;
use crate::fixture::{Fixture, rows};
use crate::store::{FaultKind, RecordingStore};

/// The endpoint and bucket under test.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
}

pub fn s3() -> S3 {
    let endpoint = std::env::var("WAP_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "WAP_TEST_S3_ENDPOINT is not set: run the suite with scripts/test.sh, which starts an \
             S3 server (moto) on loopback, or point it at MinIO (docker compose up)"
        )
    });
    let bucket = std::env::var("WAP_TEST_S3_BUCKET").unwrap_or_else(|_| "wap-test".into());
    S3 { endpoint, bucket }
}

impl S3 {
    /// A fresh prefix for one test (unique across runs, for long-lived MinIO buckets).
    pub fn prefix(&self, name: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("s3://{}/{name}-{}-{nanos}", self.bucket, std::process::id())
    }

    pub fn options(&self) -> StorageOptions {
        StorageOptions {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            path_style: Some(true),
        }
    }

    /// The `storage:` section for job files.
    pub fn storage_yaml(&self) -> String {
        format!(
            "storage:\n  endpoint: {}\n  region: us-east-1\n  allow_http: true\n  path_style: true\n",
            self.endpoint
        )
    }

    /// A store rooted at `location`.
    pub fn store(&self, location: &str) -> Arc<dyn ObjectStore> {
        Location::parse(location, &self.options())
            .unwrap()
            .scoped()
            .unwrap()
    }
}

pub(crate) fn point_at_s3(conf: &std::path::Path, table: &str, s3: &S3) {
    let text = std::fs::read_to_string(conf).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("table: ../lake/"))
        .expect("the job's table is under ../lake/");
    let text = text.replace(line, &format!("table: {table}"));
    std::fs::write(conf, format!("{text}{}", s3.storage_yaml())).unwrap();
}

const SENTINEL: &str = "wap-SENTINEL-secret-5f3a9c";

#[test]
fn full_cycle_on_s3_through_the_cli_without_leaking_secrets() {
    let s3 = s3();
    let ex = Example::new();
    let table = s3.prefix("cli") + "/orders";
    point_at_s3(&ex.dir.path().join("conf/orders.yaml"), &table, &s3);
    let env = [
        ("AWS_SECRET_ACCESS_KEY", SENTINEL),
        ("AWS_ACCESS_KEY_ID", "wap-test-key"),
    ];
    let mut outputs = Vec::new();
    let mut json = |args: &[&str]| {
        let out = ex.wap_env(args, &env);
        outputs.push(out.clone());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), v)
    };
    let conf = "conf/orders.yaml";
    let (c, day1) = json(&["run", "--conf", conf, "--date", "2024-01-01", "--json"]);
    assert_eq!(
        (c, day1["status"].as_str(), day1["version"].as_u64()),
        (0, Some("published"), Some(1))
    );
    let (c, day2) = json(&["run", "--conf", conf, "--date", "2024-01-02", "--json"]);
    assert_eq!(
        (c, day2["status"].as_str(), day2["version"].as_u64()),
        (3, Some("audit_failed"), Some(1))
    );
    let (c, day3) = json(&["run", "--conf", conf, "--date", "2024-01-03", "--json"]);
    assert_eq!((c, day3["version"].as_u64()), (0, Some(2)));
    let (c, again) = json(&["run", "--conf", conf, "--date", "2024-01-01", "--json"]);
    assert_eq!(
        (c, again["status"].as_str(), again["version"].as_u64()),
        (0, Some("unchanged"), Some(2))
    );
    let (c, back) = json(&["rollback", "--conf", conf, "--to", "1", "--json"]);
    assert_eq!(
        (c, back["status"].as_str(), back["version"].as_u64()),
        (0, Some("published"), Some(3))
    );
    let (c, log) = json(&["log", "--conf", conf, "--json"]);
    assert_eq!((c, log["versions"].as_array().unwrap().len()), (0, 3));

    let out = ex.wap_env(
        &[
            "query",
            "--conf",
            conf,
            "--format",
            "csv",
            "--version",
            "2",
            "SELECT order_date, count(*) AS n FROM orders GROUP BY order_date ORDER BY order_date",
        ],
        &env,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "order_date,n\n2024-01-01,5\n2024-01-03,4\n"
    );
    outputs.push(out);
    let out = ex.wap_env(&["run", "--conf", conf, "--date", "2024-01-02"], &env);
    assert_eq!(out.status.code(), Some(3));
    outputs.push(out);
    // A failing store call: a bucket that does not exist.
    let bad = ex.dir.path().join("conf/bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(ex.dir.path().join(conf))
            .unwrap()
            .replace(&s3.bucket, "no-such-bucket-wap"),
    )
    .unwrap();
    let out = ex.wap_env(
        &[
            "run",
            "--conf",
            "conf/bad.yaml",
            "--date",
            "2024-01-01",
            "-vv",
        ],
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: "));
    outputs.push(out);
    // Every other command, with debug logging.
    for args in [
        &["gc", "--conf", conf, "--dry-run", "--json", "-vv"][..],
        &["gc", "--conf", conf, "-vv"],
        &["log", "--conf", conf, "-vv"],
        &["doctor", "--conf", conf, "-vv"],
        &["report", "--conf", conf, "--format", "markdown", "-vv"],
        &["show", "--conf", conf, "-vv"],
        &["check", "--conf", conf, "-vv"],
        &["audit", "--conf", conf, "--version", "1", "-vv"],
    ] {
        let out = ex.wap_env(args, &env);
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(out);
    }

    for out in &outputs {
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            for secret in [
                SENTINEL,
                "Signature=",
                "X-Amz-Signature",
                "x-amz-security-token",
            ] {
                assert!(!text.contains(secret), "{secret} leaked: {text}");
            }
        }
    }
    // Nor in anything stored.
    let store = s3.store(&table);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use futures::TryStreamExt;
        let all: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert!(
            all.iter()
                .any(|m| m.location.as_ref().starts_with("_wap/manifests/"))
        );
        for m in all.iter().filter(|m| {
            m.location.as_ref().ends_with(".json") || m.location.as_ref().ends_with("current")
        }) {
            let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(SENTINEL));
        }
    });
}

#[test]
fn doctor_passes_on_s3() {
    let s3 = s3();
    let ex = Example::new();
    point_at_s3(
        &ex.dir.path().join("conf/orders.yaml"),
        &(s3.prefix("doctor") + "/t"),
        &s3,
    );
    let out = ex.wap(&["doctor", "--conf", "conf/orders.yaml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "reachable",
        "put_if_absent",
        "if_match_stale",
        "if_match_missing",
        "cleanup",
    ] {
        assert!(text.contains(&format!("[pass] {check}")), "{check}: {text}");
    }
    assert!(text.contains("publishing is safe"));
}

#[tokio::test]
async fn conditional_writes_behave_on_s3() {
    let s3 = s3();
    let store = s3.store(&s3.prefix("conformance"));
    let p = Path::from("k");
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&p, PutPayload::from_static(b"1"), create.clone())
        .await
        .unwrap();
    let again = store
        .put_opts(&p, PutPayload::from_static(b"2"), create)
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    let first = store.head(&p).await.unwrap();
    let stale = UpdateVersion {
        e_tag: first.e_tag.clone(),
        version: None,
    };
    store.put(&p, PutPayload::from_static(b"3")).await.unwrap();
    let swap = store
        .put_opts(
            &p,
            PutPayload::from_static(b"4"),
            PutOptions {
                mode: PutMode::Update(stale.clone()),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(swap, Err(object_store::Error::Precondition { .. })),
        "{swap:?}"
    );
    let missing = store
        .put_opts(
            &Path::from("missing"),
            PutPayload::from_static(b"5"),
            PutOptions {
                mode: PutMode::Update(stale),
                ..Default::default()
            },
        )
        .await;
    assert!(missing.is_err(), "{missing:?}");
    assert!(store.head(&Path::from("missing")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_s3_never_lose_an_update() {
    let s3 = s3();
    let store = s3.store(&s3.prefix("race"));
    let publisher = || Publisher::new(Arc::clone(&store), PublishOptions::default());
    publisher()
        .publish(
            &crate::publish::proposal("base", vec![crate::publish::partition("d=base", "base", 1)]),
            None,
        )
        .await
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let p = publisher();
        set.spawn(async move {
            let run = format!("run{i}");
            let prop = crate::publish::proposal(
                &run,
                vec![crate::publish::partition(&format!("d={i}"), &run, 3)],
            );
            p.publish(&prop, Some(1)).await
        });
    }
    let mut won = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.unwrap().unwrap() {
            PublishOutcome::Published { version } => won.push(version),
            other => panic!("{other:?}"),
        }
    }
    won.sort();
    assert_eq!(won, (2..=9).collect::<Vec<_>>());
    let current = versions::current(&store).await.unwrap().unwrap();
    assert_eq!((current.version, current.partitions.len()), (9, 9));
    assert_eq!(
        versions::read_pointer(&store)
            .await
            .unwrap()
            .unwrap()
            .pointer
            .version,
        9
    );
}

#[test]
fn eight_wap_processes_on_different_dates_all_land() {
    let s3 = s3();
    let ex = Example::new();
    let table = s3.prefix("procs") + "/orders";
    point_at_s3(&ex.dir.path().join("conf/orders.yaml"), &table, &s3);
    let dates: Vec<String> = (10..18).map(|d| format!("2024-01-{d}")).collect();
    for d in &dates {
        let dir = ex.dir.path().join("data/orders").join(d);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("orders.csv"),
            format!(
                "order_id,customer_id,amount,status,order_ts\n{},1,9.99,placed,{d}T10:00:00\n",
                d.replace('-', "")
            ),
        )
        .unwrap();
    }
    let children: Vec<_> = dates
        .iter()
        .map(|d| ex.spawn(&["run", "--conf", "conf/orders.yaml", "--date", d, "--json"]))
        .collect();
    let mut versions_won = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "published");
        versions_won.push(v["version"].as_u64().unwrap());
    }
    versions_won.sort();
    assert_eq!(
        versions_won,
        (1..=8).collect::<Vec<_>>(),
        "one process per version"
    );
    let out = ex.wap(&[
        "query",
        "--conf",
        "conf/orders.yaml",
        "--format",
        "csv",
        "SELECT count(*) AS n, count(DISTINCT order_date) AS d FROM orders",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n,d\n8,8\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_partition_on_s3_one_wins_the_other_conflicts() {
    let s3 = s3();
    let f = Fixture::new();
    let table = s3.prefix("same") + "/orders";
    point_at_s3(&f.conf, &table, &s3);
    f.orders("2024-01-01", &[(1, 1, "1.00", "placed")]);
    let job = || Job::open(JobConf::load(&f.conf).unwrap(), JobOptions::default()).unwrap();
    job().run("2024-01-01", Mode::Publish).await.unwrap();

    f.orders("2024-01-01", &[(2, 1, "2.00", "placed")]);
    let rec = RecordingStore::new(s3.store(&table));
    let pause = rec.pause_next("put", "_wap/manifests/");
    let a_job = Job::with_store(
        JobConf::load(&f.conf).unwrap(),
        rec.clone(),
        JobOptions::default(),
    );
    let a = tokio::spawn(async move { a_job.run("2024-01-01", Mode::Publish).await });
    pause.reached.notified().await;
    f.orders("2024-01-01", &[(3, 1, "3.00", "placed")]);
    let b = job().run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!((b.status, b.version), (Status::Published, 2));
    pause.proceed.notify_one();
    let a = a.await.unwrap().unwrap();
    assert_eq!((a.status, a.status.exit_code()), (Status::Conflict, 4));
    assert_eq!(rows(&job(), None).await, ["3|3.00|placed|2024-01-01"]);
}

#[tokio::test]
async fn a_job_whose_source_is_on_s3_too() {
    let s3 = s3();
    let f = Fixture::new();
    let root = s3.prefix("src");
    point_at_s3(&f.conf, &format!("{root}/orders"), &s3);
    f.edit_conf(
        "path: ../data/orders/{date}/",
        &format!("path: {root}/raw/{{date}}/"),
    );
    let raw = s3.store(&root);
    raw.put(
        &Path::from("raw/2024-01-01/a.csv"),
        PutPayload::from_static(
            b"order_id,customer_id,amount,status,order_ts\n2,1,2.50,placed,2024-01-01T01:00:00\n",
        ),
    )
    .await
    .unwrap();
    raw.put(
        &Path::from("raw/2024-01-01/b.csv"),
        PutPayload::from_static(
            b"order_id,customer_id,amount,status,order_ts\n1,1,1.50,shipped,2024-01-01T02:00:00\n",
        ),
    )
    .await
    .unwrap();
    raw.put(
        &Path::from("raw/2024-01-01/_SUCCESS"),
        PutPayload::from_static(b""),
    )
    .await
    .unwrap();
    let job = f.job();
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!((out.status, out.rows), (Status::Published, 2));
    assert_eq!(
        rows(&job, None).await,
        ["1|1.50|shipped|2024-01-01", "2|2.50|placed|2024-01-01"]
    );
    let again = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!(
        again.status,
        Status::Unchanged,
        "the run id comes from S3 ETags"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_multipart_and_an_aborted_upload_leaves_nothing() {
    let s3 = s3();
    let f = Fixture::new();
    let table = s3.prefix("multipart") + "/orders";
    point_at_s3(&f.conf, &table, &s3);
    std::fs::write(f.dir.path().join("audits/orders.yaml"), "rules: []\n").unwrap();
    // Incompressible statuses make a file of several MiB.
    let mut csv = String::from("order_id,customer_id,amount,status,order_ts\n");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..150_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        csv.push_str(&format!(
            "{i},{},{}.00,{x:016x}{:016x}{:016x},2024-01-01T00:00:00\n",
            i % 97,
            i % 1000,
            x.rotate_left(29),
            x.rotate_left(41)
        ));
    }
    f.raw("2024-01-01", "orders.csv", &csv);
    let options = JobOptions {
        write: wap::write::WriteOptions {
            upload_part_size: 5 << 20,
            ..Default::default()
        },
        ..Default::default()
    };

    // First attempt: the second part of the upload fails.
    let rec = RecordingStore::new(s3.store(&table));
    rec.fail_next("put_part", "part-00000.parquet", FaultKind::Before);
    let job = Job::with_store(
        JobConf::load(&f.conf).unwrap(),
        rec.clone(),
        options.clone(),
    );
    let err = job.run("2024-01-01", Mode::Publish).await.unwrap_err();
    assert!(err.to_string().contains("part-00000.parquet"), "{err}");
    assert!(
        rec.requests().iter().any(|r| r.op == "put_multipart"),
        "the file was uploaded in parts"
    );
    let store = s3.store(&table);
    let staged = {
        use futures::TryStreamExt;
        store
            .list(Some(&Path::from("staging")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    };
    assert!(
        staged.is_empty(),
        "an aborted upload leaves no object: {staged:?}"
    );
    assert!(versions::current(&store).await.unwrap().is_none());

    // The retry publishes a multi-part file whose bytes match the manifest.
    let job = Job::with_store(JobConf::load(&f.conf).unwrap(), Arc::clone(&store), options);
    let out = job.run("2024-01-01", Mode::Publish).await.unwrap();
    assert_eq!((out.status, out.rows), (Status::Published, 150_000));
    let mut m = versions::current(&store).await.unwrap().unwrap();
    versions::resolve_files(&store, [&mut m]).await.unwrap();
    let file = &m.partitions["order_date=2024-01-01"].files[0];
    assert!(
        file.size > 5 << 20,
        "{} bytes is not multipart-sized",
        file.size
    );
    let bytes = store
        .get(&Path::from(file.path.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, file.size);
    use sha2::Digest;
    assert_eq!(
        wap::manifest::hex(&sha2::Sha256::digest(&bytes)),
        file.sha256
    );
}
