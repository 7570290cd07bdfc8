//! Phase 1, write: source → transform SQL → Hive-style Parquet partitions under
//! `staging/<run_id>/`.
//!
//! Invariants:
//! - Nothing outside `staging/<run_id>/` is touched; a failure at any point leaves production as
//!   it was (staged objects are garbage until a manifest references them).
//! - File names and bytes are a function of the run's inputs: rows are sorted by partition
//!   columns, key and then a fixed-seed hash of every other column; batches are re-cut to a fixed size before the
//!   Parquet writer sees them; writer properties are fixed. A re-run writes the same bytes.
//! - Data streams: rows are bucketed by partition (buckets spill to disk under memory pressure),
//!   each bucket is sorted on its own (see `bucket`) and feeds one partition writer at a time,
//!   whose buffered row group is accounted in the session's memory pool.
//! - The transform may not call non-deterministic functions (`now()`, `random()`, …): the logical
//!   date comes in as `{date}`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::BatchCoalescer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::array_value_to_string;
use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_expr::expressions::col as physical_col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

mod bucket;
mod builder;
pub mod merge;
mod spill;
pub mod stats;

use crate::conf::{JobConf, SourceFormat};
use crate::engine::{self, FilesTable};
use crate::layout;
use crate::manifest::DataFile;
use crate::progress::Progress;
use crate::store::{Location, StoreError, object_path};

/// Rows per batch handed to the Parquet writer (fixed, so that page boundaries are too), and
/// per batch the writer encodes at once (its default, 1,024, checks for a full page eight times
/// as often; a page can end up to a batch past the page size limit).
const WRITE_BATCH_ROWS: usize = 8192;
/// Rows per row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// A row group is closed early when its buffered size reaches this.
const ROW_GROUP_BYTES: usize = 64 << 20;
/// Dictionary pages stop growing (and the column chunk falls back to plain encoding) past this:
/// a quarter of parquet's default, so high-cardinality columns give up on dictionaries early
/// while low-cardinality ones (flags, codes, dates) keep them.
const DICTIONARY_PAGE_BYTES: usize = 256 << 10;
/// Below this many rows in a file's first batch, its distinct values say too little about the
/// file: it keeps dictionaries on every column (see [`plain_columns`]).
const DICTIONARY_SAMPLE_ROWS: usize = 1024;
/// Parts of one multipart upload in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Errors of phase 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error(
        "source {location} matched no objects (for date {date})\n\
         help: check source.path in the job file, or whether that day's data has arrived"
    )]
    SourceNotFound { location: String, date: String },
    #[error(transparent)]
    Location(#[from] StoreError),
    #[error("unable to list source {location}: {source}")]
    ListSource {
        location: String,
        source: object_store::Error,
    },
    #[error("unable to read the schema of source {location}: {source}")]
    SourceSchema {
        location: String,
        source: DataFusionError,
    },
    #[error("{conf}: transform does not plan against the source: {}", .source.strip_backtrace())]
    Transform {
        conf: String,
        source: DataFusionError,
    },
    #[error("{conf}: transform: expected one SELECT query: {}", .source.strip_backtrace())]
    NotAQuery {
        conf: String,
        source: DataFusionError,
    },
    #[error(
        "{conf}: transform calls `{function}`, which gives a different answer on every run; \
         use {{date}} (the logical date) instead so that re-runs write the same data"
    )]
    NonDeterministic { conf: String, function: String },
    #[error("{conf}: {message}")]
    Columns { conf: String, message: String },
    #[error("writing staging for run {run_id} failed while reading source {location}: {source}")]
    Execute {
        run_id: String,
        location: String,
        source: DataFusionError,
    },
    #[error("unable to write staged file {path}: {source}")]
    Upload { path: String, source: UploadFault },
}

/// Why a staged file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadFault {
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("writer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The object path was refused (see [`object_path`]).
    #[error("{0}")]
    Path(String),
    #[error("the file has no rows")]
    Empty,
}

impl WriteError {
    /// True when the job configuration (not the data or the store) is at fault.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            WriteError::Location(_)
                | WriteError::Transform { .. }
                | WriteError::NotAQuery { .. }
                | WriteError::NonDeterministic { .. }
                | WriteError::Columns { .. }
        )
    }
}

/// The source objects of one run, listed once: they make the run id and the `source` table.
#[derive(Debug, Clone)]
pub struct SourceObjects {
    pub store: Arc<dyn ObjectStore>,
    /// Objects, sorted by path.
    pub objects: Vec<ObjectMeta>,
    /// The location as configured, with the date filled in.
    pub location: String,
}

fn glob_start(path: &str) -> Option<usize> {
    path.find(['*', '?', '['])
}

/// True for objects under a `.`/`_` file or folder below `prefix` (`_SUCCESS`, `.crc`,
/// `_temporary/…`): writers' bookkeeping, not data.
fn hidden(meta: &ObjectMeta, prefix: &str) -> bool {
    let path = meta.location.as_ref();
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    rest.split('/')
        .any(|part| part.starts_with('.') || part.starts_with('_'))
}

/// Objects matching a glob location (`*` and `?` stay within a folder, `**` crosses folders),
/// skipping hidden `.`/`_` bookkeeping.
async fn list_glob(loc: &Location, location: &str) -> Result<Vec<ObjectMeta>, WriteError> {
    let g = glob_start(&loc.path).unwrap_or(loc.path.len());
    let dir = loc.path[..g].rsplit_once('/').map_or("", |(d, _)| d);
    let invalid = |reason: String| StoreError::Invalid {
        location: location.to_string(),
        reason,
    };
    let pattern = glob::Pattern::new(&loc.path).map_err(|e| invalid(format!("bad glob: {e}")))?;
    let prefix = object_path(dir).map_err(invalid)?;
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut out = Vec::new();
    let mut listing = loc.store.list(Some(&prefix));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| WriteError::ListSource {
            location: location.to_string(),
            source,
        })?;
        if pattern.matches_with(meta.location.as_ref(), opts) && !hidden(&meta, dir) {
            out.push(meta);
        }
    }
    Ok(out)
}

