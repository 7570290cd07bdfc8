//! `wap gc`: retention by age and by count, dry runs, and the property that every retained
//! version still reads completely afterwards.

use std::collections::BTreeSet;

use wap::gc::{GcOptions, Reason};
use wap::job::{Job, Mode, Status};

use crate::fixture::{Fixture, rows};

/// Versions 1 (day 1), 2 (day 2), 3 (day 1 again, new input: replaces v1's file), and day 3
/// staged by a run whose audit failed.
async fn history() -> (Fixture, Job) {
    let f = Fixture::new();
    f.orders(
        "2024-01-01",
        &[(1, 1, "1.00", "placed"), (2, 1, "2.00", "placed")],
    );
    f.orders("2024-01-02", &[(3, 2, "3.00", "placed")]);
    f.orders("2024-01-03", &[(4, 2, "4.00", "lost")]);
    let job = f.job();
    for date in ["2024-01-01", "2024-01-02"] {
        assert_eq!(
            job.run(date, Mode::Publish).await.unwrap().status,
            Status::Published
        );
    }
    f.orders("2024-01-01", &[(1, 1, "1.50", "shipped")]);
    assert_eq!(
        job.run("2024-01-01", Mode::Publish).await.unwrap().version,
        3
    );
    assert_eq!(
        job.run("2024-01-03", Mode::Publish).await.unwrap().status,
        Status::AuditFailed
    );
    (f, job)
}

fn later(older_than_seconds: i64, keep_versions: Option<usize>, dry_run: bool) -> GcOptions {
    GcOptions {
        older_than_seconds,
        keep_versions,
        dry_run,
        now: chrono::Utc::now() + chrono::Duration::hours(1),
    }
}

fn staged_files(f: &Fixture) -> BTreeSet<String> {
    f.listing()
        .into_keys()
        .filter(|k| k.starts_with("staging/"))
        .collect()
}

async fn every_retained_version_reads(job: &Job, retained: &[u64]) {
    for v in retained {
        let m = job.show(Some(*v)).await.unwrap();
        assert_eq!(
            rows(job, Some(*v)).await.len() as u64,
            m.rows(),
            "version {v}"
        );
    }
}

#[tokio::test]
async fn nothing_younger_than_the_retention_goes() {
    let (f, job) = history().await;
    let before = f.listing();
    let report = job.gc(&GcOptions::default()).await.unwrap();
    assert!(report.deleted.is_empty(), "{:?}", report.deleted);
    assert_eq!(report.retained_versions, [1, 2, 3]);
    assert_eq!(report.kept_young, 1, "day 3's staged file");
    assert_eq!(f.listing(), before);
}

