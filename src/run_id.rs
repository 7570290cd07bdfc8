//! Run ids: a hash of what determines a run's output, never a uuid or a clock. Same inputs,
//! same run id, so a re-run finds its own work (staged files, report, published partitions).
//!
//! What each kind of run hashes, in this order (each field as its name, its length as a
//! little-endian `u64` and its bytes, for a job run; as one text line otherwise):
//!
//! | run                      | inputs                                                        | id                    |
//! |--------------------------|---------------------------------------------------------------|-----------------------|
//! | `wap run` / `wap audit`  | job name, job file text, each rule file's text (as written,   | 24 hex digits         |
//! |                          | before `vars` are filled), logical date, and for each source  |                       |
//! |                          | object in listing order: its path, size and ETag (its last    |                       |
//! |                          | modification time in nanoseconds where the store has no ETag),|                       |
//! |                          | then for an incremental job the watermark it reads from       |                       |
//! | `wap audit --version N`  | the version, each rule file's text                            | `audit-vN-` + 12 hex  |
//! | `wap rollback --to N`    | the target version, the version it rolls back from            | `rollback-` + 16 hex  |
//! | `wap backfill --atomic`  | the run ids of the dates it publishes, in date order          | `backfill-` + 16 hex  |
//!
//! The job file's text is hashed without its top-level `on_publish:` entry
//! ([`crate::conf::run_text`]): a notification is not an input of the data.
//!
//! The ids of existing tables depend on these exact bytes: changing what is hashed makes every
//! re-run of an old run look new (it would publish again instead of finding its own work).

use object_store::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::conf::JobConf;
use crate::conf::rules::RuleFile;
use crate::manifest::hex;

/// Run ids of `wap audit --version N` start with this (then `N-<hash>`).
const VERSION_AUDIT_PREFIX: &str = "audit-v";
/// Run ids of rollbacks start with this.
const ROLLBACK_PREFIX: &str = "rollback-";
/// Run ids of atomic backfills start with this.
const BACKFILL_PREFIX: &str = "backfill-";

/// Everything a run id is derived from, by kind of run.
#[derive(Debug, Clone, Copy)]
pub enum RunInputs<'a> {
    /// A job run for one logical date (`wap run`, `wap audit`).
    Job {
        conf: &'a JobConf,
        date: &'a str,
        /// The source objects, in listing order.
        source: &'a [ObjectMeta],
        /// Incremental jobs: the watermark the run reads from (hashed only when there is one,
        /// so the ids of other jobs stay as they were).
        watermark: Option<&'a str>,
    },
    /// The rules run over a published version (`wap audit --version N`).
    VersionAudit {
        version: u64,
        rule_files: &'a [RuleFile],
    },
    /// A rollback publishing the content of version `to` on top of version `from`.
    Rollback { to: u64, from: u64 },
    /// An atomic backfill publishing the runs of several dates as one version.
    Backfill { runs: &'a [String] },
}