/// Lists the source objects for a date: a file, a folder (recursively, skipping hidden `.`/`_`
/// files) or a glob (`*`, `?`, `[…]`).
pub async fn list_source(conf: &JobConf, date: &str) -> Result<SourceObjects, WriteError> {
    let location = conf.source.path_for(date);
    let loc = Location::parse(&location, &conf.storage)?;
    let list_err = |source| WriteError::ListSource {
        location: location.clone(),
        source,
    };
    let mut objects = Vec::new();
    if glob_start(&loc.path).is_some() {
        objects = list_glob(&loc, &location).await?;
    } else {
        let path = object_path(&loc.path).map_err(|reason| StoreError::Invalid {
            location: location.clone(),
            reason,
        })?;
        match loc.store.head(&path).await {
            Ok(meta) if !location.ends_with('/') => objects.push(meta),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                let mut listing = loc.store.list(Some(&path));
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(list_err)?;
                    if !hidden(&meta, &loc.path) {
                        objects.push(meta);
                    }
                }
            }
            Err(e) => return Err(list_err(e)),
        }
    }
    if objects.is_empty() {
        return Err(WriteError::SourceNotFound {
            location,
            date: date.to_string(),
        });
    }
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(SourceObjects {
        store: loc.store,
        objects,
        location,
    })
}

/// Some source objects of any date (for `wap check`): `{date}` becomes a wildcard and the last
/// matching object is used, for its schema only.
pub async fn list_source_sample(conf: &JobConf) -> Result<SourceObjects, WriteError> {
    let mut template = conf.source.path.replace("{date}", "*");
    if template.ends_with('/') {
        template.push_str("**");
    }
    let loc = Location::parse(&template, &conf.storage)?;
    let last = list_glob(&loc, &template)
        .await?
        .into_iter()
        .max_by(|a, b| a.location.cmp(&b.location));
    let Some(last) = last else {
        return Err(WriteError::SourceNotFound {
            location: template,
            date: "any date".into(),
        });
    };
    Ok(SourceObjects {
        store: loc.store,
        objects: vec![last],
        location: template,
    })
}

fn source_format(conf: &JobConf) -> Arc<dyn FileFormat> {
    match conf.source.format {
        SourceFormat::Csv => {
            let o = &conf.source.csv;
            let mut f = CsvFormat::default()
                .with_has_header(o.has_header)
                .with_delimiter(o.delimiter)
                .with_quote(o.quote)
                .with_escape(o.escape)
                .with_comment(o.comment);
            if let Some(r) = &o.null_regex {
                f = f.with_null_regex(Some(r.clone()));
            }
            Arc::new(f)
        }
        SourceFormat::Json => Arc::new(JsonFormat::default()),
        // Strings are read as plain (offset) arrays, not views: the writer copies every row into
        // its partition's bucket, and plain arrays are copied, accounted and spilled as they are
        // (a view array's size counts every buffer it points into).
        SourceFormat::Parquet => Arc::new(ParquetFormat::default().with_force_view_types(false)),
    }
}

