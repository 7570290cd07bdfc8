//! Phase 1 of a `mode: merge` run: the batch (the transform's output) upserted into the base
//! version by the natural key.
//!
//! ```text
//!  transform ─► staged batch (_batch, sorted by key) ─► deduped batch (dedupe, delete_when)
//!      │
//!      ├─► candidate partitions: those whose key range (in the manifest) holds a batch key
//!      ├─► changes (_changes): each batch row with `_change` insert/update/delete/unchanged/stale
//!      └─► rewritten partitions: every partition where a row changes, published rows with the
//!          changes applied, written like any run (sorted by key, deterministic)
//! ```
//!
//! Everything lands under `staging/<run_id>-b<base>/`: a merged file depends on the base
//! version, so a retry onto a newer base never overwrites files a landed version references.
//! Partitions where nothing changes keep their files.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{cast, col};
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use super::{StagedRun, WriteError, WriteOptions, bucket, value_at, write_partitions};
use crate::conf::{Dedupe, JobConf, MergeConf};
use crate::manifest::{Manifest, Partition};
use crate::table::VersionTable;
use crate::watermark::Mark;
use crate::{engine, layout};
use datafusion::scalar::ScalarValue;

/// The table of the run's batch, as audit SQL sees it.
pub const BATCH: &str = "batch";
/// The table of the run's changes, as audit SQL sees it.
pub const CHANGES: &str = "changes";
/// The column of `changes` saying what each batch row does.
pub const CHANGE_COLUMN: &str = "_change";

const OLD: &str = "__wap_old";
const KEEP: &str = "__wap_keep";
const DEDUPED: &str = "__wap_batch";
const DELETE: &str = "__wap_delete";
const FOUND: &str = "__wap_found";

/// What a merge does with the published rows, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub stale: u64,
}

impl MergeCounts {
    /// True when some published row changes.
    pub fn changes_rows(&self) -> bool {
        self.inserted + self.updated + self.deleted > 0
    }
}

/// A merge run's staged output.
#[derive(Debug, Clone)]
pub struct Merged {
    /// One row per deduplicated batch row with its `_change` (table `changes`).
    pub changes: StagedRun,
    /// The rewritten partitions, as they will be published (table `staged`).
    pub staged: StagedRun,
    /// Partitions the merge emptied (every row deleted or moved away).
    pub removed: Vec<String>,
    /// Partitions read to match keys: with those written, the merge's conflict set.
    pub read: Vec<String>,
    pub counts: MergeCounts,
    /// The largest cursor of the batch (incremental jobs).
    pub cursor_max: Option<Mark>,
}

/// Quotes an identifier for SQL.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn df_err(run_id: &str, location: &str) -> impl Fn(DataFusionError) -> WriteError {
    let (run_id, location) = (run_id.to_string(), location.to_string());
    move |source| WriteError::Execute {
        run_id: run_id.clone(),
        location: location.clone(),
        source,
    }
}

/// Where a merge run's objects go: `staging/<run_id>-b<base>`.
pub fn folder(run_id: &str, base: u64) -> String {
    format!("{}-b{base}", layout::staging_folder(run_id))
}

/// The columns of the batch the table stores (all but the control columns).
fn data_columns<'a>(batch: &'a Schema, merge: &MergeConf) -> Vec<&'a Field> {
    batch
        .fields()
        .iter()
        .filter(|f| !merge.control_columns.contains(f.name()))
        .map(|f| f.as_ref())
        .collect()
}

/// The columns an update changes.
fn update_columns(batch: &Schema, conf: &JobConf, merge: &MergeConf) -> Vec<String> {
    match &merge.update_columns {
        Some(u) => u.clone(),
        None => data_columns(batch, merge)
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !conf.key.contains(n))
            .collect(),
    }
}