#[tokio::test]
async fn expired_versions_and_unpublished_runs_go_and_retained_versions_read() {
    let (f, job) = history().await;
    let v1 = job.show_files(Some(1)).await.unwrap();
    let v1_file = v1.files().next().unwrap().path.clone();
    let v1_segment = v1.segments().next().unwrap().to_string();
    let failed_run = job
        .runs()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.logical_date == "2024-01-03")
        .unwrap()
        .run_id;

    // A dry run says what would go and deletes nothing.
    let before = f.listing();
    let dry = job.gc(&later(0, Some(2), true)).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(f.listing(), before, "a dry run deletes nothing");
    let by_reason = |r: &wap::gc::GcReport, reason: Reason| -> Vec<String> {
        r.deleted
            .iter()
            .filter(|d| d.reason == reason)
            .map(|d| d.path.clone())
            .collect()
    };
    assert_eq!(dry.retained_versions, [2, 3]);
    assert_eq!(dry.expired_versions, [1]);
    assert_eq!(
        by_reason(&dry, Reason::ExpiredManifest),
        ["_wap/manifests/00000000000000000001.json"]
    );
    // Version 1's file of 2024-01-01 is still used by version 2.
    assert!(by_reason(&dry, Reason::ExpiredVersion).is_empty());
    let unpublished = by_reason(&dry, Reason::UnpublishedRun);
    assert_eq!(unpublished.len(), 1);
    assert!(unpublished[0].starts_with(&format!("staging/{failed_run}/")));
    assert!(dry.deleted.iter().all(|d| d.bytes > 0));

    // The real thing deletes exactly that.
    let done = job.gc(&later(0, Some(2), false)).await.unwrap();
    let listed: Vec<&String> = dry.deleted.iter().map(|d| &d.path).collect();
    let deleted: Vec<&String> = done.deleted.iter().map(|d| &d.path).collect();
    assert_eq!(listed, deleted);
    let after = f.listing();
    for d in &done.deleted {
        assert!(!after.contains_key(&d.path), "{} still there", d.path);
    }
    every_retained_version_reads(&job, &done.retained_versions).await;
    let err = job.show(Some(1)).await.unwrap_err();
    assert_eq!(err.exit_code(), wap::exit_code::CONFIG, "{err}");
    // Reports stay: they are the audit history.
    assert!(
        after
            .keys()
            .any(|k| k == &format!("_wap/runs/{failed_run}/report.json"))
    );

    // Again: nothing left to do.
    let again = job.gc(&later(0, Some(2), false)).await.unwrap();
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);

    // Keeping one version expires version 2 and with it the replaced 2024-01-01 file; day 2's
    // file stays, version 3 still uses it.
    let one = job.gc(&later(0, Some(1), false)).await.unwrap();
    assert_eq!(one.retained_versions, [3]);
    assert_eq!(
        by_reason(&one, Reason::ExpiredManifest),
        ["_wap/manifests/00000000000000000002.json"]
    );
    assert_eq!(
        by_reason(&one, Reason::ExpiredVersion),
        [v1_segment, v1_file],
        "the replaced file and the segment that listed it"
    );
    every_retained_version_reads(&job, &[3]).await;
    let current = job.show_files(None).await.unwrap();
    let files: BTreeSet<String> = current
        .files()
        .map(|f| f.path.clone())
        .chain(current.segments().map(str::to_string))
        .collect();
    assert_eq!(
        staged_files(&f),
        files,
        "exactly the current files and their segment remain"
    );
}

#[tokio::test]
async fn a_version_current_within_the_retention_is_kept() {
    let (_f, job) = history().await;
    // One day of retention: every version was current less than a day ago.
    let report = job.gc(&later(86_400, None, false)).await.unwrap();
    assert_eq!(report.retained_versions, [1, 2, 3]);
    assert!(report.deleted.is_empty());
}

#[test]
fn the_cli_lists_and_deletes_with_json() {
    let ex = crate::cli::Example::new();
    let conf = "conf/orders.yaml";
    // Day 2 of the example fails its audit (exit 3).
    for (date, code) in [("2024-01-01", 0), ("2024-01-02", 3), ("2024-01-03", 0)] {
        let out = ex.wap(&["run", "--conf", conf, "--date", date]);
        assert_eq!(out.status.code(), Some(code), "{date}");
    }
    let out = ex.wap(&[
        "gc",
        "--conf",
        conf,
        "--older-than",
        "0s",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dry_run"], true);
    // No retention: version 1's manifest expires (its file is still version 2's), and day 2,
    // which failed its audit, leaves a staged file.
    let reasons: Vec<&str> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["expired_manifest", "unpublished_run"], "{v}");
    assert_eq!(v["retained_versions"], serde_json::json!([2]));
    // Keeping 2 versions, only the unpublished run goes.
    let out = ex.wap(&[
        "gc",
        "--conf",
        conf,
        "--older-than",
        "0s",
        "--keep-versions",
        "2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deleted 1 object(s)") && text.contains("run never published"),
        "{text}"
    );
    let out = ex.wap(&["gc", "--conf", conf, "--older-than", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
}

#[tokio::test]
async fn an_unreadable_publication_time_stops_gc_before_any_delete() {
    let (f, job) = history().await;
    // Version 2 re-sealed with a time gc cannot read (checksum valid: only the time is wrong).
    let path = f
        .table_dir()
        .join("_wap/manifests/00000000000000000002.json");
    let mut m = job.show(Some(2)).await.unwrap();
    m.change.published_at = "last tuesday".into();
    std::fs::write(&path, m.encode()).unwrap();
    let before = f.listing();
    let err = job.gc(&later(0, Some(1), false)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("version 2") && msg.contains("last tuesday") && msg.contains("help:"),
        "{msg}"
    );
    assert_eq!(f.listing(), before, "nothing deleted");
    // Keeping the version before it, gc never needs that time.
    let report = job.gc(&later(0, Some(3), false)).await.unwrap();
    assert_eq!(report.retained_versions, [1, 2, 3]);
}