/// `schema` with top-level string and binary views as plain (offset) arrays.
fn without_views(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            DataType::BinaryView => f.as_ref().clone().with_data_type(DataType::Binary),
            _ => f.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// The table schema of files with these schemas: every column of any of them, typed as their
/// types merge, and nullable where some file has no such column (it reads as NULL there).
fn merge_file_schemas(schemas: &[SchemaRef]) -> Result<Schema, arrow::error::ArrowError> {
    let merged = Schema::try_merge(schemas.iter().map(|s| s.as_ref().clone()))?;
    let fields: Vec<Field> = merged
        .fields()
        .iter()
        .map(|f| {
            let everywhere = schemas.iter().all(|s| s.field_with_name(f.name()).is_ok());
            f.as_ref()
                .clone()
                .with_nullable(f.is_nullable() || !everywhere)
        })
        .collect();
    Ok(Schema::new_with_metadata(fields, merged.metadata().clone()))
}

/// Registers the source as table `source` and plans the transform. Fails on an unknown column,
/// bad SQL or a non-deterministic function, before anything is written.
pub async fn plan_transform(
    ctx: &SessionContext,
    conf: &JobConf,
    date: &str,
    watermark: Option<&str>,
    source: &SourceObjects,
) -> Result<DataFrame, WriteError> {
    let format = source_format(conf);
    let schema_err = |e: DataFusionError| WriteError::SourceSchema {
        location: source.location.clone(),
        source: e,
    };
    let table = if conf.source.format == SourceFormat::Parquet {
        // Each file's schema, with string and binary views read as plain arrays: files written
        // by arrow-rs or DataFusion declare views in their embedded Arrow schema, and decoding
        // into views only to copy them out again costs a few percent of a run.
        // Each future owns what it reads (a borrowing closure would make the run's future
        // lose `Send`, whose proof cannot see through the stream's lifetimes).
        let state = Arc::new(ctx.state());
        let fetches_at_once = state
            .config_options()
            .execution
            .meta_fetch_concurrency
            .get();
        let fetches = source.objects.iter().cloned().map(|object| {
            let (format, state, store) = (
                Arc::clone(&format),
                Arc::clone(&state),
                Arc::clone(&source.store),
            );
            async move { format.infer_schema(state.as_ref(), &store, &[object]).await }
        });
        let schemas: Vec<SchemaRef> = futures::stream::iter(fetches)
            .buffered(fetches_at_once)
            .map_ok(|schema| Arc::new(without_views(&schema)))
            .try_collect()
            .await
            .map_err(schema_err)?;
        let schema = merge_file_schemas(&schemas).map_err(|e| schema_err(e.into()))?;
        FilesTable::new(
            Arc::new(schema),
            format,
            engine::SOURCE_URL,
            source.objects.clone(),
        )
        .map_err(schema_err)?
        .with_file_schemas(schemas)
    } else {
        let schema = format
            .infer_schema(&ctx.state(), &source.store, &source.objects)
            .await
            .map_err(schema_err)?;
        FilesTable::new(schema, format, engine::SOURCE_URL, source.objects.clone())
            .map_err(schema_err)?
    };
    ctx.register_table("source", Arc::new(table))
        .map_err(|e| WriteError::SourceSchema {
            location: source.location.clone(),
            source: e,
        })?;
    let conf_name = conf.path.display().to_string();
    let sql = conf.transform_for(date, watermark);
    let plan = ctx
        .state()
        .create_logical_plan(&sql)
        .await
        .map_err(|source| WriteError::Transform {
            conf: conf_name.clone(),
            source,
        })?;
    engine::read_only()
        .verify_plan(&plan)
        .map_err(|source| WriteError::NotAQuery {
            conf: conf_name.clone(),
            source,
        })?;
    if let Some(function) = non_deterministic_call(&plan) {
        return Err(WriteError::NonDeterministic {
            conf: conf_name,
            function,
        });
    }
    let mut df = DataFrame::new(ctx.state(), plan);
    if !conf.formats.is_empty() {
        df = microsecond_timestamps(df).map_err(|source| WriteError::Transform {
            conf: conf_name.clone(),
            source,
        })?;
    }
    check_columns(conf, df.schema().inner())?;
    Ok(df)
}

/// The transform with its second and millisecond timestamps as microseconds (the same
/// values): Delta and Iceberg readers read timestamps as microseconds, and some misread a
/// Parquet file whose timestamps have another unit. Nanoseconds would lose digits; the formats
/// refuse them instead (`wap check`).
fn microsecond_timestamps(df: DataFrame) -> Result<DataFrame, DataFusionError> {
    use datafusion::common::Column;
    let schema = df.schema().inner().clone();
    let coarse = |t: &DataType| {
        matches!(
            t,
            DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _)
        )
    };
    if !schema.fields().iter().any(|f| coarse(f.data_type())) {
        return Ok(df);
    }
    let exprs: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| {
            let c = Expr::Column(Column::from_name(f.name()));
            match f.data_type() {
                DataType::Timestamp(_, tz) if coarse(f.data_type()) => datafusion::prelude::cast(
                    c,
                    DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                )
                .alias(f.name()),
                _ => c,
            }
        })
        .collect();
    df.select(exprs)
}

/// The first non-deterministic (volatile or per-query stable) function the plan calls.
fn non_deterministic_call(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    found = Some(format!("{}()", f.name()));
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

fn partition_type_ok(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Date64
            | DataType::Decimal128(_, _)
            | DataType::Timestamp(_, _)
    )
}

fn check_columns(conf: &JobConf, schema: &Schema) -> Result<(), WriteError> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let err = |message: String| WriteError::Columns {
        conf: conf.path.display().to_string(),
        message,
    };
    for (what, cols) in [("partition_by", &conf.partition_by), ("key", &conf.key)] {
        for c in cols {
            let Ok(field) = schema.field_with_name(c) else {
                return Err(err(format!(
                    "{what}: column `{c}` is not in the transform's output (columns: {})",
                    names.join(", ")
                )));
            };
            if what == "partition_by" && !partition_type_ok(field.data_type()) {
                return Err(err(format!(
                    "partition_by: column `{c}` has type {}; partition by a string, integer, decimal, date, timestamp or boolean column",
                    field.data_type()
                )));
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in &names {
        if !seen.insert(*n) {
            return Err(err(format!("transform output has column `{n}` twice")));
        }
    }
    Ok(())
}

/// The schema that is written and published: field metadata dropped, every field nullable (so
/// that runs whose inference differs only in nullability stay compatible).
pub fn table_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// One partition written to staging.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedPartition {
    /// Hive path, e.g. `order_date=2024-01-02`.
    pub path: String,
    /// Partition values in `partition_by` order; `None` is NULL.
    pub values: Vec<Option<String>>,
    pub rows: u64,
    /// Files with paths relative to the table root.
    pub files: Vec<DataFile>,
}

/// Everything phase 1 produced.
#[derive(Debug, Clone)]
pub struct StagedRun {
    pub run_id: String,
    /// The staging folder of the files, relative to the table root (`staging/<run_id>`).
    pub folder: String,
    pub schema: SchemaRef,
    pub partitions: Vec<StagedPartition>,
    pub rows: u64,
}

impl StagedRun {
    /// Every staged file as object metadata, for reading them back.
    pub fn objects(&self) -> Vec<ObjectMeta> {
        self.partitions
            .iter()
            .flat_map(|p| &p.files)
            .map(crate::table::object_meta)
            .collect()
    }
}

/// Writes the run's file lists as segments in its staging folder (one PUT per
/// [`crate::manifest::SEGMENT_PARTITIONS`] partitions, whatever the table's size) and returns
/// each partition's segment path. Names are the SHA-256 of the content, so a re-run of the same
/// run writes the same objects again, and nothing can change a segment that a manifest names.
pub async fn write_segments(
    table: &Arc<dyn ObjectStore>,
    staged: &StagedRun,
) -> Result<std::collections::BTreeMap<String, String>, WriteError> {
    let segments = crate::manifest::Segment::chunked(
        staged
            .partitions
            .iter()
            .map(|p| (p.path.clone(), p.files.clone()))
            .collect(),
    );
    // Each future owns what it writes: one borrowing the segments would make the run's future
    // lose `Send` (its proof cannot see through the stream's lifetimes).
    let puts = segments.into_iter().map(|segment| {
        let (path, bytes) = segment.encode(&staged.folder);
        let table = Arc::clone(table);
        async move {
            table
                .put(&path, bytes.into())
                .await
                .map_err(|e| WriteError::Upload {
                    path: path.to_string(),
                    source: e.into(),
                })?;
            Ok::<_, WriteError>(
                segment
                    .partitions
                    .keys()
                    .map(|p| (p.clone(), path.to_string()))
                    .collect::<Vec<_>>(),
            )
        }
    });
    let written: Vec<Vec<(String, String)>> = futures::stream::iter(puts)
        .buffered(8)
        .try_collect()
        .await?;
    Ok(written.into_iter().flatten().collect())
}

/// Options of the writer.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Rows per file before a partition rolls over to `part-00001`, …
    pub max_rows_per_file: u64,
    /// Files up to this size go up in one PUT; larger ones in multipart uploads of parts this
    /// size (S3 needs at least 5 MiB), at most 4 parts in flight per file. Does not change bytes.
    pub upload_part_size: usize,
    /// Field ids for the files (`formats: [iceberg]`): `Some(base)` numbers the columns as
    /// [`crate::iceberg::schema::with_field_ids`] does on top of the base version's schema
    /// (`Some(None)`: a first version). `None`: no field ids.
    pub field_ids: Option<Option<SchemaRef>>,
    /// Counters the writer bumps as it goes (rows in and out, bytes out, partitions).
    pub progress: Option<Arc<Progress>>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            max_rows_per_file: 10_000_000,
            upload_part_size: 10 << 20,
            field_ids: None,
            progress: None,
        }
    }
}