/// The schema of the table after the merge: the base's columns (with their types), then the
/// batch's new columns. A table column the batch lacks is refused unless `update_columns`
/// leaves it out (then inserted rows get NULL there).
pub fn table_schema(
    conf: &JobConf,
    merge: &MergeConf,
    batch: &Schema,
    base: Option<&Schema>,
) -> Result<SchemaRef, WriteError> {
    // Each problem names the line of the option at fault.
    let err = |message: String| {
        let option = message.split([':', '.']).nth(1).unwrap_or("merge");
        let option = option.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
        let key = if message.starts_with("merge") {
            option
        } else {
            "transform"
        };
        WriteError::Columns {
            conf: format!(
                "{}:{}",
                conf.path.display(),
                crate::conf::line_of_key(&conf.text, key)
            ),
            message,
        }
    };
    for c in &merge.control_columns {
        if batch.field_with_name(c).is_err() {
            return Err(err(format!(
                "merge.control_columns: `{c}` is not a column of the transform's output"
            )));
        }
        if conf.key.contains(c) || conf.partition_by.contains(c) {
            return Err(err(format!(
                "merge.control_columns: `{c}` is a key or partition column, which the table stores"
            )));
        }
    }
    let data = data_columns(batch, merge);
    let has = |name: &str| data.iter().any(|f| f.name() == name);
    if let Some(u) = &merge.update_columns
        && let Some(missing) = u.iter().find(|c| !has(c))
    {
        return Err(err(format!(
            "merge.update_columns: `{missing}` is not a column of the transform's output (or is a control column)"
        )));
    }
    if let Some(seq) = &merge.sequence_by {
        let Ok(f) = batch.field_with_name(seq) else {
            return Err(err(format!(
                "merge.sequence_by: `{seq}` is not a column of the transform's output"
            )));
        };
        if !orders(f.data_type()) {
            return Err(err(format!(
                "merge.sequence_by: `{seq}` has type {}, which does not order; use an integer, \
                 decimal, date or timestamp column",
                f.data_type()
            )));
        }
    }
    let mut fields: Vec<Field> = Vec::new();
    if let Some(base) = base {
        for f in base.fields() {
            let updated = merge
                .update_columns
                .as_ref()
                .is_none_or(|u| u.contains(f.name()));
            if !has(f.name()) && (updated || conf.key.contains(f.name())) {
                return Err(err(format!(
                    "the transform's output lacks table column `{}`; add it, or leave it out of \
                     merge.update_columns so that updates keep it",
                    f.name()
                )));
            }
            fields.push(Field::new(f.name(), f.data_type().clone(), true));
        }
    }
    for f in data {
        if fields.iter().all(|g| g.name() != f.name()) {
            fields.push(Field::new(f.name(), f.data_type().clone(), true));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// True for a type whose values order meaningfully for `sequence_by` and cursors.
pub fn orders(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
                | DataType::Decimal128(_, _)
                | DataType::Decimal256(_, _)
                | DataType::Float32
                | DataType::Float64
        )
}

/// The job as the batch and changes are written: unpartitioned, sorted by key.
pub fn unpartitioned(conf: &JobConf) -> JobConf {
    JobConf {
        partition_by: Vec::new(),
        ..conf.clone()
    }
}

/// Stages the transform's output as the batch, sorted by key.
#[allow(clippy::too_many_arguments)]
pub async fn stage_batch(
    ctx: &SessionContext,
    transform: DataFrame,
    conf: &JobConf,
    run_id: &str,
    folder: &str,
    table: &Arc<dyn ObjectStore>,
    options: &WriteOptions,
    source_location: &str,
) -> Result<StagedRun, WriteError> {
    let prefix = format!("{folder}/_batch");
    write_partitions(
        ctx,
        transform,
        &unpartitioned(conf),
        run_id,
        &prefix,
        table,
        options,
        source_location,
    )
    .await
}

/// The SQL rules every merge run checks on its batch before anything can publish: no NULL in a
/// key column, and (unless `dedupe: latest` settles it) one row per key. Their failing rows
/// are the offending batch rows.
pub fn batch_rules(conf: &JobConf, merge: &MergeConf) -> Vec<crate::conf::rules::Rule> {
    use crate::conf::rules::{Rule, RuleKind, Scope, Severity, Threshold};
    let keys: Vec<String> = conf.key.iter().map(|k| quote(k)).collect();
    let any_null = keys
        .iter()
        .map(|k| format!("{k} IS NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let on = keys
        .iter()
        .map(|k| format!("b.{k} = d.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let list = keys.join(", ");
    let duplicates = match (merge.dedupe, &merge.sequence_by) {
        (Dedupe::Latest, Some(seq)) => {
            let seq = quote(seq);
            format!(
                "WITH d0 AS (SELECT DISTINCT * FROM {BATCH}), \
                 m AS (SELECT {list}, max({seq}) AS __wap_max FROM d0 GROUP BY {list}), \
                 top AS (SELECT d0.* FROM d0 JOIN m ON {} AND (d0.{seq} IS NOT DISTINCT FROM m.__wap_max)), \
                 d AS (SELECT {list} FROM top GROUP BY {list} HAVING count(*) > 1) \
                 SELECT b.* FROM top b JOIN d ON {on}",
                keys.iter()
                    .map(|k| format!("d0.{k} = m.{k}"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            )
        }
        _ => format!(
            "WITH d AS (SELECT {list} FROM {BATCH} GROUP BY {list} HAVING count(*) > 1) \
             SELECT b.* FROM {BATCH} b JOIN d ON {on}"
        ),
    };
    let line = crate::conf::line_of_key(&conf.text, "key");
    let rule = |name: &str, sql: String| Rule {
        name: name.to_string(),
        severity: Severity::Error,
        kind: RuleKind::Sql(sql),
        threshold: Threshold::default(),
        scope: Scope::Staged,
        quarantine: false,
        file: conf.path.clone(),
        line,
    };
    vec![
        rule(
            "merge_key_not_null",
            format!("SELECT * FROM {BATCH} WHERE {any_null}"),
        ),
        rule(
            match merge.dedupe {
                Dedupe::Error => "merge_key_unique",
                Dedupe::Latest => "merge_latest_unique",
            },
            duplicates,
        ),
    ]
}

/// Everything [`merge`] needs.
pub struct MergeInputs<'a> {
    pub ctx: &'a SessionContext,
    pub conf: &'a JobConf,
    pub merge: &'a MergeConf,
    pub base: Option<&'a Manifest>,
    pub batch: &'a StagedRun,
    /// The batch's schema as the transform gives it (with control columns).
    pub batch_schema: SchemaRef,
    pub run_id: &'a str,
    pub folder: &'a str,
    pub table: &'a Arc<dyn ObjectStore>,
    pub options: &'a WriteOptions,
    pub source_location: &'a str,
    /// The incremental cursor, if any.
    pub cursor: Option<&'a str>,
}

/// Merges the staged batch into the base version: stages the changes and the rewritten
/// partitions.
pub async fn merge(inputs: MergeInputs<'_>) -> Result<Merged, WriteError> {
    let MergeInputs {
        ctx,
        conf,
        merge,
        base,
        batch,
        batch_schema,
        run_id,
        folder,
        table,
        options,
        source_location,
        cursor,
    } = inputs;
    let err = df_err(run_id, source_location);
    let schema = table_schema(conf, merge, &batch_schema, base.map(|b| &b.schema))?;
    register_staged(ctx, BATCH, &batch_schema, batch).map_err(&err)?;
    register(
        ctx,
        DEDUPED,
        deduped(ctx, conf, merge, &batch_schema).await?,
    )
    .map_err(&err)?;

    // Candidates: partitions whose key range holds a batch key and, when the partition columns
    // are part of the key, only the batch's own partitions (a key cannot sit anywhere else).
    let keys = batch_keys(ctx, conf, &schema).await.map_err(&err)?;
    let within = if !conf.partition_by.is_empty()
        && conf.partition_by.iter().all(|p| conf.key.contains(p))
    {
        Some(batch_partitions(ctx, conf, &schema).await.map_err(&err)?)
    } else {
        None
    };
    let candidates: Vec<&Partition> = match base {
        None => Vec::new(),
        Some(b) => b
            .partitions
            .values()
            .filter(|p| within.as_ref().is_none_or(|w| w.contains(&p.path)))
            .filter(|p| may_hold(p, &keys, &conf.key, &schema))
            .collect(),
    };
    let old_schema = base.map_or(Arc::clone(&schema), |b| b.schema_ref());
    register_partitions(ctx, OLD, &old_schema, candidates.iter().copied()).map_err(&err)?;

    // Changes.
    let updates = update_columns(&batch_schema, conf, merge);
    let changes_sql = changes_sql(conf, merge, &batch_schema, &old_schema, &updates);
    let changes_df = ctx.sql(&changes_sql).await.map_err(&err)?;
    let changes = write_partitions(
        ctx,
        changes_df,
        &unpartitioned(conf),
        run_id,
        &format!("{folder}/_changes"),
        table,
        options,
        source_location,
    )
    .await?;
    register_staged(ctx, CHANGES, &changes.schema, &changes).map_err(&err)?;
    let counts = count_changes(ctx).await.map_err(&err)?;
    let cursor_max = match cursor {
        Some(c) => cursor_max(ctx, BATCH, c).await.map_err(&err)?,
        None => None,
    };

    // The partitions where a row changes, rewritten.
    let affected = if counts.changes_rows() {
        affected(ctx, conf, &schema, &old_schema, &updates)
            .await
            .map_err(&err)?
    } else {
        BTreeSet::new()
    };
    let kept: Vec<&Partition> = base
        .into_iter()
        .flat_map(|b| b.partitions.values())
        .filter(|p| affected.contains(&p.path))
        .collect();
    register_partitions(ctx, KEEP, &old_schema, kept.iter().copied()).map_err(&err)?;
    let staged = if affected.is_empty() {
        StagedRun {
            run_id: run_id.to_string(),
            folder: folder.to_string(),
            schema: Arc::clone(&schema),
            partitions: Vec::new(),
            rows: 0,
        }
    } else {
        let result = result_rows(
            ctx,
            conf,
            &schema,
            &old_schema,
            &batch_schema,
            merge,
            &updates,
        )
        .await
        .map_err(&err)?;
        write_partitions(
            ctx,
            result,
            conf,
            run_id,
            folder,
            table,
            options,
            source_location,
        )
        .await?
    };
    let written: BTreeSet<&str> = staged.partitions.iter().map(|p| p.path.as_str()).collect();
    let removed = kept
        .iter()
        .map(|p| p.path.clone())
        .filter(|p| !written.contains(p.as_str()))
        .collect();
    Ok(Merged {
        changes,
        staged,
        removed,
        read: candidates.iter().map(|p| p.path.clone()).collect(),
        counts,
        cursor_max,
    })
}

fn register(
    ctx: &SessionContext,
    name: &str,
    provider: Arc<dyn datafusion::datasource::TableProvider>,
) -> Result<(), DataFusionError> {
    ctx.deregister_table(name)?;
    ctx.register_table(name, provider).map(|_| ())
}

/// Registers the published `partitions` (of a table of `schema`) as table `name`.
fn register_partitions<'a>(
    ctx: &SessionContext,
    name: &str,
    schema: &SchemaRef,
    partitions: impl IntoIterator<Item = &'a Partition>,
) -> Result<(), DataFusionError> {
    let table = VersionTable::new(
        engine::TABLE_URL,
        Arc::clone(schema),
        Vec::new(),
        partitions,
    )
    .map_err(|e| DataFusionError::External(Box::new(e)))?;
    register(ctx, name, Arc::new(table))
}

/// Registers the files of a staged run as table `name`.
fn register_staged(
    ctx: &SessionContext,
    name: &str,
    schema: &SchemaRef,
    staged: &StagedRun,
) -> Result<(), DataFusionError> {
    let table = crate::table::files_table(Arc::clone(schema), staged.objects())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    register(ctx, name, Arc::new(table))
}

/// The batch with duplicates settled (`dedupe: latest`) and `__wap_delete` computed.
async fn deduped(
    ctx: &SessionContext,
    conf: &JobConf,
    merge: &MergeConf,
    batch: &Schema,
) -> Result<Arc<dyn datafusion::datasource::TableProvider>, WriteError> {
    let cols = batch
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let delete = match &merge.delete_when {
        Some(p) => format!("COALESCE(({p}), false)"),
        None => "false".to_string(),
    };
    let keys = conf
        .key
        .iter()
        .map(|k| quote(k))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = match (merge.dedupe, &merge.sequence_by) {
        (Dedupe::Latest, Some(seq)) => format!(
            "SELECT {cols}, {delete} AS {DELETE} FROM (SELECT {cols}, ROW_NUMBER() OVER \
             (PARTITION BY {keys} ORDER BY {} DESC NULLS LAST) AS __wap_rn FROM \
             (SELECT DISTINCT {cols} FROM {BATCH}) d) r WHERE __wap_rn = 1",
            quote(seq)
        ),
        _ => format!("SELECT {cols}, {delete} AS {DELETE} FROM {BATCH}"),
    };
    let df = ctx.sql(&sql).await.map_err(|source| WriteError::Columns {
        conf: conf.path.display().to_string(),
        message: format!("merge.delete_when does not plan over the batch: {source}"),
    })?;
    Ok(df.into_view())
}

/// The deduplicated batch's keys, cast to the table's key types, as sortable rows.
async fn batch_keys(
    ctx: &SessionContext,
    conf: &JobConf,
    schema: &Schema,
) -> Result<(RowConverter, arrow::row::Rows), DataFusionError> {
    let types = key_types(&conf.key, schema)?;
    let converter = RowConverter::new(
        types
            .iter()
            .map(|t| SortField::new_with_options(t.clone(), bucket::ASCENDING))
            .collect(),
    )?;
    let select: Vec<_> = conf
        .key
        .iter()
        .zip(&types)
        .map(|(k, t)| cast(col(quote(k)), t.clone()).alias(k))
        .collect();
    let df = ctx.table(DEDUPED).await?.select(select)?;
    let mut rows = converter.empty_rows(0, 0);
    for b in df.collect().await? {
        converter.append(&mut rows, b.columns())?;
    }
    // Rows in key order, for the range checks.
    let mut order: Vec<usize> = (0..rows.num_rows()).collect();
    order.sort_by(|&a, &b| rows.row(a).cmp(&rows.row(b)));
    let mut sorted = converter.empty_rows(order.len(), 0);
    for i in order {
        sorted.push(rows.row(i));
    }
    Ok((converter, sorted))
}

fn key_types(key: &[String], schema: &Schema) -> Result<Vec<DataType>, DataFusionError> {
    key.iter()
        .map(|k| Ok(schema.field_with_name(k)?.data_type().clone()))
        .collect()
}

/// True unless the partition's key range (from its files, in the manifest) rules out every
/// batch key. A partition without a range, or whose range does not parse, may hold any key.
fn may_hold(
    p: &Partition,
    (converter, keys): &(RowConverter, arrow::row::Rows),
    key: &[String],
    schema: &Schema,
) -> bool {
    if keys.num_rows() == 0 {
        return false;
    }
    let (Some(lo), Some(hi)) = (&p.key_min, &p.key_max) else {
        return true;
    };
    let Ok(types) = key_types(key, schema) else {
        return true;
    };
    if lo.len() != key.len() || hi.len() != key.len() {
        return true;
    }
    let columns: Option<Vec<ArrayRef>> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let text: ArrayRef = Arc::new(StringArray::from(vec![lo[i].clone(), hi[i].clone()]));
            let typed = arrow::compute::cast(&text, t).ok()?;
            // A value that does not read back as its type: no range.
            let lost = (0..2).any(|r| typed.is_null(r) && !text.is_null(r));
            (!lost).then_some(typed)
        })
        .collect();
    let Some(columns) = columns else {
        return true;
    };
    let Ok(bounds) = converter.convert_columns(&columns) else {
        return true;
    };
    let (lo, hi) = (bounds.row(0), bounds.row(1));
    // The first batch key at or after `lo`; it must not be past `hi`.
    let (mut a, mut b) = (0, keys.num_rows());
    while a < b {
        let mid = (a + b) / 2;
        if keys.row(mid) < lo {
            a = mid + 1
        } else {
            b = mid
        }
    }
    a < keys.num_rows() && keys.row(a) <= hi
}

/// The `changes` query: each deduplicated batch row with what it does.
fn changes_sql(
    conf: &JobConf,
    merge: &MergeConf,
    batch: &Schema,
    old: &Schema,
    updates: &[String],
) -> String {
    let in_old = |c: &str| old.field_with_name(c).is_ok();
    let on = conf
        .key
        .iter()
        .map(|k| format!("b.{0} = o.{0}", quote(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut wanted: Vec<&str> = conf.key.iter().map(String::as_str).collect();
    wanted.extend(updates.iter().map(String::as_str).filter(|c| in_old(c)));
    if let Some(seq) = &merge.sequence_by
        && in_old(seq)
    {
        wanted.push(seq);
    }
    let mut seen = BTreeSet::new();
    wanted.retain(|c| seen.insert(*c));
    let o_cols = wanted
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let same = updates
        .iter()
        .map(|c| {
            if in_old(c) {
                format!("(b.{0} IS NOT DISTINCT FROM o.{0})", quote(c))
            } else {
                format!("(b.{} IS NULL)", quote(c))
            }
        })
        .chain(std::iter::once("true".to_string()))
        .collect::<Vec<_>>()
        .join(" AND ");
    let stale = match &merge.sequence_by {
        Some(seq) => {
            let old_seq = if in_old(seq) {
                format!("o.{}", quote(seq))
            } else {
                "NULL".to_string()
            };
            let s = quote(seq);
            format!(
                "WHEN NOT (b.{s} > {old_seq} OR ({old_seq} IS NULL AND b.{s} IS NOT NULL)) \
                 THEN 'stale' "
            )
        }
        None => String::new(),
    };
    let b_cols = batch
        .fields()
        .iter()
        .map(|f| format!("b.{}", quote(f.name())))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {b_cols}, CASE \
           WHEN o.{FOUND} IS NULL THEN CASE WHEN b.{DELETE} THEN 'unchanged' ELSE 'insert' END \
           {stale}\
           WHEN b.{DELETE} THEN 'delete' \
           WHEN {same} THEN 'unchanged' \
           ELSE 'update' END AS {CHANGE_COLUMN} \
         FROM {DEDUPED} b LEFT JOIN (SELECT {o_cols}, true AS {FOUND} FROM {OLD}) o ON {on}"
    )
}

async fn count_changes(ctx: &SessionContext) -> Result<MergeCounts, DataFusionError> {
    let batches = ctx
        .sql(&format!(
            "SELECT {CHANGE_COLUMN}, count(*) AS n FROM {CHANGES} GROUP BY {CHANGE_COLUMN}"
        ))
        .await?
        .collect()
        .await?;
    let mut counts = MergeCounts::default();
    for b in &batches {
        for i in 0..b.num_rows() {
            let kind = value_at(b.column(0), i).unwrap_or_default();
            let n: u64 = value_at(b.column(1), i)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            match kind.as_str() {
                "insert" => counts.inserted += n,
                "update" => counts.updated += n,
                "delete" => counts.deleted += n,
                "stale" => counts.stale += n,
                _ => counts.unchanged += n,
            }
        }
    }
    Ok(counts)
}

/// The largest `cursor` of the registered table `table`, `None` when it has no non-NULL one.
pub async fn cursor_max(
    ctx: &SessionContext,
    table: &str,
    cursor: &str,
) -> Result<Option<Mark>, DataFusionError> {
    let batches = ctx
        .sql(&format!("SELECT max({}) FROM {table}", quote(cursor)))
        .await?
        .collect()
        .await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let value = ScalarValue::try_from_array(b.column(0), 0)?;
    Ok(mark_of(&value))
}

/// The mark of a cursor value read from the batch (`None` for NULL or a type that is no
/// cursor).
pub fn mark_of(value: &ScalarValue) -> Option<Mark> {
    if value.is_null() {
        return None;
    }
    let as_i64 = |v: &ScalarValue| match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(n)) => Some(n),
        _ => None,
    };
    match value.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => as_i64(value).map(Mark::Integer),
        DataType::Date32 | DataType::Date64 => match value.cast_to(&DataType::Date32).ok()? {
            ScalarValue::Date32(Some(days)) => {
                chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163).map(Mark::Date)
            }
            _ => None,
        },
        DataType::Timestamp(_, _) => {
            let target = DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None);
            match value.cast_to(&target).ok()? {
                ScalarValue::TimestampMicrosecond(Some(us), _) => {
                    chrono::DateTime::from_timestamp_micros(us)
                        .map(|t| Mark::Timestamp(t.naive_utc()))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The expression of table column `c` in a row the merge produces, for each source of rows.
enum Source {
    /// A published row kept as it is.
    Kept,
    /// A published row updated by the batch row `c`.
    Updated,
    /// A batch row inserted.
    Inserted,
}

fn column_expr(
    c: &str,
    from: Source,
    old: &Schema,
    batch_data: &BTreeSet<String>,
    updates: &[String],
) -> String {
    let in_old = old.field_with_name(c).is_ok();
    let in_batch = batch_data.contains(c);
    let q = quote(c);
    match from {
        Source::Kept if in_old => format!("o.{q}"),
        Source::Updated if in_batch && updates.iter().any(|u| u == c) => format!("c.{q}"),
        Source::Updated if in_old => format!("o.{q}"),
        Source::Updated if in_batch => format!("c.{q}"),
        Source::Inserted if in_batch => format!("c.{q}"),
        _ => "NULL".to_string(),
    }
}

/// The partitions where a row changes: the published partitions of updated and deleted rows,
/// and the partitions of inserted and updated rows as they will be.
async fn affected(
    ctx: &SessionContext,
    conf: &JobConf,
    schema: &Schema,
    old: &Schema,
    updates: &[String],
) -> Result<BTreeSet<String>, DataFusionError> {
    if conf.partition_by.is_empty() {
        return Ok(BTreeSet::from([String::new()]));
    }
    let on = on_keys(conf, "c", "o");
    let batch_data: BTreeSet<String> = ctx
        .table(BATCH)
        .await?
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let old_p = conf
        .partition_by
        .iter()
        .map(|p| {
            format!(
                "{} AS {}",
                column_expr(p, Source::Kept, old, &batch_data, updates),
                quote(p)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let new_p = conf
        .partition_by
        .iter()
        .map(|p| {
            format!(
                "CASE WHEN c.{CHANGE_COLUMN} = 'insert' THEN c.{q} ELSE {} END AS {q}",
                column_expr(p, Source::Updated, old, &batch_data, updates),
                q = quote(p)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {old_p} FROM {CHANGES} c JOIN {OLD} o ON {on} \
           WHERE c.{CHANGE_COLUMN} IN ('update', 'delete') \
         UNION ALL \
         SELECT {new_p} FROM {CHANGES} c LEFT JOIN {OLD} o ON {on} \
           WHERE c.{CHANGE_COLUMN} IN ('insert', 'update')"
    );
    let df = typed(ctx.sql(&sql).await?, &conf.partition_by, schema)?.distinct()?;
    paths_of(conf, df).await
}

/// The Hive paths of `df`'s rows (its columns: the partition columns, typed).
async fn paths_of(conf: &JobConf, df: DataFrame) -> Result<BTreeSet<String>, DataFusionError> {
    let mut out = BTreeSet::new();
    for b in df.collect().await? {
        for i in 0..b.num_rows() {
            let values: Vec<Option<String>> = b.columns().iter().map(|c| value_at(c, i)).collect();
            out.insert(layout::hive_path(&conf.partition_by, &values));
        }
    }
    Ok(out)
}

/// The Hive paths of the partitions the deduplicated batch's rows belong to.
async fn batch_partitions(
    ctx: &SessionContext,
    conf: &JobConf,
    schema: &Schema,
) -> Result<BTreeSet<String>, DataFusionError> {
    let df = typed(ctx.table(DEDUPED).await?, &conf.partition_by, schema)?.distinct()?;
    paths_of(conf, df).await
}

fn on_keys(conf: &JobConf, a: &str, b: &str) -> String {
    conf.key
        .iter()
        .map(|k| format!("{a}.{0} = {b}.{0}", quote(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `df`'s columns `names` cast to their types in `schema`.
fn typed(df: DataFrame, names: &[String], schema: &Schema) -> Result<DataFrame, DataFusionError> {
    let exprs = names
        .iter()
        .map(|n| {
            let t = schema.field_with_name(n)?.data_type().clone();
            Ok(cast(col(quote(n)), t).alias(n))
        })
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    df.select(exprs)
}

/// The rows of the affected partitions after the merge.
async fn result_rows(
    ctx: &SessionContext,
    conf: &JobConf,
    schema: &Schema,
    old: &Schema,
    batch: &Schema,
    merge: &MergeConf,
    updates: &[String],
) -> Result<DataFrame, DataFusionError> {
    let batch_data: BTreeSet<String> = data_columns(batch, merge)
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let select = |from: fn() -> Source| {
        names
            .iter()
            .map(|c| {
                format!(
                    "{} AS {}",
                    column_expr(c, from(), old, &batch_data, updates),
                    quote(c)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let keys = conf
        .key
        .iter()
        .map(|k| quote(k))
        .collect::<Vec<_>>()
        .join(", ");
    // The changed keys are the join's left (build) side: they are few, the kept partitions'
    // rows are many and stream through as the probe side.
    let kept = ctx
        .sql(&format!(
            "SELECT {} FROM (SELECT {keys} FROM {CHANGES} \
             WHERE {CHANGE_COLUMN} IN ('update', 'delete')) c RIGHT ANTI JOIN {KEEP} o ON {}",
            select(|| Source::Kept),
            on_keys(conf, "c", "o")
        ))
        .await?;
    let updated = ctx
        .sql(&format!(
            "SELECT {} FROM {CHANGES} c JOIN {OLD} o ON {} WHERE c.{CHANGE_COLUMN} = 'update'",
            select(|| Source::Updated),
            on_keys(conf, "c", "o")
        ))
        .await?;
    let inserted = ctx
        .sql(&format!(
            "SELECT {} FROM {CHANGES} c WHERE c.{CHANGE_COLUMN} = 'insert'",
            select(|| Source::Inserted)
        ))
        .await?;
    typed(kept, &names, schema)?
        .union(typed(updated, &names, schema)?)?
        .union(typed(inserted, &names, schema)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_values_become_marks() {
        let ts = ScalarValue::TimestampNanosecond(Some(1_704_067_201_000_000_000), None);
        assert_eq!(mark_of(&ts), Mark::parse("2024-01-01T00:00:01"));
        assert_eq!(
            mark_of(&ScalarValue::Date32(Some(19723))),
            Mark::parse("2024-01-01")
        );
        assert_eq!(
            mark_of(&ScalarValue::Int32(Some(7))),
            Some(Mark::Integer(7))
        );
        assert_eq!(mark_of(&ScalarValue::Int32(None)), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a"), "\"a\"");
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }
}
