//! `on_publish:`: a command run once per published run, after the version is current.
//!
//! ```text
//!  run published (or found published by a re-run) ─► on_publish.json there? ──yes──► done
//!                                                          │ no
//!                                                          ▼
//!                        run the command (WAP_* env, run JSON on stdin) ─► exit 0? ──► record it
//!                                                          │ no
//!                                                          ▼
//!                        "published, but on_publish failed" (exit 1); the next re-run retries
//! ```
//!
//! The record (`_wap/runs/<run_id>/on_publish.json`) is written after the command succeeded, so
//! a crash between the two runs the command again: at least once, never for an unpublished run.
//! The command gets the run id to deduplicate on its side.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::layout;

/// Errors of the `on_publish` command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    #[error("on_publish failed: unable to start `{program}` (in {dir}): {source}")]
    Spawn {
        program: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("on_publish failed: `{program}` {status}")]
    Failed { program: String, status: String },
    #[error("on_publish failed: unable to {phase} {path}: {source}")]
    Record {
        phase: &'static str,
        path: String,
        source: object_store::Error,
    },
}

/// What the record of a run's successful command holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRecord {
    /// The version the run was published in (or found in, by a re-run).
    pub version: u64,
    pub ran_at: String,
}

/// What became of a run's `on_publish` command (in the run's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookOutcome {
    /// True when the command ran in this process (false: an earlier run's record was found).
    pub ran: bool,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The environment a command gets, besides the process's own.
#[derive(Debug, Clone)]
pub struct HookEnv<'a> {
    pub run_id: &'a str,
    pub version: u64,
    pub table: &'a str,
    pub logical_date: &'a str,
    pub status: &'a str,
}

/// The command of a job (`on_publish:`), run in the job file's folder.
#[derive(Debug, Clone)]
pub struct Hook {
    pub argv: Vec<String>,
    pub dir: PathBuf,
}

impl Hook {
    /// Runs the command for a published run unless its record says it ran: `Ok(true)` when it
    /// ran now and succeeded, `Ok(false)` when it had run before.
    pub async fn ensure(
        &self,
        store: &Arc<dyn ObjectStore>,
        env: &HookEnv<'_>,
        stdin: &[u8],
    ) -> Result<bool, HookError> {
        let path = layout::hook_record_path(env.run_id);
        match store.head(&path).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(HookError::Record {
                    phase: "check",
                    path: path.to_string(),
                    source,
                });
            }
        }
        self.run(env, stdin).await?;
        let record = HookRecord {
            version: env.version,
            ran_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let body = serde_json::to_vec_pretty(&record).expect("serializable");
        store
            .put(&path, body.into())
            .await
            .map_err(|source| HookError::Record {
                phase: "record",
                path: path.to_string(),
                source,
            })?;
        Ok(true)
    }

    /// Runs the command once; its output goes to stderr (stdout belongs to `--json`).
    async fn run(&self, env: &HookEnv<'_>, stdin: &[u8]) -> Result<(), HookError> {
        let program = self.argv[0].clone();
        let spawn_err = |source| HookError::Spawn {
            program: program.clone(),
            dir: self.dir.display().to_string(),
            source,
        };
        let mut child = tokio::process::Command::new(&program)
            .args(&self.argv[1..])
            .current_dir(dir_or_dot(&self.dir))
            .env("WAP_RUN_ID", env.run_id)
            .env("WAP_VERSION", env.version.to_string())
            .env("WAP_TABLE", env.table)
            .env("WAP_LOGICAL_DATE", env.logical_date)
            .env("WAP_STATUS", env.status)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut input) = child.stdin.take() {
            // A command that does not read its stdin closes it early: not an error.
            let _ = input.write_all(stdin).await;
            drop(input);
        }
        let output = child.wait_with_output().await.map_err(spawn_err)?;
        crate::progress::write_above(&output.stdout);
        crate::progress::write_above(&output.stderr);
        if output.status.success() {
            Ok(())
        } else {
            Err(HookError::Failed {
                program,
                status: match output.status.code() {
                    Some(c) => format!("exited with status {c}"),
                    None => "was killed by a signal".to_string(),
                },
            })
        }
    }
}

fn dir_or_dot(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}