/// Streams the transform's output into one Parquet file (or a few) per partition under
/// `staging/<run_id>/`. Each scan partition is bucketed by table partition, then one task per
/// core sorts whole partitions (see `bucket`) and feeds its own writer. A partition is sorted
/// and written whole by one task, so its files do not depend on the number of streams.
pub async fn write_staging(
    ctx: &SessionContext,
    df: DataFrame,
    conf: &JobConf,
    run_id: &str,
    table: &Arc<dyn ObjectStore>,
    options: &WriteOptions,
    source_location: &str,
) -> Result<StagedRun, WriteError> {
    let prefix = layout::staging_folder(run_id);
    write_partitions(
        ctx,
        df,
        conf,
        run_id,
        &prefix,
        table,
        options,
        source_location,
    )
    .await
}

/// The sort-only column holding [`crate::engine::RowHash`] of the non-key columns.
const TIEBREAK: &str = "__wap_tiebreak";

/// The rows of an unpartitioned table in one stream, sorted by DataFusion's spilling sort: by
/// key, then the hash of the other columns (the order [`bucket::BucketSorter`] gives each
/// partition).
async fn sort_unpartitioned(
    ctx: &SessionContext,
    df: DataFrame,
    conf: &JobConf,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let out_schema = df.schema().inner().clone();
    let mut order: Vec<String> = conf.key.clone();
    let rest: Vec<datafusion::prelude::Expr> = out_schema
        .fields()
        .iter()
        .filter(|f| !order.contains(f.name()))
        .map(|f| datafusion::prelude::ident(f.name()))
        .collect();
    let df = if rest.is_empty() {
        df
    } else {
        let hash = datafusion::execution::FunctionRegistry::udf(ctx, crate::engine::ROW_HASH)?;
        order.push(TIEBREAK.to_string());
        df.with_column(TIEBREAK, hash.call(rest))?
    };
    let plan = df.create_physical_plan().await?;
    let plan_schema = plan.schema();
    let sort_exprs = order
        .iter()
        .map(|c| {
            Ok(PhysicalSortExpr::new(
                physical_col(c, &plan_schema)?,
                bucket::ASCENDING,
            ))
        })
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    let ordering = LexOrdering::new(sort_exprs).expect("the key is never empty");
    let sorted: Arc<dyn ExecutionPlan> = Arc::new(
        SortExec::new(ordering, Arc::new(CoalescePartitionsExec::new(plan)))
            .with_preserve_partitioning(true),
    );
    // The columns written: all but the tiebreak.
    let keep = out_schema
        .fields()
        .iter()
        .map(|f| {
            Ok(ProjectionExpr::new(
                physical_col(f.name(), &plan_schema)?,
                f.name().clone(),
            ))
        })
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    let sorted = ProjectionExec::try_new(keep, sorted)?;
    sorted.execute(0, ctx.task_ctx())
}