/// The run id of `inputs`.
pub fn run_id(inputs: RunInputs<'_>) -> String {
    match inputs {
        RunInputs::Job {
            conf,
            date,
            source,
            watermark,
        } => {
            let mut h = Sha256::new();
            let mut field = |name: &str, value: &[u8]| {
                h.update(name.as_bytes());
                h.update((value.len() as u64).to_le_bytes());
                h.update(value);
            };
            field("wap-run", b"1");
            field("name", conf.name.as_bytes());
            field("conf", crate::conf::run_text(&conf.text).as_bytes());
            for f in conf.rules.files() {
                field("rules", f.text.as_bytes());
            }
            field("date", date.as_bytes());
            for o in source {
                field("object", o.location.as_ref().as_bytes());
                field("size", &o.size.to_le_bytes());
                let tag = o.e_tag.clone().unwrap_or_else(|| {
                    o.last_modified
                        .timestamp_nanos_opt()
                        .unwrap_or(0)
                        .to_string()
                });
                field("etag", tag.as_bytes());
            }
            if let Some(w) = watermark {
                field("watermark", w.as_bytes());
            }
            hex(&h.finalize()[..12])
        }
        RunInputs::VersionAudit {
            version,
            rule_files,
        } => {
            let mut h = Sha256::new();
            h.update(format!("wap-audit-version/1 v={version}\n"));
            for f in rule_files {
                h.update(f.text.as_bytes());
            }
            format!(
                "{VERSION_AUDIT_PREFIX}{version}-{}",
                hex(&h.finalize()[..6])
            )
        }
        RunInputs::Rollback { to, from } => {
            let mut h = Sha256::new();
            h.update(format!("wap-rollback/1 to={to} from={from}"));
            format!("{ROLLBACK_PREFIX}{}", hex(&h.finalize()[..8]))
        }
        RunInputs::Backfill { runs } => {
            let mut h = Sha256::new();
            h.update("wap-backfill/1\n");
            for r in runs {
                h.update(format!("{r}\n"));
            }
            format!("{BACKFILL_PREFIX}{}", hex(&h.finalize()[..8]))
        }
    }
}

