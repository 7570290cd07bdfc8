//! `wap doctor`: does this store support the conditional writes publishing relies on?
//!
//! Publishing is safe when creating a manifest with put-if-absent refuses an existing key (the
//! commit point). Moving the pointer uses compare-and-swap on its ETag where the store has it;
//! a store that has no compare-and-swap is fine (the pointer is a hint, readers probe past it),
//! but one that *accepts* a stale or missing ETag is lying about conditional writes and is not.
//! Probes live under `_wap/doctor/` and are deleted afterwards.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;

/// Verdict on one capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Not supported, and publishing does not need it.
    Unsupported,
    Fail,
}

/// One checked capability.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// All checks on one store.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub location: String,
    pub checks: Vec<Check>,
    /// True when publishing to this store keeps its guarantees.
    pub safe: bool,
}

fn put(mode: PutMode) -> PutOptions {
    PutOptions {
        mode,
        ..Default::default()
    }
}

fn version(r: &object_store::PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: r.e_tag.clone(),
        version: r.version.clone(),
    }
}

impl crate::job::Job {
    /// `wap doctor` on the job's table: see [`diagnose`]; with `formats: [delta]` also whether
    /// the Delta log agrees with the manifests. `repair`: first write what is missing.
    pub async fn doctor(&self, repair: bool) -> Diagnosis {
        let mut diagnosis = diagnose(self.store(), &self.conf().table).await;
        if self
            .conf()
            .formats
            .contains(&crate::conf::TableFormat::Delta)
        {
            let check = self.delta_check(repair).await;
            diagnosis.safe &= check.verdict != Verdict::Fail;
            diagnosis.checks.push(check);
        }
        if let Some(log) = self.iceberg() {
            let check = self.iceberg_check(&log, repair).await;
            diagnosis.safe &= check.verdict != Verdict::Fail;
            diagnosis.checks.push(check);
        }
        diagnosis
    }

    /// The newest committed version and, with `repair`, how many missing projections were
    /// written first; or why not.
    async fn latest_repaired(&self, repair: bool) -> Result<(u64, u64), String> {
        let latest = crate::versions::latest_version(self.store())
            .await
            .map_err(|e| format!("cannot read the versions: {e}"))?;
        let repaired = match repair {
            true => self
                .sync_formats(latest)
                .await
                .map_err(|e| format!("repair failed: {e}"))?,
            false => 0,
        };
        Ok((latest, repaired))
    }

    async fn iceberg_check(&self, log: &crate::iceberg::IcebergLog, repair: bool) -> Check {
        let check = |verdict, detail: String| Check {
            name: "iceberg metadata",
            verdict,
            detail,
        };
        let (latest, repaired) = match self.latest_repaired(repair).await {
            Ok(r) => r,
            Err(detail) => return check(Verdict::Fail, detail),
        };
        let listing = match log.list().await {
            Ok(l) => l,
            Err(e) => return check(Verdict::Fail, e.to_string()),
        };
        let found = &listing.versions;
        if found.is_empty() && latest > 0 {
            return check(
                Verdict::Fail,
                format!(
                    "no Iceberg metadata yet for wap version {latest}; run `wap doctor --repair` \
                     or the next run to write it"
                ),
            );
        }
        let beyond: Vec<u64> = found.range(latest + 1..).copied().collect();
        if !beyond.is_empty() {
            return check(
                Verdict::Fail,
                format!(
                    "Iceberg metadata for version(s) {beyond:?} exists past wap version {latest}: \
                     another writer writes into metadata/; the next publish refuses until it is \
                     moved away"
                ),
            );
        }
        let first = found.first().copied().unwrap_or(latest);
        let missing: Vec<u64> = (first..=latest).filter(|v| !found.contains(v)).collect();
        if !missing.is_empty() {
            return check(
                Verdict::Fail,
                format!(
                    "no Iceberg metadata yet for wap version(s) {missing:?} (a crash after their \
                     commit); run `wap doctor --repair` or the next run to write them"
                ),
            );
        }
        let catalog = match &self.conf().iceberg_catalog {
            None => String::new(),
            Some(c) => match c.current().await {
                Ok(Some(at)) if at == log.metadata_location(latest) => {
                    format!("; catalog {} names v{latest}", c.identifier())
                }
                Ok(other) => {
                    return check(
                        Verdict::Fail,
                        format!(
                            "catalog {} names {:?}, not {}; run `wap doctor --repair` or the \
                             next run to move it",
                            c.identifier(),
                            other,
                            log.metadata_location(latest)
                        ),
                    );
                }
                Err(e) => return check(Verdict::Fail, e.to_string()),
            },
        };
        let fixed = if repaired > 0 {
            format!("; wrote {repaired} missing version(s)")
        } else {
            String::new()
        };
        check(
            Verdict::Pass,
            format!("Iceberg metadata for wap versions {first}..={latest}{catalog}{fixed}"),
        )
    }