/// [`write_staging`] under any prefix of the table (the clean rows of a quarantining run go to
/// `staging/<run_id>-clean`, its quarantined rows to `_wap/runs/<run_id>/quarantine`).
#[allow(clippy::too_many_arguments)]
pub async fn write_partitions(
    ctx: &SessionContext,
    df: DataFrame,
    conf: &JobConf,
    run_id: &str,
    prefix: &str,
    table: &Arc<dyn ObjectStore>,
    options: &WriteOptions,
    source_location: &str,
) -> Result<StagedRun, WriteError> {
    let exec_err = |source: DataFusionError| WriteError::Execute {
        run_id: run_id.to_string(),
        location: source_location.to_string(),
        source,
    };
    let out_schema = df.schema().inner().clone();
    let schema = match &options.field_ids {
        Some(base) => Arc::new(crate::iceberg::schema::with_field_ids(
            &table_schema(&out_schema),
            base.as_deref(),
        )),
        None => table_schema(&out_schema),
    };
    let task_ctx = ctx.task_ctx();
    let sorted_streams: Vec<SendableRecordBatchStream> = if conf.partition_by.is_empty() {
        if let Some(p) = &options.progress {
            Progress::add(&p.partitions_total, 1);
        }
        let sorted = sort_unpartitioned(ctx, df, conf).await.map_err(exec_err)?;
        vec![counting_rows(sorted, options.progress.clone())]
    } else {
        // One input per core (the scan's own split, no exchange): each is bucketed by
        // partition on its own; then one task per core sorts whole partitions, the largest first.
        let plan = df.create_physical_plan().await.map_err(exec_err)?;
        let streams = ctx.state().config().target_partitions().max(1);
        // A scan that cannot be split (one compressed file) is dealt round-robin so that every
        // core still buckets rows; one split further than the cores is dealt down to them.
        let count = plan.output_partitioning().partition_count();
        let plan: Arc<dyn ExecutionPlan> = if count != streams && count > 0 {
            Arc::new(
                RepartitionExec::try_new(plan, Partitioning::RoundRobinBatch(streams))
                    .map_err(exec_err)?,
            )
        } else {
            plan
        };
        let inputs = (0..plan.output_partitioning().partition_count())
            .map(|i| {
                let stream = plan.execute(i, Arc::clone(&task_ctx))?;
                Ok(counting_rows(stream, options.progress.clone()))
            })
            .collect::<Result<Vec<_>, DataFusionError>>()
            .map_err(exec_err)?;
        bucket::sort_partitions(
            inputs,
            Arc::clone(&out_schema),
            &conf.partition_by,
            &conf.key,
            Arc::clone(&task_ctx),
            streams,
            options.progress.clone(),
        )
        .map_err(exec_err)?
        .0
    };

    let part_idx: Vec<usize> = conf
        .partition_by
        .iter()
        .map(|c| out_schema.index_of(c).expect("checked in plan_transform"))
        .collect();
    let key_idx: Vec<usize> = conf
        .key
        .iter()
        .map(|c| out_schema.index_of(c).expect("checked in plan_transform"))
        .collect();

    // The column each file's rows are in order of: the first key column that is not a
    // partition column (those are constant in a file).
    let sorted = conf
        .key
        .iter()
        .find(|k| !conf.partition_by.contains(k))
        .map(|k| out_schema.index_of(k).expect("checked in plan_transform"));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, stream) in sorted_streams.into_iter().enumerate() {
        let reservation =
            MemoryConsumer::new(format!("wap writer {i}")).register(&ctx.runtime_env().memory_pool);
        let writer = PartitionWriter {
            table: Arc::clone(table),
            schema: Arc::clone(&schema),
            run_id: run_id.to_string(),
            prefix: prefix.to_string(),
            columns: conf.partition_by.clone(),
            key_idx: key_idx.clone(),
            sorted,
            options: options.clone(),
            reservation,
            current: None,
            done: Vec::new(),
        };
        tasks.spawn(writer.drain(stream, part_idx.clone(), source_location.to_string()));
    }
    let mut partitions = Vec::new();
    // A writer that fails stops the sort, and the other writers then end with
    // `WriterStopped`: that is an effect, so wait for the failed writer's own error.
    let mut stopped = None;
    while let Some(joined) = tasks.join_next().await {
        let done = joined.map_err(|e| WriteError::Upload {
            path: format!("{prefix}/"),
            source: e.into(),
        })?;
        match done {
            Ok(mut done) => partitions.append(&mut done),
            Err(e) if matches!(&e, WriteError::Execute { source, .. } if bucket::writer_stopped(source)) =>
            {
                stopped.get_or_insert(e);
            }
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    if let Some(e) = stopped {
        return Err(e);
    }
    partitions.sort_by(|a, b| a.path.cmp(&b.path));
    let rows = partitions.iter().map(|p| p.rows).sum();
    Ok(StagedRun {
        run_id: run_id.to_string(),
        folder: prefix.to_string(),
        schema,
        partitions,
        rows,
    })
}

/// `stream`, adding the rows of each batch to [`Progress::rows_in`].
fn counting_rows(
    stream: SendableRecordBatchStream,
    progress: Option<Arc<Progress>>,
) -> SendableRecordBatchStream {
    let Some(progress) = progress else {
        return stream;
    };
    let schema = stream.schema();
    let counted = stream.inspect(move |b| {
        if let Ok(b) = b {
            Progress::add(&progress.rows_in, b.num_rows() as u64);
        }
    });
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, counted))
}

fn value_at(array: &ArrayRef, idx: usize) -> Option<String> {
    if array.is_null(idx) {
        None
    } else {
        Some(array_value_to_string(array, idx).unwrap_or_default())
    }
}

struct OpenPartition {
    values: Vec<Option<String>>,
    path: String,
    part: usize,
    rows: u64,
    files: Vec<DataFile>,
    file: Option<OpenFile>,
}

struct OpenFile {
    path: String,
    /// Where the file goes; its upload starts with the first full batch (see `writer`).
    location: object_store::path::Path,
    /// Created on the first batch, whose values decide which columns get a dictionary.
    writer: Option<AsyncArrowWriter<HashingWriter>>,
    coalescer: BatchCoalescer,
    rows: u64,
    key_min: Vec<Option<String>>,
    key_max: Vec<Option<String>>,
}

