//! The publish protocol on its own: request counts, races, and faults around the commit point.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use wap::manifest::{DataFile, Partition};
use wap::publish::{Proposal, PublishError, PublishOptions, PublishOutcome, Publisher};
use wap::versions;

use crate::store::{Conditions, FaultKind, RecordingStore};

pub(crate) fn partition(path: &str, run_id: &str, files: usize) -> Partition {
    Partition {
        path: path.to_string(),
        values: [(
            "d".to_string(),
            Some(path.trim_start_matches("d=").to_string()),
        )]
        .into(),
        rows: files as u64 * 10,
        bytes: files as u64 * 1000,
        file_count: files as u64,
        // Inline file lists (as format 1 had them): these tests publish without segments.
        segment: None,
        files: (0..files)
            .map(|i| DataFile {
                path: format!("staging/{run_id}/{path}/part-{i:05}.parquet"),
                size: 1000,
                rows: 10,
                sha256: format!("{i:064x}"),
                key_min: vec![Some("1".into())],
                key_max: vec![Some("10".into())],
                stats: Default::default(),
            })
            .collect(),
        run_id: run_id.to_string(),
        logical_date: "2024-01-01".into(),
        key_min: None,
        key_max: None,
    }
}

pub(crate) fn proposal(run_id: &str, partitions: Vec<Partition>) -> Proposal {
    Proposal::Replace {
        run_id: run_id.to_string(),
        logical_date: "2024-01-01".into(),
        table: "t".into(),
        schema: Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("d", DataType::Utf8, true),
        ]),
        partition_by: vec!["d".into()],
        key: vec!["id".into()],
        partitions,
        audits: vec![],
        merge: None,
        yield_to: Default::default(),
    }
}

fn publisher(store: &Arc<dyn ObjectStore>) -> Publisher {
    Publisher::new(Arc::clone(store), PublishOptions::default())
}

/// Publishing on top of whatever is current.
trait PublishNow {
    async fn publish_now(&self, p: &Proposal) -> Result<PublishOutcome, PublishError>;
}

impl PublishNow for Publisher {
    async fn publish_now(&self, p: &Proposal) -> Result<PublishOutcome, PublishError> {
        self.publish(p, None).await
    }
}

#[tokio::test]
async fn publish_costs_a_constant_number_of_requests() {
    let mut counts = Vec::new();
    for (parts, files) in [(1, 1), (10, 10), (1000, 20)] {
        let rec = RecordingStore::new(Arc::new(InMemory::new()));
        let store: Arc<dyn ObjectStore> = rec.clone();
        let p = publisher(&store);
        let first: Vec<_> = (0..parts)
            .map(|i| partition(&format!("d={i}"), "r1", files))
            .collect();
        assert_eq!(
            p.publish_now(&proposal("r1", first)).await.unwrap(),
            PublishOutcome::Published { version: 1 }
        );
        let first_count = rec.requests().len();
        rec.clear();
        let second: Vec<_> = (0..parts)
            .map(|i| partition(&format!("d={i}"), "r2", files))
            .collect();
        assert_eq!(
            p.publish_now(&proposal("r2", second)).await.unwrap(),
            PublishOutcome::Published { version: 2 }
        );
        let ops: Vec<_> = rec
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.op, r.path))
            .collect();
        counts.push((first_count, ops.len()));
        assert_eq!(
            ops,
            [
                "get _wap/current",
                "get _wap/manifests/00000000000000000001.json",
                "put _wap/manifests/00000000000000000002.json",
                "put _wap/current",
            ]
        );
    }
    assert!(counts.iter().all(|c| *c == counts[0]), "{counts:?}");
    assert_eq!(counts[0], (3, 4));
}

#[tokio::test]
async fn on_the_local_filesystem_publish_is_four_requests_too() {
    let dir = tempfile::tempdir().unwrap();
    let location =
        wap::store::Location::parse(&dir.path().display().to_string(), &Default::default())
            .unwrap();
    assert!(
        !location.compare_and_swap,
        "no compare-and-swap on a local path"
    );
    assert!(
        wap::store::Location::parse("memory://x", &Default::default())
            .unwrap()
            .compare_and_swap
    );
    let rec = RecordingStore::new(location.scoped().unwrap());
    let store: Arc<dyn ObjectStore> = rec.clone();
    let options = PublishOptions {
        compare_and_swap: location.compare_and_swap,
        ..Default::default()
    };
    let p = Publisher::new(Arc::clone(&store), options);
    for (i, run) in ["r1", "r2", "r3"].iter().enumerate() {
        rec.clear();
        let out = p
            .publish_now(&proposal(run, vec![partition("d=1", run, 3)]))
            .await
            .unwrap();
        assert_eq!(
            out,
            PublishOutcome::Published {
                version: i as u64 + 1
            }
        );
        let n = rec.requests().len();
        assert!(n <= 4, "{run}: {n} requests: {:?}", rec.requests());
        let pointer = versions::read_pointer(&store).await.unwrap().unwrap();
        assert_eq!(pointer.pointer.version, i as u64 + 1, "the pointer moved");
    }
}