/// True for the run id of a `wap audit --version N`.
pub fn is_version_audit(run_id: &str) -> bool {
    run_id.starts_with(VERSION_AUDIT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;
    use std::path::Path as FsPath;

    const JOB: &str = "name: orders\ntable: memory://orders\nkey: [id]\nsource:\n  format: csv\n  path: memory://src/{date}/\n";

    fn conf(text: &str) -> JobConf {
        JobConf::from_text(FsPath::new("/jobs/orders.yaml"), text.to_string()).unwrap()
    }

    fn object(path: &str, size: u64, e_tag: Option<&str>, nanos: i64) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(path),
            last_modified: chrono::DateTime::from_timestamp_nanos(nanos),
            size,
            e_tag: e_tag.map(str::to_string),
            version: None,
        }
    }

    fn job_id(conf: &JobConf, date: &str, source: &[ObjectMeta]) -> String {
        run_id(RunInputs::Job {
            conf,
            date,
            source,
            watermark: None,
        })
    }

    #[test]
    fn the_ids_of_existing_runs_stay_the_same() {
        // Pinned: the same inputs must give these ids in every build (see the module doc).
        let c = conf(JOB);
        let source = [
            object("src/2024-01-02/a.csv", 120, Some("\"e1\""), 0),
            object("src/2024-01-02/b.csv", 7, None, 1_700_000_000_123_456_789),
        ];
        assert_eq!(
            job_id(&c, "2024-01-02", &source),
            "0fb62578962437258d1df25b"
        );
        assert_eq!(
            run_id(RunInputs::VersionAudit {
                version: 3,
                rule_files: c.rules.files()
            }),
            "audit-v3-aa28bd3071ba"
        );
        assert_eq!(
            run_id(RunInputs::Rollback { to: 2, from: 5 }),
            "rollback-e294588ec902b7c1"
        );
    }

    #[test]
    fn on_publish_is_not_an_input_of_the_data() {
        let source = [object("src/d/a.csv", 10, Some("e1"), 0)];
        let base = job_id(&conf(JOB), "2024-01-02", &source);
        for hook in [
            "on_publish: [notify, --to, data]\n",
            "on_publish:\n  - notify\n  - --to\n",
            "on_publish:\n- notify\n\n- x\n",
        ] {
            let at_end = conf(&format!("{JOB}{hook}"));
            assert_eq!(job_id(&at_end, "2024-01-02", &source), base, "{hook}");
            assert!(at_end.on_publish.is_some());
            let first = conf(&format!("{hook}{JOB}"));
            assert_eq!(job_id(&first, "2024-01-02", &source), base, "{hook}");
        }
        // Everything else still counts.
        let other = conf(&format!("{JOB}on_publish: [notify]\naudit_samples: 3\n"));
        assert_ne!(job_id(&other, "2024-01-02", &source), base);
        let runs = ["a".to_string(), "b".to_string()];
        let id = run_id(RunInputs::Backfill { runs: &runs });
        assert!(id.starts_with("backfill-") && id.len() == 25, "{id}");
        assert_ne!(id, run_id(RunInputs::Backfill { runs: &runs[..1] }));
    }

    #[test]
    fn every_job_input_changes_the_id() {
        let c = conf(JOB);
        let source = [object("src/d/a.csv", 10, Some("e1"), 0)];
        let base = job_id(&c, "2024-01-02", &source);
        assert_eq!(base, job_id(&c, "2024-01-02", &source), "deterministic");
        assert_eq!(base.len(), 24);
        let renamed = conf(&JOB.replace("name: orders", "name: orders2"));
        let edited = conf(&format!("{JOB}# a comment\n"));
        let changed = [
            job_id(&renamed, "2024-01-02", &source),
            job_id(&edited, "2024-01-02", &source),
            job_id(&c, "2024-01-03", &source),
            job_id(
                &c,
                "2024-01-02",
                &[object("src/d/b.csv", 10, Some("e1"), 0)],
            ),
            job_id(
                &c,
                "2024-01-02",
                &[object("src/d/a.csv", 11, Some("e1"), 0)],
            ),
            job_id(
                &c,
                "2024-01-02",
                &[object("src/d/a.csv", 10, Some("e2"), 0)],
            ),
            job_id(&c, "2024-01-02", &[]),
            job_id(&c, "2024-01-02", &[source[0].clone(), source[0].clone()]),
        ];
        for (i, id) in changed.iter().enumerate() {
            assert_ne!(id, &base, "input {i} did not change the id");
        }
        // Without an ETag the modification time stands in for it.
        let t1 = job_id(&c, "d", &[object("a", 1, None, 1)]);
        let t2 = job_id(&c, "d", &[object("a", 1, None, 2)]);
        assert_ne!(t1, t2);
        // With one, the time is not an input.
        let e1 = job_id(&c, "d", &[object("a", 1, Some("e"), 1)]);
        let e2 = job_id(&c, "d", &[object("a", 1, Some("e"), 2)]);
        assert_eq!(e1, e2);
    }

    #[test]
    fn rule_files_are_inputs_of_runs_and_version_audits() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("r.yaml");
        std::fs::write(&rules, "rules:\n  - name: a\n    not_null: [id]\n").unwrap();
        let text = format!("{JOB}audits: [{}]\n", rules.display());
        let job = dir.path().join("job.yaml");
        let a = JobConf::from_text(&job, text.clone()).unwrap();
        std::fs::write(&rules, "rules:\n  - name: a\n    not_null: [id, x]\n").unwrap();
        let b = JobConf::from_text(&job, text).unwrap();
        assert_ne!(job_id(&a, "d", &[]), job_id(&b, "d", &[]));
        let audit = |c: &JobConf, version| {
            run_id(RunInputs::VersionAudit {
                version,
                rule_files: c.rules.files(),
            })
        };
        assert_ne!(audit(&a, 1), audit(&b, 1));
        assert_ne!(audit(&a, 1), audit(&a, 2));
        assert!(audit(&a, 12).starts_with("audit-v12-"));
        assert!(is_version_audit(&audit(&a, 1)));
        assert!(!is_version_audit(&job_id(&a, "d", &[])));
    }

    #[test]
    fn rollbacks_differ_by_target_and_base() {
        let id = |to, from| run_id(RunInputs::Rollback { to, from });
        assert_ne!(id(1, 3), id(2, 3));
        assert_ne!(id(1, 3), id(1, 4));
        assert!(id(1, 3).starts_with("rollback-") && id(1, 3).len() == 9 + 16);
    }
}