impl OpenFile {
    /// Writes one batch (of `WRITE_BATCH_ROWS` rows, but for the file's last), starting the
    /// upload and choosing the writer properties on the first (`sorted`: see
    /// [`PartitionWriter::sorted`]).
    async fn write(
        &mut self,
        table: &Arc<dyn ObjectStore>,
        options: &WriteOptions,
        sorted: Option<usize>,
        batch: &RecordBatch,
    ) -> Result<(), WriteError> {
        let upload_err = |e: parquet::errors::ParquetError| WriteError::Upload {
            path: self.path.clone(),
            source: e.into(),
        };
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let sink = HashingWriter {
                    inner: BufWriter::with_capacity(
                        Arc::clone(table),
                        self.location.clone(),
                        options.upload_part_size,
                    )
                    .with_max_concurrency(UPLOAD_CONCURRENCY),
                    hasher: Sha256::new(),
                    size: 0,
                    progress: options.progress.clone(),
                };
                let writer = AsyncArrowWriter::try_new(
                    sink,
                    batch.schema(),
                    Some(writer_properties(batch, sorted)),
                )
                .map_err(upload_err)?;
                self.writer.insert(writer)
            }
        };
        writer.write(batch).await.map_err(upload_err)?;
        if let Some(p) = &options.progress {
            Progress::add(&p.rows_out, batch.num_rows() as u64);
        }
        Ok(())
    }
}

struct PartitionWriter {
    table: Arc<dyn ObjectStore>,
    schema: SchemaRef,
    run_id: String,
    /// Folder of the files, relative to the table root.
    prefix: String,
    columns: Vec<String>,
    key_idx: Vec<usize>,
    /// The column rows are sorted by in each file: the first key column that is not a
    /// partition column.
    sorted: Option<usize>,
    options: WriteOptions,
    reservation: MemoryReservation,
    current: Option<OpenPartition>,
    done: Vec<StagedPartition>,
}

/// The file's writer properties: fixed, except that columns whose `first` batch would not be
/// smaller with a dictionary are written without one (see [`plain_columns`]). `first` is the
/// file's first `WRITE_BATCH_ROWS` rows (or all of them), so the choice, like the bytes, is a
/// function of the file's rows. The `sorted` column, if an integer (or date) column, is
/// delta-encoded: ascending values take a few bits each. Public for `benches/floor.rs`, which
/// encodes a run's output again with the same settings.
pub fn writer_properties(first: &RecordBatch, sorted: Option<usize>) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_write_batch_size(WRITE_BATCH_ROWS)
        .set_created_by(format!("wap {}", env!("CARGO_PKG_VERSION")));
    let path = |name: &str| parquet::schema::types::ColumnPath::new(vec![name.to_string()]);
    for name in plain_columns(first) {
        props = props.set_column_dictionary_enabled(path(&name), false);
    }
    if let Some(c) = sorted {
        let field = first.schema_ref().field(c).clone();
        if matches!(
            field.data_type(),
            DataType::Int32 | DataType::Int64 | DataType::Date32
        ) {
            props = props
                .set_column_dictionary_enabled(path(field.name()), false)
                .set_column_encoding(path(field.name()), Encoding::DELTA_BINARY_PACKED);
        }
    }
    props.build()
}

/// The top-level columns of `batch` whose dictionary encoding would not be smaller than their
/// plain encoding: distinct values (counted by 64-bit hash; NULL counts as one) times the bytes
/// of a value, plus an index of log2(distinct) bits per row, against the bytes of every value.
/// A value's bytes: its width, or for strings and binaries their average length plus the 4-byte
/// length prefix. Other columns (nested, dictionary, boolean, …) are left alone, and so is every
/// column of a batch shorter than `DICTIONARY_SAMPLE_ROWS`.
fn plain_columns(batch: &RecordBatch) -> Vec<String> {
    let rows = batch.num_rows();
    if rows < DICTIONARY_SAMPLE_ROWS {
        return Vec::new();
    }
    let mut names = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let Some(width) = value_bytes(column) else {
            continue;
        };
        let Ok(hashes) = engine::row_hash(std::slice::from_ref(column), rows) else {
            continue;
        };
        let distinct = distinct_hashes(&hashes) as f64;
        let index_bits = distinct.max(2.0).log2().ceil();
        let dictionary = distinct * width + rows as f64 * index_bits / 8.0;
        if dictionary >= rows as f64 * width {
            names.push(field.name().clone());
        }
    }
    names
}

/// How many distinct values `hashes` holds: an open-addressing set of the hashes themselves
/// (already well mixed), at most half full. Every file's first batch is counted, column by
/// column, so this is on the write path of every file.
fn distinct_hashes(hashes: &[u64]) -> usize {
    let slots = (2 * hashes.len()).next_power_of_two().max(2);
    let shift = 64 - slots.trailing_zeros();
    let mut table = vec![0u64; slots];
    // 0 marks an empty slot: a zero hash is counted apart.
    let mut zero = false;
    let mut distinct = 0;
    for &h in hashes {
        if h == 0 {
            zero = true;
            continue;
        }
        let mut i = (h >> shift) as usize;
        loop {
            match table[i] {
                0 => {
                    table[i] = h;
                    distinct += 1;
                    break;
                }
                seen if seen == h => break,
                _ => i = (i + 1) & (slots - 1),
            }
        }
    }
    distinct + usize::from(zero)
}

/// The average bytes of one value of `column` written plainly, for the types whose
/// dictionary is worth weighing: fixed-width primitives, strings and binaries.
fn value_bytes(column: &ArrayRef) -> Option<f64> {
    let rows = column.len().max(1) as f64;
    let dt = column.data_type();
    if let Some(w) = dt.primitive_width() {
        return Some(w as f64);
    }
    let data: usize = match dt {
        DataType::Utf8 => column.as_string::<i32>().values().len(),
        DataType::LargeUtf8 => column.as_string::<i64>().values().len(),
        DataType::Binary => column.as_binary::<i32>().values().len(),
        DataType::LargeBinary => column.as_binary::<i64>().values().len(),
        DataType::Utf8View => column.as_string_view().iter().flatten().map(str::len).sum(),
        DataType::BinaryView => column
            .as_binary_view()
            .iter()
            .flatten()
            .map(<[u8]>::len)
            .sum(),
        _ => return None,
    };
    Some(data as f64 / rows + 4.0)
}