    async fn delta_check(&self, repair: bool) -> Check {
        let check = |verdict, detail: String| Check {
            name: "delta log",
            verdict,
            detail,
        };
        let (latest, repaired) = match self.latest_repaired(repair).await {
            Ok(r) => r,
            Err(detail) => return check(Verdict::Fail, detail),
        };
        let log = crate::delta::DeltaLog::new(Arc::clone(self.store()));
        let listing = match log.list(None).await {
            Ok(l) => l,
            Err(e) => return check(Verdict::Fail, e.to_string()),
        };
        if listing.commits.is_empty() && latest > 0 {
            return check(
                Verdict::Fail,
                format!(
                    "no Delta log yet for wap version {latest}; run `wap doctor --repair` or the \
                     next run to write it"
                ),
            );
        }
        let first = listing.commits.first().copied().unwrap_or(latest);
        let missing: Vec<u64> = (first..latest)
            .filter(|d| !listing.commits.contains(d))
            .map(|d| d + 1)
            .collect();
        let beyond: Vec<u64> = listing.commits.range(latest..).copied().collect();
        if !beyond.is_empty() {
            return check(
                Verdict::Fail,
                format!(
                    "Delta commit(s) {beyond:?} exist past wap version {latest}: another writer writes into _delta_log; the next publish refuses until they are moved away"
                ),
            );
        }
        if !missing.is_empty() {
            return check(
                Verdict::Fail,
                format!(
                    "no Delta commit yet for wap version(s) {missing:?} (a crash after their commit); run `wap doctor --repair` or the next run to write them"
                ),
            );
        }
        let fixed = if repaired > 0 {
            format!("; wrote {repaired} missing commit(s)")
        } else {
            String::new()
        };
        check(
            Verdict::Pass,
            format!(
                "Delta versions {}..={} match wap versions {}..={latest}, {} checkpoint(s){fixed}",
                first,
                latest.saturating_sub(1),
                first + 1,
                listing.checkpoints.len()
            ),
        )
    }
}

