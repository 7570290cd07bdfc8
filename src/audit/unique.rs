//! `unique`: one entry point over three strategies, tried in this order.
//!
//! 1. **bitmap** ([`super::dense`]): integer-like key columns whose staged footers bound them to
//!    a small box of values: one bit per possible key, files read in any order.
//! 2. **merge** ([`super::merge`]): columns that are a prefix of the table's key, by which the
//!    writer sorts every staged file: a k-way merge of the files' key columns, memory bounded by
//!    one batch per file whatever the number of distinct keys.
//! 3. **sql**: `GROUP BY` the columns, `HAVING COUNT(*) > 1`, for everything else (`result`
//!    scope, other columns, files not sorted as the writer sorts).
//!
//! All three count the same thing: rows with a NULL in any of the columns are left out; the
//! failing rows are the rows of keys found twice or more, and the duplicated keys are counted
//! once each. A strategy that does not apply says why ([`Declined::NotApplicable`], logged at
//! debug level with the strategy that answered); one that cannot read a file fails the rule
//! ([`Declined::Fault`]): the next strategy would read the same files again.

use datafusion::prelude::SessionContext;
use tracing::debug;

use super::files::{Declined, Footer, ReadFault};
use super::{AuditError, StagedFiles};
use crate::conf::rules::Scope;

/// The strategies, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Bitmap,
    Merge,
    Sql,
}

/// `(failing rows, duplicated keys)` of a `unique` rule over `columns` of the `scope` table, and
/// the strategy that counted them. `files` (with their `footers`) are the files of `staged`;
/// `key` is the table's key, the order of each staged file.
pub(super) async fn count(
    ctx: &SessionContext,
    rule: &str,
    scope: Scope,
    columns: &[String],
    key: &[String],
    files: Option<&StagedFiles>,
    footers: &[Footer],
) -> Result<((u64, u64), Strategy), AuditError> {
    let mut declined: Vec<(Strategy, String)> = Vec::new();
    let fault = |source: ReadFault| AuditError::Read {
        rule: rule.to_string(),
        source,
    };
    match (scope, files) {
        (Scope::Result, _) => declined.push((
            Strategy::Bitmap,
            "scope `result` is not a list of staged files".into(),
        )),
        (Scope::Staged, None) => declined.push((
            Strategy::Bitmap,
            "no staged files were handed to the audit".into(),
        )),
        (Scope::Staged, Some(files)) => {
            match super::dense::unique_by_bitmap(ctx, files, columns, footers).await {
                Ok(found) => return answered(rule, found, Strategy::Bitmap, &declined),
                Err(Declined::NotApplicable(why)) => declined.push((Strategy::Bitmap, why)),
                Err(Declined::Fault(f)) => return Err(fault(f)),
            }
            match super::merge::key_prefix(columns, key) {
                None => declined.push((
                    Strategy::Merge,
                    format!(
                        "columns {columns:?} are not a prefix of the key {key:?} the files are sorted by"
                    ),
                )),
                Some(prefix) => {
                    match super::merge::unique_by_merge(files, &prefix, footers).await {
                        Ok(found) => return answered(rule, found, Strategy::Merge, &declined),
                        Err(Declined::NotApplicable(why)) => declined.push((Strategy::Merge, why)),
                        Err(Declined::Fault(f)) => return Err(fault(f)),
                    }
                }
            }
        }
    }
    let q = super::sql::unique_count_query(columns, scope.table());
    let counts = super::exec::query(ctx, rule, &q).await?;
    let found = (
        super::exec::int_at(&counts, 0),
        super::exec::int_at(&counts, 1),
    );
    answered(rule, found, Strategy::Sql, &declined)
}

fn answered(
    rule: &str,
    found: (u64, u64),
    strategy: Strategy,
    declined: &[(Strategy, String)],
) -> Result<((u64, u64), Strategy), AuditError> {
    debug!(
        rule,
        strategy = ?strategy,
        declined = ?declined,
        failing = found.0,
        "unique rule counted"
    );
    Ok((found, strategy))
}

/// The staged files' footers, read once for [`count_by`].
#[doc(hidden)]
pub struct Footers(Vec<Footer>);

/// Reads the footers of `files`, as a run's audit does before its strategies run.
#[doc(hidden)]
pub async fn read_footers(files: &StagedFiles) -> Result<Footers, ReadFault> {
    Ok(Footers(
        super::files::footers(&files.store, &files.files).await?,
    ))
}

/// One strategy alone over the staged `files` (registered as `staged` in `ctx` for the SQL
/// one), for the benchmark that weighs them (`benches/unique.rs`): its counts, or `None` when
/// it declines (with the reason logged at debug level).
#[doc(hidden)]
pub async fn count_by(
    ctx: &SessionContext,
    strategy: Strategy,
    files: &StagedFiles,
    columns: &[String],
    footers: &Footers,
) -> Result<Option<(u64, u64)>, AuditError> {
    let found = match strategy {
        Strategy::Bitmap => super::dense::unique_by_bitmap(ctx, files, columns, &footers.0).await,
        Strategy::Merge => super::merge::unique_by_merge(files, columns, &footers.0).await,
        Strategy::Sql => {
            let q = super::sql::unique_count_query(columns, Scope::Staged.table());
            let counts = super::exec::query(ctx, "bench", &q).await?;
            Ok((
                super::exec::int_at(&counts, 0),
                super::exec::int_at(&counts, 1),
            ))
        }
    };
    match found {
        Ok(found) => Ok(Some(found)),
        Err(Declined::NotApplicable(why)) => {
            debug!(strategy = ?strategy, why, "declined");
            Ok(None)
        }
        Err(Declined::Fault(source)) => Err(AuditError::Read {
            rule: "bench".into(),
            source,
        }),
    }
}