#[tokio::test]
async fn concurrent_publishers_of_different_partitions_all_land() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    publisher(&store)
        .publish_now(&proposal("base", vec![partition("d=base", "base", 1)]))
        .await
        .unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        set.spawn(async move {
            let run = format!("run{i}");
            publisher(&store)
                .publish(
                    &proposal(&run, vec![partition(&format!("d={i}"), &run, 2)]),
                    Some(1),
                )
                .await
        });
    }
    let mut versions_won = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.unwrap().unwrap() {
            PublishOutcome::Published { version } => versions_won.push(version),
            other => panic!("{other:?}"),
        }
    }
    versions_won.sort();
    assert_eq!(
        versions_won,
        (2..=9).collect::<Vec<_>>(),
        "one writer per version"
    );
    let current = versions::current(&store).await.unwrap().unwrap();
    assert_eq!(current.version, 9);
    assert_eq!(current.partitions.len(), 9, "no lost update");
}

#[tokio::test]
async fn publishers_of_the_same_partition_one_wins_the_other_conflicts() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    publisher(&store)
        .publish_now(&proposal("base", vec![partition("d=1", "base", 1)]))
        .await
        .unwrap();
    let a = publisher(&store);
    let b = publisher(&store);
    let pa = proposal(
        "a",
        vec![partition("d=1", "a", 1), partition("d=2", "a", 1)],
    );
    let pb = proposal("b", vec![partition("d=1", "b", 1)]);
    let (ra, rb) = tokio::join!(a.publish(&pa, Some(1)), b.publish(&pb, Some(1)));
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) => (("a", w), l),
        (Err(l), Ok(w)) => (("b", w), l),
        other => panic!("expected one winner: {other:?}"),
    };
    assert_eq!(won.1, PublishOutcome::Published { version: 2 });
    assert!(
        matches!(lost, PublishError::Conflict { version: 2, .. }),
        "{lost}"
    );
    assert!(lost.is_conflict());
    let msg = lost.to_string();
    assert!(msg.contains("d=1") && msg.contains("help:"), "{msg}");
    let current = versions::current(&store).await.unwrap().unwrap();
    assert_eq!(current.version, 2);
    assert_eq!(current.change.run_id, won.0);
}

#[tokio::test]
async fn a_crash_between_commit_and_pointer_swap_is_found_by_readers_and_rolled_forward() {
    let rec = RecordingStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = rec.clone();
    publisher(&store)
        .publish_now(&proposal("r1", vec![partition("d=1", "r1", 1)]))
        .await
        .unwrap();
    rec.fail_next("put", "_wap/current", FaultKind::Before);
    let out = publisher(&store)
        .publish_now(&proposal("r2", vec![partition("d=2", "r2", 1)]))
        .await
        .unwrap();
    assert_eq!(out, PublishOutcome::Published { version: 2 });
    let pointer = versions::read_pointer(&store).await.unwrap().unwrap();
    assert_eq!(pointer.pointer.version, 1, "the pointer was left behind");
    let current = versions::current(&store).await.unwrap().unwrap();
    assert_eq!(current.version, 2, "readers probe past the pointer");
    assert_eq!(current.partitions.len(), 2);

    publisher(&store)
        .publish_now(&proposal("r3", vec![partition("d=3", "r3", 1)]))
        .await
        .unwrap();
    let pointer = versions::read_pointer(&store).await.unwrap().unwrap();
    assert_eq!(
        pointer.pointer.version, 3,
        "the next writer moved it forward"
    );
    assert_eq!(
        versions::current(&store)
            .await
            .unwrap()
            .unwrap()
            .partitions
            .len(),
        3
    );
}

#[tokio::test]
async fn an_ambiguous_commit_is_recognised_as_ours_on_retry() {
    let rec = RecordingStore::new(Arc::new(InMemory::new()));
    let store: Arc<dyn ObjectStore> = rec.clone();
    // The manifest write lands, but the caller sees an error.
    rec.fail_next("put", "_wap/manifests/", FaultKind::After);
    let err = publisher(&store)
        .publish_now(&proposal("r1", vec![partition("d=1", "r1", 1)]))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("commit manifest _wap/manifests/00000000000000000001.json"),
        "{err}"
    );
    // The committed version is visible: readers never see a partial one.
    assert_eq!(versions::current(&store).await.unwrap().unwrap().version, 1);
    // The retry converges to one clean publish: no second version.
    let out = publisher(&store)
        .publish_now(&proposal("r1", vec![partition("d=1", "r1", 1)]))
        .await
        .unwrap();
    assert_eq!(out, PublishOutcome::Published { version: 1 });
    assert_eq!(versions::list_versions(&store).await.unwrap(), [1]);
    assert_eq!(
        versions::read_pointer(&store)
            .await
            .unwrap()
            .unwrap()
            .pointer
            .version,
        1
    );
}

