//! `wap`: Write-Audit-Publish jobs for lakehouse tables on object storage.
//!
//! One job run goes through three phases, each in its own module:
//!
//! ```text
//!   source ──► write (staging/<run_id>/…) ──► audit (rules over `staged`) ──► publish
//!                                                   │ fail                      │ put-if-absent manifest
//!                                                   ▼                           ▼ CAS pointer
//!                                           report, exit 3               _wap/current ─► vN
//! ```
//!
//! [`job`] runs the phases in order; [`inspect`] serves the read-side commands; [`layout`] names
//! every object of a table; [`table`] reads what was published. The library does all
//! the work; the `wap` binary only parses arguments, renders results and maps errors to exit codes.

pub mod audit;
pub mod backfill;
pub mod conf;
pub mod delta;
pub mod doctor;
pub mod engine;
pub mod gc;
pub mod hook;
pub mod iceberg;
pub mod inspect;
pub mod job;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod publish;
pub mod quarantine;
pub mod run_id;
pub mod store;
pub mod table;
pub mod versions;
pub mod watermark;
pub mod write;

/// Everything that can go wrong in `wap`, by phase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Command-line usage that cannot be acted on (bad date, unknown version).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Conf(#[from] conf::ConfError),
    /// `wap check` found these problems (each a message naming its file and line).
    #[error("{} problem(s) found:\n{}", problems.len(), problems.join("\n"))]
    Check { problems: Vec<String> },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Write(#[from] write::WriteError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Table(#[from] table::TableError),
    #[error(transparent)]
    Versions(#[from] versions::VersionsError),
    #[error(transparent)]
    Gc(#[from] gc::GcError),
    #[error(transparent)]
    Delta(Box<delta::DeltaError>),
    #[error(transparent)]
    Iceberg(Box<iceberg::IcebergError>),
}

impl From<iceberg::IcebergError> for Error {
    fn from(e: iceberg::IcebergError) -> Self {
        Error::Iceberg(Box::new(e))
    }
}

impl From<delta::DeltaError> for Error {
    fn from(e: delta::DeltaError) -> Self {
        Error::Delta(Box::new(e))
    }
}

/// Result with the crate error by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Process exit codes; part of the command-line interface (see README "Exit codes").
pub mod exit_code {
    /// Published, or nothing to do.
    pub const OK: i32 = 0;
    /// Anything not covered below: storage failures, unreadable source data, bugs.
    pub const FAILURE: i32 = 1;
    /// Usage or configuration error: nothing was written.
    pub const CONFIG: i32 = 2;
    /// An error-severity audit rule failed: nothing was published.
    pub const AUDIT_FAILED: i32 = 3;
    /// Another publisher changed the same partitions: nothing was published.
    pub const CONFLICT: i32 = 4;
}

impl Error {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Conf(_) | Error::Check { .. } | Error::Store(_) => {
                exit_code::CONFIG
            }
            Error::Write(e) if e.is_config() => exit_code::CONFIG,
            Error::Audit(e) if e.is_config() => exit_code::CONFIG,
            Error::Publish(e) if e.is_conflict() => exit_code::CONFLICT,
            Error::Publish(e) if e.is_config() => exit_code::CONFIG,
            Error::Table(e) if e.is_usage() => exit_code::CONFIG,
            Error::Versions(e) if e.is_usage() => exit_code::CONFIG,
            Error::Delta(e) if e.is_config() => exit_code::CONFIG,
            Error::Iceberg(e) if e.is_config() => exit_code::CONFIG,
            _ => exit_code::FAILURE,
        }
    }
}
