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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use object_store::ObjectStoreExt;

    use super::super::testing::{staged_files, unique_by_sql};
    use super::*;

    /// Two files of `(k Int64, s Utf8)`, each sorted by `k`, with `k` 7 twice across them.
    async fn staged(keys: [&[i64]; 2]) -> (SessionContext, StagedFiles, Vec<Footer>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batches: Vec<RecordBatch> = keys
            .iter()
            .map(|k| {
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(k.to_vec())),
                        Arc::new(StringArray::from_iter_values(
                            k.iter().map(|v| format!("s{}", v % 3)),
                        )),
                    ],
                )
                .unwrap()
            })
            .collect();
        let props = parquet::file::properties::WriterProperties::builder();
        let (ctx, store, metas) = staged_files(&batches, props, &Default::default()).await;
        let footers = super::super::files::footers(&store, &metas).await.unwrap();
        (ctx, StagedFiles::new(store, schema, metas), footers)
    }

    fn cols(v: &[&str]) -> Vec<String> {
        v.iter().map(|c| c.to_string()).collect()
    }

    /// The counts of `columns` and the strategy that gave them.
    async fn counted(
        ctx: &SessionContext,
        scope: Scope,
        columns: &[&str],
        files: Option<&StagedFiles>,
        footers: &[Footer],
    ) -> ((u64, u64), Strategy) {
        count(
            ctx,
            "r",
            scope,
            &cols(columns),
            &cols(&["k"]),
            files,
            footers,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn each_strategy_answers_where_it_applies_and_all_count_alike() {
        let (ctx, files, footers) = staged([&[1, 2, 7], &[7, 8, 9]]).await;
        let sql = unique_by_sql(&ctx, &cols(&["k"])).await;
        assert_eq!(sql, (2, 1));
        // Integer keys in a small range: the bitmap.
        let found = counted(&ctx, Scope::Staged, &["k"], Some(&files), &footers).await;
        assert_eq!(found, (sql, Strategy::Bitmap));
        // A string column that is no key prefix: SQL.
        let found = counted(&ctx, Scope::Staged, &["s"], Some(&files), &footers).await;
        assert_eq!(
            found,
            (unique_by_sql(&ctx, &cols(&["s"])).await, Strategy::Sql)
        );
        // Without the files handed over: SQL, the same counts.
        let found = counted(&ctx, Scope::Staged, &["k"], None, &footers).await;
        assert_eq!(found, (sql, Strategy::Sql));
        // Sparse keys (the bitmap would be mostly empty), files sorted by the key: the merge.
        let (ctx, files, footers) = staged([&[1, 7_000_000_000], &[7_000_000_000, 9 << 40]]).await;
        let found = counted(&ctx, Scope::Staged, &["k"], Some(&files), &footers).await;
        assert_eq!(
            found,
            (unique_by_sql(&ctx, &cols(&["k"])).await, Strategy::Merge)
        );
        assert_eq!(found.0, (2, 1));
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_read_fails_the_rule_instead_of_falling_back() {
        let (ctx, files, footers) = staged([&[1, 2, 7], &[7, 8, 9]]).await;
        files.store.delete(&files.files[1].location).await.unwrap();
        for key in [cols(&["k"]), cols(&["k", "s"])] {
            let err = count(&ctx, "r", Scope::Staged, &key, &key, Some(&files), &footers)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, AuditError::Read { rule, .. } if rule == "r"),
                "{key:?}: {err}"
            );
            assert!(err.to_string().contains("part-1.parquet"), "{err}");
        }
    }
}