/// Runs every check on `store` (rooted at the table) and cleans up after itself.
pub async fn diagnose(store: &Arc<dyn ObjectStore>, location: &str) -> Diagnosis {
    let dir = crate::layout::doctor_folder(std::process::id());
    let probe = Path::from(format!("{dir}/object"));
    let missing = Path::from(format!("{dir}/missing"));
    let mut checks = Vec::new();
    let check = |name, verdict, detail: String| Check {
        name,
        verdict,
        detail,
    };

    // 1. Reachable: write, read back.
    let first = match store.put(&probe, PutPayload::from_static(b"probe 1")).await {
        Ok(r) => r,
        Err(e) => {
            checks.push(check(
                "reachable",
                Verdict::Fail,
                format!("cannot write {probe}: {e}"),
            ));
            return Diagnosis {
                location: location.to_string(),
                checks,
                safe: false,
            };
        }
    };
    let read = store.get(&probe).await;
    let reachable = match read {
        Ok(g) => g
            .bytes()
            .await
            .map(|b| &b[..] == b"probe 1")
            .unwrap_or(false),
        Err(_) => false,
    };
    checks.push(check(
        "reachable",
        if reachable {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        format!("put and get of {probe}"),
    ));

    // 2. Put-if-absent refuses an existing key.
    let create = store
        .put_opts(
            &probe,
            PutPayload::from_static(b"probe 2"),
            put(PutMode::Create),
        )
        .await;
    let (verdict, detail) = match create {
        Err(object_store::Error::AlreadyExists { .. }) => (
            Verdict::Pass,
            "creating an existing key was refused".to_string(),
        ),
        Ok(_) => (
            Verdict::Fail,
            "creating an existing key OVERWROTE it".to_string(),
        ),
        Err(object_store::Error::NotImplemented { .. }) => (
            Verdict::Fail,
            "the store does not support put-if-absent".to_string(),
        ),
        Err(e) => (Verdict::Fail, format!("unexpected answer: {e}")),
    };
    checks.push(check("put_if_absent", verdict, detail));

    // 3. If-Match refuses a stale ETag: overwrite once, then update against the first ETag.
    let stale = version(&first);
    let (verdict, detail) = match store.put(&probe, PutPayload::from_static(b"probe 3")).await {
        Err(e) => (Verdict::Fail, format!("cannot overwrite {probe}: {e}")),
        Ok(_) if stale.e_tag.is_none() && stale.version.is_none() => (
            Verdict::Unsupported,
            "the store returns no ETag; the pointer is moved by atomic overwrite".to_string(),
        ),
        Ok(_) => match store
            .put_opts(&probe, PutPayload::from_static(b"probe 4"), put(PutMode::Update(stale.clone())))
            .await
        {
            Err(object_store::Error::Precondition { .. }) => {
                (Verdict::Pass, "an update against a stale ETag was refused".to_string())
            }
            Err(object_store::Error::NotImplemented { .. }) => (
                Verdict::Unsupported,
                "no compare-and-swap; the pointer is moved by atomic overwrite and readers probe past it"
                    .to_string(),
            ),
            Ok(_) => (Verdict::Fail, "an update against a stale ETag was ACCEPTED".to_string()),
            Err(e) => (Verdict::Fail, format!("unexpected answer: {e}")),
        },
    };
    let cas_supported = verdict == Verdict::Pass;
    checks.push(check("if_match_stale", verdict, detail));

    // 4. If-Match refuses a missing key (some MinIO releases created it).
    let (verdict, detail) = if !cas_supported {
        (
            Verdict::Unsupported,
            "skipped: no compare-and-swap".to_string(),
        )
    } else {
        match store
            .put_opts(
                &missing,
                PutPayload::from_static(b"probe 5"),
                put(PutMode::Update(stale)),
            )
            .await
        {
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => (
                Verdict::Pass,
                "an update of a missing key was refused".to_string(),
            ),
            Ok(_) => (
                Verdict::Fail,
                "an update of a missing key CREATED it".to_string(),
            ),
            Err(e) => (Verdict::Fail, format!("unexpected answer: {e}")),
        }
    };
    checks.push(check("if_match_missing", verdict, detail));

    // 5. Clean up.
    let mut leftovers = Vec::new();
    for p in [&probe, &missing] {
        match store.delete(p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => leftovers.push(format!("{p}: {e}")),
        }
    }
    checks.push(if leftovers.is_empty() {
        check("cleanup", Verdict::Pass, format!("removed {dir}/"))
    } else {
        check(
            "cleanup",
            Verdict::Fail,
            format!("could not remove {}", leftovers.join(", ")),
        )
    });

    let safe = checks
        .iter()
        .filter(|c| c.name != "cleanup")
        .all(|c| c.verdict != Verdict::Fail);
    Diagnosis {
        location: location.to_string(),
        checks,
        safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn memory_supports_everything() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let d = diagnose(&store, "memory://x").await;
        assert!(d.safe, "{d:?}");
        assert!(d.checks.iter().all(|c| c.verdict == Verdict::Pass), "{d:?}");
        assert_eq!(store.list(None).count().await, 0, "probes are cleaned up");
    }

    #[tokio::test]
    async fn local_filesystem_is_safe_without_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let d = diagnose(&store, "file").await;
        assert!(d.safe, "{d:?}");
        let verdicts: Vec<_> = d.checks.iter().map(|c| (c.name, c.verdict)).collect();
        assert_eq!(
            verdicts,
            [
                ("reachable", Verdict::Pass),
                ("put_if_absent", Verdict::Pass),
                ("if_match_stale", Verdict::Unsupported),
                ("if_match_missing", Verdict::Unsupported),
                ("cleanup", Verdict::Pass),
            ]
        );
    }
}