impl PartitionWriter {
    /// Writes one sorted stream, partition after partition. On failure the open upload is
    /// aborted, so no partial object (or dangling multipart upload) is left behind.
    async fn drain(
        mut self,
        stream: SendableRecordBatchStream,
        part_idx: Vec<usize>,
        source_location: String,
    ) -> Result<Vec<StagedPartition>, WriteError> {
        match self.drain_inner(stream, part_idx, source_location).await {
            Ok(()) => Ok(self.done),
            Err(e) => {
                if let Some((path, writer)) = self
                    .current
                    .as_mut()
                    .and_then(|p| p.file.take())
                    .and_then(|f| Some((f.path, f.writer?)))
                {
                    let mut sink = writer.into_inner();
                    if let Err(abort) = sink.inner.abort().await {
                        tracing::warn!(path = %path, error = %abort, "could not abort upload");
                    }
                }
                Err(e)
            }
        }
    }

    async fn drain_inner(
        &mut self,
        mut stream: SendableRecordBatchStream,
        part_idx: Vec<usize>,
        source_location: String,
    ) -> Result<(), WriteError> {
        let run_id = self.run_id.clone();
        let exec_err = |source: DataFusionError| WriteError::Execute {
            run_id: run_id.clone(),
            location: source_location.clone(),
            source,
        };
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(exec_err)?;
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec())
                .map_err(|e| exec_err(e.into()))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let ranges = if part_idx.is_empty() {
                std::iter::once(0..batch.num_rows()).collect()
            } else {
                let cols: Vec<ArrayRef> = part_idx
                    .iter()
                    .map(|&i| Arc::clone(batch.column(i)))
                    .collect();
                arrow::compute::partition(&cols)
                    .map_err(|e| exec_err(e.into()))?
                    .ranges()
            };
            for range in ranges {
                let values: Vec<Option<String>> = part_idx
                    .iter()
                    .map(|&i| value_at(batch.column(i), range.start))
                    .collect();
                self.write(&values, batch.slice(range.start, range.end - range.start))
                    .await?;
            }
        }
        self.finish_partition().await?;
        self.reservation.free();
        Ok(())
    }

    async fn write(
        &mut self,
        values: &[Option<String>],
        batch: RecordBatch,
    ) -> Result<(), WriteError> {
        if self.current.as_ref().is_none_or(|c| c.values != values) {
            self.finish_partition().await?;
            self.current = Some(OpenPartition {
                values: values.to_vec(),
                path: layout::hive_path(&self.columns, values),
                part: 0,
                rows: 0,
                files: Vec::new(),
                file: None,
            });
        }
        let mut batch = batch;
        while batch.num_rows() > 0 {
            let open = self.current.as_mut().expect("opened above");
            if open.file.is_none() {
                let rel = layout::data_file(&self.prefix, &open.path, open.part);
                let location = object_path(&rel).map_err(|message| WriteError::Upload {
                    path: rel.clone(),
                    source: UploadFault::Path(message),
                })?;
                open.file = Some(OpenFile {
                    path: rel,
                    location,
                    writer: None,
                    coalescer: BatchCoalescer::new(Arc::clone(&self.schema), WRITE_BATCH_ROWS),
                    rows: 0,
                    key_min: Vec::new(),
                    key_max: Vec::new(),
                });
            }
            let file = open.file.as_mut().expect("opened above");
            let room = (self.options.max_rows_per_file - file.rows) as usize;
            let take = room.min(batch.num_rows());
            let head = batch.slice(0, take);
            batch = batch.slice(take, batch.num_rows() - take);
            if file.rows == 0 {
                file.key_min = self
                    .key_idx
                    .iter()
                    .map(|&i| value_at(head.column(i), 0))
                    .collect();
            }
            file.key_max = self
                .key_idx
                .iter()
                .map(|&i| value_at(head.column(i), take - 1))
                .collect();
            file.rows += take as u64;
            let upload_err = |e: arrow::error::ArrowError| WriteError::Upload {
                path: file.path.clone(),
                source: e.into(),
            };
            if take == WRITE_BATCH_ROWS && file.coalescer.get_buffered_rows() == 0 {
                // Already a whole batch at a batch boundary (as the sort emits them): the
                // same batch the coalescer would make, without copying it.
                file.write(&self.table, &self.options, self.sorted, &head)
                    .await?;
            } else {
                file.coalescer.push_batch(head).map_err(upload_err)?;
                while let Some(b) = file.coalescer.next_completed_batch() {
                    file.write(&self.table, &self.options, self.sorted, &b)
                        .await?;
                }
            }
            // Accounted in the pool so that sorts spill earlier, but never refused: a row group is
            // bounded by ROW_GROUP_ROWS / ROW_GROUP_BYTES, fixed so that files stay deterministic.
            let buffered = file.writer.as_ref().map_or(0, |w| w.memory_size());
            self.reservation.resize(buffered + file.coalescer.size());
            if file.rows >= self.options.max_rows_per_file {
                self.finish_file().await?;
            }
        }
        Ok(())
    }

    async fn finish_file(&mut self) -> Result<(), WriteError> {
        let Some(open) = self.current.as_mut() else {
            return Ok(());
        };
        let Some(mut file) = open.file.take() else {
            return Ok(());
        };
        let err = |path: &str, source: UploadFault| WriteError::Upload {
            path: path.to_string(),
            source,
        };
        file.coalescer
            .finish_buffered_batch()
            .map_err(|e| err(&file.path, e.into()))?;
        while let Some(b) = file.coalescer.next_completed_batch() {
            file.write(&self.table, &self.options, self.sorted, &b)
                .await?;
        }
        // A file is opened for at least one row, so its writer exists by now.
        let Some(mut writer) = file.writer else {
            return Err(err(&file.path, UploadFault::Empty));
        };
        let footer = writer
            .finish()
            .await
            .map_err(|e| err(&file.path, e.into()))?;
        let stats = stats::file_stats(&footer, &self.schema);
        let sink = writer.into_inner();
        let sha256 = crate::manifest::hex(&sink.hasher.finalize());
        open.files.push(DataFile {
            path: file.path,
            size: sink.size,
            rows: file.rows,
            sha256,
            key_min: file.key_min,
            key_max: file.key_max,
            stats,
        });
        open.rows += file.rows;
        open.part += 1;
        self.reservation.free();
        Ok(())
    }

    async fn finish_partition(&mut self) -> Result<(), WriteError> {
        self.finish_file().await?;
        if let Some(p) = &self.options.progress
            && self.current.is_some()
        {
            Progress::add(&p.partitions_done, 1);
        }
        if let Some(open) = self.current.take()
            && open.rows > 0
        {
            self.done.push(StagedPartition {
                path: open.path,
                values: open.values,
                rows: open.rows,
                files: open.files,
            });
        }
        Ok(())
    }
}

