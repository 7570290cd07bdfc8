//! The DataFusion side of `wap`: one way to build a session, and a table made of an explicit list
//! of files (staged files, a published version, the source objects). Sessions write dates cast to
//! text, and dates through `to_char`, without chrono's formatter (see [`DateCastRewrite`] and
//! [`ToChar`]).
//!
//! Stores are registered under fixed `wap://` URLs so that DataFusion reads through the very
//! `Arc<dyn ObjectStore>` the job was given (wrapped or not):
//! `wap://table/` is the table root, `wap://source/` the root of the source's store.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use object_store::{ObjectMeta, ObjectStore};

mod date_format;
mod date_text;
mod date_trunc;
mod key;
pub use date_format::ToChar;
pub use date_text::{DateCastRewrite, DateText};
pub use date_trunc::{DateTrunc, TimestampDate, TimestampDateRewrite};
pub use key::{WAP_KEY, WapKey};

/// URL under which the table store is registered.
pub const TABLE_URL: &str = "wap://table/";
/// URL under which the source store is registered.
pub const SOURCE_URL: &str = "wap://source/";

/// Default memory budget for one job's queries (sorts spill to disk beyond it). Half a GiB: what
/// is outside the pool (Parquet reading and writing buffers, the allocator) comes on top, and the
/// whole process should stay under 1 GiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 512 << 20;

/// Settings for a session.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Memory pool size in bytes shared by sorts and writers; sorts spill beyond it.
    pub memory_limit: usize,
    /// Rows per batch inside DataFusion.
    pub batch_size: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            batch_size: 8192,
        }
    }
}

/// Parses a memory size: bytes, or a number with `KiB`, `MiB` or `GiB`.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1usize << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

/// A session with the table store (and optionally the source store) registered.
pub fn session(
    options: &EngineOptions,
    table: Arc<dyn ObjectStore>,
    source: Option<Arc<dyn ObjectStore>>,
) -> DfResult<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(options.memory_limit)))
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_batch_size(options.batch_size)
        .with_information_schema(false);
    // Keep the reservation a sort holds back for merging small relative to tight budgets.
    let reserve = (options.memory_limit / 8).min(10 << 20);
    config.options_mut().execution.sort_spill_reservation_bytes = reserve;
    let mut ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_udaf(datafusion::logical_expr::AggregateUDF::from(
        CountTrue::default(),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(RowHash::default()));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(WapKey::default()));
    // In place of the built-in `to_char` (and `date_format`), which it calls for all it does
    // not write itself.
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(ToChar::default()));
    // In place of the built-in `date_trunc`, likewise.
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
        DateTrunc::default(),
    ));
    datafusion::execution::FunctionRegistry::register_function_rewrite(
        &mut ctx,
        Arc::new(DateCastRewrite),
    )?;
    datafusion::execution::FunctionRegistry::register_function_rewrite(
        &mut ctx,
        Arc::new(TimestampDateRewrite),
    )?;
    ctx.register_object_store(&url::Url::parse(TABLE_URL).expect("static url"), table);
    if let Some(source) = source {
        ctx.register_object_store(&url::Url::parse(SOURCE_URL).expect("static url"), source);
    }
    Ok(ctx)
}

/// SQL options for user SQL (audit rules, `wap query`): queries only.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A table made of an explicit list of files in one registered store. Reading it makes no
/// listing request: the files and their sizes are known (from a manifest or a listing done once).
#[derive(Debug)]
pub struct FilesTable {
    schema: SchemaRef,
    format: Arc<dyn FileFormat>,
    store_url: ObjectStoreUrl,
    files: Vec<ObjectMeta>,
    /// Each file's own Arrow schema, when known (Parquet sources): the reader decodes straight
    /// into these types instead of the ones the file's embedded `ARROW:schema` names.
    file_schemas: Option<Vec<SchemaRef>>,
}