#[tokio::test]
async fn incompatible_schema_changes_are_refused() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    publisher(&store)
        .publish_now(&proposal("r1", vec![partition("d=1", "r1", 1)]))
        .await
        .unwrap();
    let Proposal::Replace { schema, .. } = proposal("x", vec![]) else {
        unreachable!()
    };
    let mut retyped = proposal("r2", vec![partition("d=2", "r2", 1)]);
    if let Proposal::Replace { schema: s, .. } = &mut retyped {
        *s = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            schema.field(1).clone(),
        ]);
    }
    let err = publisher(&store).publish(&retyped, None).await.unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("`id` would change type"), "{err}");
    assert_eq!(versions::latest_version(&store).await.unwrap(), 1);
}

#[tokio::test]
async fn doctor_flags_a_store_that_ignores_conditional_writes() {
    let rec = RecordingStore::new(Arc::new(InMemory::new()));
    rec.set_conditions(Conditions::Ignore);
    let store: Arc<dyn ObjectStore> = rec.clone();
    let d = wap::doctor::diagnose(&store, "lying").await;
    assert!(!d.safe, "{d:?}");
    let verdicts: Vec<_> = d.checks.iter().map(|c| (c.name, c.verdict)).collect();
    use wap::doctor::Verdict::*;
    assert_eq!(
        verdicts,
        [
            ("reachable", Pass),
            ("put_if_absent", Fail),
            ("if_match_stale", Fail),
            ("if_match_missing", Unsupported),
            ("cleanup", Pass),
        ]
    );
    assert!(d.checks[1].detail.contains("OVERWROTE"));
}

#[tokio::test]
async fn publishing_to_a_store_without_put_if_absent_is_refused() {
    let rec = RecordingStore::new(Arc::new(InMemory::new()));
    rec.set_conditions(Conditions::Unsupported);
    let store: Arc<dyn ObjectStore> = rec.clone();
    let err = publisher(&store)
        .publish_now(&proposal("r1", vec![partition("d=1", "r1", 1)]))
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("wap doctor"), "{err}");
    assert_eq!(wap::Error::from(err).exit_code(), 2);
    assert!(versions::list_versions(&store).await.unwrap().is_empty());
}

fn merge_proposal(
    run: &str,
    partitions: Vec<Partition>,
    read: &[&str],
    any_partition: bool,
    watermark: &str,
) -> Proposal {
    let Proposal::Replace {
        run_id,
        logical_date,
        table,
        schema,
        partition_by,
        key,
        partitions,
        audits,
        ..
    } = proposal(run, partitions)
    else {
        unreachable!("proposal() is a Replace")
    };
    Proposal::Replace {
        run_id,
        logical_date,
        table,
        schema,
        partition_by,
        key,
        partitions,
        audits,
        merge: Some(wap::publish::MergeChange {
            removed: Vec::new(),
            read: read.iter().map(|s| s.to_string()).collect(),
            any_partition,
            watermarks: [("incremental.ts".to_string(), watermark.to_string())].into(),
        }),
        yield_to: Default::default(),
    }
}

#[tokio::test]
async fn a_merge_conflicts_on_what_it_read_and_rebases_when_disjoint() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let p = publisher(&store);
    p.publish_now(&proposal("base", vec![partition("d=1", "base", 1)]))
        .await
        .unwrap();
    // Another writer replaces d=1 (version 2) while a merge based on version 1 runs.
    p.publish(
        &merge_proposal(
            "other",
            vec![partition("d=1", "other", 1)],
            &["d=1"],
            false,
            "2024-01-01T12:00:00",
        ),
        Some(1),
    )
    .await
    .unwrap();
    // The merge wrote only d=2 but read d=1 to match keys: a conflict naming d=1.
    let lost = p
        .publish(
            &merge_proposal(
                "m",
                vec![partition("d=2", "m", 1)],
                &["d=1"],
                false,
                "2024-01-01T10:00:00",
            ),
            Some(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(lost, PublishError::Conflict { version: 2, .. }),
        "{lost}"
    );
    assert!(lost.to_string().contains("d=1"), "{lost}");
    // A key that may sit in any partition: every intervening change conflicts.
    let any = p
        .publish(
            &merge_proposal(
                "m2",
                vec![partition("d=3", "m2", 1)],
                &[],
                true,
                "2024-01-01T10:00:00",
            ),
            Some(1),
        )
        .await
        .unwrap_err();
    assert!(any.is_conflict(), "{any}");
    // Disjoint: rebased, and the watermark stays the greater of the two.
    let won = p
        .publish(
            &merge_proposal(
                "m3",
                vec![partition("d=4", "m3", 1)],
                &["d=4"],
                false,
                "2024-01-01T10:00:00",
            ),
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(won, PublishOutcome::Published { version: 3 });
    let current = versions::current(&store).await.unwrap().unwrap();
    assert_eq!(current.watermarks["incremental.ts"], "2024-01-01T12:00:00");
    assert!(current.partitions.contains_key("d=1") && current.partitions.contains_key("d=4"));
}