/// Uploads through object_store's `BufWriter` (single PUT or multipart) while hashing the bytes.
struct HashingWriter {
    inner: BufWriter,
    hasher: Sha256,
    size: u64,
    progress: Option<Arc<Progress>>,
}

impl AsyncFileWriter for HashingWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.hasher.update(&bs);
        self.size += bs.len() as u64;
        if let Some(p) = &self.progress {
            Progress::add(&p.bytes_out, bs.len() as u64);
        }
        Box::pin(async move {
            self.inner
                .put(bs)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.inner
                .shutdown()
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};

    #[test]
    fn distinct_hashes_counts_like_sorting_them() {
        let mut s = 7u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s
        };
        for (rows, distinct) in [(0, 1), (1, 1), (2, 1), (8192, 1), (8192, 100), (8192, 8192)] {
            for with_zero in [false, true] {
                let values: Vec<u64> = (0..distinct).map(|_| next()).collect();
                let mut hashes: Vec<u64> = (0..rows)
                    .map(|_| values[(next() >> 33) as usize % distinct])
                    .collect();
                if with_zero && rows > 0 {
                    hashes[rows / 2] = 0;
                    hashes[0] = 0;
                }
                // Colliding slots too: hashes sharing their top bits.
                if rows > 2 {
                    hashes[1] = hashes[2] ^ 1;
                }
                let mut sorted = hashes.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(
                    distinct_hashes(&hashes),
                    sorted.len(),
                    "{rows} rows of {distinct} values, zero {with_zero}"
                );
            }
        }
    }

    #[test]
    fn only_columns_a_dictionary_would_not_shrink_lose_it() {
        let batch = |rows: i64, distinct: i64| {
            RecordBatch::try_from_iter([
                (
                    "id",
                    Arc::new(Int64Array::from_iter_values(0..rows)) as ArrayRef,
                ),
                (
                    "few",
                    Arc::new(StringArray::from_iter_values(
                        (0..rows).map(|i| format!("v{}", i % distinct)),
                    )) as ArrayRef,
                ),
                (
                    "flag",
                    Arc::new(arrow::array::BooleanArray::from_iter(
                        (0..rows).map(|i| Some(i % 2 == 0)),
                    )) as ArrayRef,
                ),
            ])
            .unwrap()
        };
        // 2,000 rows of "v<n>" (n below `distinct`): with 1,600 distinct values a dictionary
        // takes 1600 * 8.19 + 2000 * 11 / 8 = 15,854 bytes, under the 16,380 of the plain values
        // (8.19 bytes each with their length); with 1,700, 16,758 is not under 16,480.
        // 8-byte integers, all distinct: never.
        assert_eq!(plain_columns(&batch(2000, 10)), ["id"]);
        assert_eq!(plain_columns(&batch(2000, 1600)), ["id"]);
        assert_eq!(plain_columns(&batch(2000, 1700)), ["id", "few"]);
        // Too few rows to judge: every column keeps its dictionary.
        let short = (DICTIONARY_SAMPLE_ROWS - 1) as i64;
        assert!(plain_columns(&batch(short, short)).is_empty());
        let props = writer_properties(&batch(2000, 10), None);
        let path = |name: &str| parquet::schema::types::ColumnPath::new(vec![name.into()]);
        assert!(!props.dictionary_enabled(&path("id")));
        assert!(props.dictionary_enabled(&path("few")));
        assert!(props.dictionary_enabled(&path("flag")));
    }

    #[test]
    fn file_schemas_merge_views_as_plain_and_missing_columns_as_nullable() {
        let a = Arc::new(without_views(&Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8View, false),
            Field::new("b", DataType::BinaryView, true),
        ])));
        let b = Arc::new(Schema::new(vec![
            Field::new("extra", DataType::Utf8, false),
            Field::new("k", DataType::Int64, false),
        ]));
        let merged = merge_file_schemas(&[a, b]).unwrap();
        let got: Vec<(&str, &DataType, bool)> = merged
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type(), f.is_nullable()))
            .collect();
        assert_eq!(
            got,
            [
                ("k", &DataType::Int64, false),
                ("s", &DataType::Utf8, true),
                ("b", &DataType::Binary, true),
                ("extra", &DataType::Utf8, true),
            ]
        );
    }
}