impl FilesTable {
    /// A table over `files` (paths inside the store registered at `store_url`).
    pub fn new(
        schema: SchemaRef,
        format: Arc<dyn FileFormat>,
        store_url: &str,
        files: Vec<ObjectMeta>,
    ) -> DfResult<Self> {
        Ok(FilesTable {
            schema,
            format,
            store_url: ObjectStoreUrl::parse(store_url)?,
            files,
            file_schemas: None,
        })
    }

    /// Reads each of the files (Parquet only) as the schema at the same index says: their own
    /// columns, in their own order, with the types to decode them into.
    pub fn with_file_schemas(mut self, schemas: Vec<SchemaRef>) -> Self {
        debug_assert_eq!(schemas.len(), self.files.len());
        self.file_schemas = Some(schemas);
        self
    }
}

impl FilesTable {
    /// The files of the table.
    pub fn files(&self) -> &[ObjectMeta] {
        &self.files
    }

    /// The URL of the store the files are in.
    pub fn store_url(&self) -> &ObjectStoreUrl {
        &self.store_url
    }
}

#[async_trait]
impl TableProvider for FilesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let target = state.config().target_partitions().max(1);
        let files: Vec<PartitionedFile> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, meta)| {
                let file = PartitionedFile::from(meta.clone());
                match self.file_schemas.as_ref().and_then(|s| s.get(i)) {
                    Some(schema) => file.with_arrow_schema(Arc::clone(schema)),
                    None => file,
                }
            })
            .collect();
        let groups = FileGroup::new(files).split_files(target);
        let source = self.format.file_source(Arc::clone(&self.schema).into());
        let conf = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        self.format.create_physical_plan(state, conf).await
    }
}

/// `wap_row_hash(a, b, ...)`: a 64-bit hash of the arguments, the same in every run of the same
/// build (fixed seed). The writer sorts rows by partition columns, key, then this hash of the
/// other columns: a total order that makes files deterministic even when keys repeat, without
/// comparing every column (rows that hash alike and share a key are, barring a 64-bit collision,
/// identical, so their order does not change the bytes).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RowHash {
    signature: datafusion::logical_expr::Signature,
}

impl Default for RowHash {
    fn default() -> Self {
        RowHash {
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

/// The SQL name of [`RowHash`].
pub const ROW_HASH: &str = "wap_row_hash";

impl datafusion::logical_expr::ScalarUDFImpl for RowHash {
    fn name(&self) -> &str {
        ROW_HASH
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _: &[datafusion::arrow::datatypes::DataType],
    ) -> DfResult<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::UInt64)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> DfResult<datafusion::logical_expr::ColumnarValue> {
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            datafusion::arrow::array::UInt64Array::from(row_hash(&arrays, args.number_rows)?),
        )))
    }
}

/// What [`RowHash`] computes, for `rows` rows of `arrays`: the writer's sorts call it directly.
pub fn row_hash(arrays: &[datafusion::arrow::array::ArrayRef], rows: usize) -> DfResult<Vec<u64>> {
    let mut hashes = vec![0u64; rows];
    datafusion::common::hash_utils::create_hashes(
        arrays,
        &datafusion::common::hash_utils::HLL_RANDOM_STATE,
        &mut hashes,
    )?;
    Ok(hashes)
}

/// `wap_count_true(predicate)`: how many rows a boolean expression is TRUE for. One popcount per
/// batch instead of materialising `CASE WHEN p THEN 1 ELSE 0 END` and summing it: this is what
/// the shared audit scan counts failing rows with.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CountTrue {
    signature: datafusion::logical_expr::Signature,
}

impl Default for CountTrue {
    fn default() -> Self {
        CountTrue {
            signature: datafusion::logical_expr::Signature::exact(
                vec![datafusion::arrow::datatypes::DataType::Boolean],
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

/// The SQL name of [`CountTrue`].
pub const COUNT_TRUE: &str = "wap_count_true";

impl datafusion::logical_expr::AggregateUDFImpl for CountTrue {
    fn name(&self) -> &str {
        COUNT_TRUE
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _: &[datafusion::arrow::datatypes::DataType],
    ) -> DfResult<datafusion::arrow::datatypes::DataType> {
        Ok(datafusion::arrow::datatypes::DataType::Int64)
    }

    fn accumulator(
        &self,
        _: datafusion::logical_expr::function::AccumulatorArgs,
    ) -> DfResult<Box<dyn datafusion::logical_expr::Accumulator>> {
        Ok(Box::new(CountTrueAccumulator(0)))
    }

    fn state_fields(
        &self,
        _: datafusion::logical_expr::function::StateFieldsArgs,
    ) -> DfResult<Vec<datafusion::arrow::datatypes::FieldRef>> {
        Ok(vec![Arc::new(datafusion::arrow::datatypes::Field::new(
            "count",
            datafusion::arrow::datatypes::DataType::Int64,
            true,
        ))])
    }
}

#[derive(Debug)]
struct CountTrueAccumulator(i64);

impl datafusion::logical_expr::Accumulator for CountTrueAccumulator {
    fn update_batch(&mut self, values: &[datafusion::arrow::array::ArrayRef]) -> DfResult<()> {
        use datafusion::arrow::array::AsArray;
        // true_count only counts valid TRUE slots: NULL is not TRUE.
        self.0 += values[0].as_boolean().true_count() as i64;
        Ok(())
    }

    fn merge_batch(&mut self, states: &[datafusion::arrow::array::ArrayRef]) -> DfResult<()> {
        use datafusion::arrow::array::AsArray;
        let counts = states[0].as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        self.0 += counts.iter().flatten().sum::<i64>();
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<datafusion::common::ScalarValue>> {
        Ok(vec![datafusion::common::ScalarValue::Int64(Some(self.0))])
    }

    fn evaluate(&mut self) -> DfResult<datafusion::common::ScalarValue> {
        Ok(datafusion::common::ScalarValue::Int64(Some(self.0)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::RecordBatch;
    use datafusion::prelude::DataFrame;
    use object_store::memory::InMemory;

    /// The optimized logical plan of `df`, as text.
    fn optimized_plan(df: &DataFrame) -> String {
        df.clone()
            .into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string()
    }

    fn column_names(batches: &[RecordBatch]) -> Vec<String> {
        batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    fn pretty(batches: &[RecordBatch]) -> String {
        arrow::util::pretty::pretty_format_batches(batches)
            .unwrap()
            .to_string()
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(super::parse_size("1048576"), Some(1 << 20));
        assert_eq!(super::parse_size("512MiB"), Some(512 << 20));
        assert_eq!(super::parse_size(" 2GiB "), Some(2 << 30));
        assert_eq!(super::parse_size("64KiB"), Some(64 << 10));
        assert_eq!(super::parse_size("lots"), None);
        assert_eq!(super::parse_size("1.5GiB"), None);
    }

    #[tokio::test]
    async fn count_true_counts_only_true() {
        let ctx = session(&EngineOptions::default(), Arc::new(InMemory::new()), None).unwrap();
        let batches = ctx
            .sql("SELECT wap_count_true(x) AS n, wap_count_true(x AND false) AS none FROM (VALUES (true), (false), (NULL), (true)) AS t(x)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = pretty(&batches);
        assert!(text.contains("| 2 | 0    |"), "{text}");
    }

    #[tokio::test]
    async fn date_casts_to_text_are_rewritten_and_give_the_same_text() {
        let ctx = session(&EngineOptions::default(), Arc::new(InMemory::new()), None).unwrap();
        let sql = "SELECT CAST(d AS VARCHAR), substr(CAST(d AS TEXT), 1, 7) AS month, \
                   arrow_cast(d, 'LargeUtf8') AS large, CAST(CAST(d AS INT) AS VARCHAR) AS n, \
                   CAST(DATE '1999-12-31' AS VARCHAR) AS constant \
                   FROM (VALUES (DATE '1992-01-02'), (NULL), (DATE '2000-02-29')) AS t(d)";
        let df = ctx.sql(sql).await.unwrap();
        let plan = optimized_plan(&df);
        assert!(plan.contains("wap_date_text_view"), "{plan}");
        let batches = df.collect().await.unwrap();
        let names = column_names(&batches);
        assert_eq!(names, ["t.d", "month", "large", "n", "constant"]);
        let text = pretty(&batches);
        assert!(
            text.contains("| 1992-01-02 | 1992-01 | 1992-01-02 | 8036  | 1999-12-31 |"),
            "{text}"
        );
        assert!(
            text.contains("| 2000-02-29 | 2000-02 | 2000-02-29 | 11016 | 1999-12-31 |"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn date_trunc_and_timestamp_casts_to_dates_are_ours_and_give_the_same_values() {
        let ctx = session(&EngineOptions::default(), Arc::new(InMemory::new()), None).unwrap();
        for name in ["date_trunc", "datetrunc"] {
            let udf = datafusion::execution::FunctionRegistry::udf(&ctx, name).unwrap();
            assert!(
                format!("{:?}", udf.inner()).starts_with("DateTrunc"),
                "{name}"
            );
        }
        let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS month, \
                   date_trunc('quarter', d) AS quarter, CAST(ts AS DATE) AS day, \
                   CAST(date_trunc('week', ts) AS DATE) AS week, \
                   CAST(date_trunc('YEAR', arrow_cast(ts, 'Timestamp(Second, None)')) AS DATE) AS year \
                   FROM (VALUES (DATE '1992-01-02', TIMESTAMP '2000-02-29 23:59:59.999'), \
                   (NULL, NULL), (DATE '2000-12-31', TIMESTAMP '1969-12-31 00:00:01')) AS t(d, ts)";
        let df = ctx.sql(sql).await.unwrap();
        let plan = optimized_plan(&df);
        assert!(plan.contains("wap_timestamp_ns_date"), "{plan}");
        assert!(plan.contains("wap_timestamp_s_date"), "{plan}");
        let batches = df.collect().await.unwrap();
        let names = column_names(&batches);
        assert_eq!(names, ["month", "quarter", "day", "week", "year"]);
        let text = pretty(&batches);
        assert!(
            text.contains(
                "| 1992-01-01 | 1992-01-01T00:00:00 | 2000-02-29 | 2000-02-28 | 2000-01-01 |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| 2000-12-01 | 2000-10-01T00:00:00 | 1969-12-31 | 1969-12-29 | 1969-01-01 |"
            ),
            "{text}"
        );
        // A time zone is DataFusion's and Arrow's business: not rewritten.
        let df = ctx
            .sql("SELECT CAST(z AS DATE) AS d FROM (VALUES (arrow_cast(TIMESTAMP '2000-01-01 01:00:00', \
                  'Timestamp(Nanosecond, Some(\"+05:00\"))'))) AS t(z)")
            .await
            .unwrap();
        let plan = optimized_plan(&df);
        assert!(!plan.contains("wap_timestamp"), "{plan}");
        assert!(plan.contains("CAST(t.z AS Date32)"), "{plan}");
    }

    #[tokio::test]
    async fn to_char_and_date_format_are_ours_and_give_the_same_text() {
        let ctx = session(&EngineOptions::default(), Arc::new(InMemory::new()), None).unwrap();
        for name in ["to_char", "date_format"] {
            let udf = datafusion::execution::FunctionRegistry::udf(&ctx, name).unwrap();
            assert!(format!("{:?}", udf.inner()).starts_with("ToChar"), "{name}");
        }
        let sql = "SELECT to_char(d, '%Y-%m') AS month, date_format(d, '%d %B %Y') AS long, \
                   to_char(d, '%Y-%m-%d %H:%M') AS with_time \
                   FROM (VALUES (DATE '1992-01-02'), (NULL), (DATE '2000-02-29')) AS t(d)";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = pretty(&batches);
        // The time fields are DataFusion's own (a date at midnight).
        assert!(
            text.contains("| 1992-01 | 02 January 1992  | 1992-01-02 00:00 |"),
            "{text}"
        );
        assert!(
            text.contains("| 2000-02 | 29 February 2000 | 2000-02-29 00:00 |"),
            "{text}"
        );
    }
}
