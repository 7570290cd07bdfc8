//! Reading a published version with DataFusion: a version's files become one table, with no
//! listing (the manifest names every file) and never a staged file of an unpublished run.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::ObjectMeta;

use crate::engine::{self, FilesTable};
use crate::manifest::{DataFile, Manifest, Partition};
use crate::store::object_path;
use crate::versions;

/// Errors reading or querying a version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error(
        "table {table} has no published version yet\nhelp: `wap run --conf FILE --date YYYY-MM-DD` publishes the first one"
    )]
    Empty { table: String },
    #[error("query failed: {}", .source.strip_backtrace())]
    Query { source: DataFusionError },
    #[error("query execution failed: {}", .source.strip_backtrace())]
    Execute { source: DataFusionError },
    #[error("unable to start the query engine: {}", .source.strip_backtrace())]
    Engine { source: DataFusionError },
    #[error("unable to print the query result: {source}")]
    Render { source: arrow::error::ArrowError },
    #[error("query refused: {message}\nhelp: `wap query` runs a single read-only SELECT")]
    NotReadOnly { message: String },
    #[error("unable to register {name}: {source}")]
    Register {
        name: String,
        source: DataFusionError,
    },
}

impl TableError {
    /// True when the request itself was wrong (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TableError::Query { .. } | TableError::NotReadOnly { .. }
        )
    }
}

/// Object metadata of a manifest file (size known, no request needed).
pub fn object_meta(f: &DataFile) -> ObjectMeta {
    ObjectMeta {
        location: object_path(&f.path)
            .unwrap_or_else(|_| object_store::path::Path::from(f.path.as_str())),
        last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        size: f.size,
        e_tag: None,
        version: None,
    }
}

/// A table over Parquet files of the table store.
pub fn files_table(schema: SchemaRef, files: Vec<ObjectMeta>) -> Result<FilesTable, TableError> {
    files_table_at(engine::TABLE_URL, schema, files)
}

/// A table over Parquet files of the store registered at `store_url`.
pub fn files_table_at(
    store_url: &str,
    schema: SchemaRef,
    files: Vec<ObjectMeta>,
) -> Result<FilesTable, TableError> {
    FilesTable::new(schema, Arc::new(ParquetFormat::default()), store_url, files).map_err(
        |source| TableError::Register {
            name: "files".into(),
            source,
        },
    )
}

/// A table over files of a registered store, some known (staged files, format-1 partitions) and
/// some named by partitions whose file lists are in segments. The segments are read at the first
/// scan, once: a session that never reads the table never reads them.
#[derive(Debug)]
pub struct VersionTable {
    schema: SchemaRef,
    store_url: String,
    known: Vec<ObjectMeta>,
    pending: Vec<Partition>,
    files: tokio::sync::OnceCell<Arc<FilesTable>>,
}

impl VersionTable {
    /// A table over `known` files and the files of `partitions`, in the store at `store_url`.
    pub fn new<'a>(
        store_url: &str,
        schema: SchemaRef,
        known: Vec<ObjectMeta>,
        partitions: impl IntoIterator<Item = &'a Partition>,
    ) -> Result<Self, TableError> {
        ObjectStoreUrl::parse(store_url).map_err(|source| TableError::Register {
            name: store_url.into(),
            source,
        })?;
        let mut known = known;
        let mut pending = Vec::new();
        for p in partitions {
            if p.files_known() {
                known.extend(p.files.iter().map(object_meta));
            } else {
                pending.push(p.clone());
            }
        }
        Ok(VersionTable {
            schema,
            store_url: store_url.to_string(),
            known,
            pending,
            files: tokio::sync::OnceCell::new(),
        })
    }

    /// A table over every file of `manifest`, in the table store.
    pub fn of(manifest: &Manifest) -> Result<Self, TableError> {
        Self::new(
            engine::TABLE_URL,
            manifest.schema_ref(),
            Vec::new(),
            manifest.partitions.values(),
        )
    }

    async fn files(&self, state: &dyn Session) -> DfResult<&Arc<FilesTable>> {
        self.files
            .get_or_try_init(|| async {
                let url = ObjectStoreUrl::parse(&self.store_url)?;
                let store = state.runtime_env().object_store(&url)?;
                let mut files = self.known.clone();
                let resolved = versions::files_of(&store, &self.pending)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                files.extend(resolved.iter().map(object_meta));
                let table = FilesTable::new(
                    Arc::clone(&self.schema),
                    Arc::new(ParquetFormat::default()),
                    &self.store_url,
                    files,
                )?;
                Ok(Arc::new(table))
            })
            .await
    }
}

#[async_trait]
impl TableProvider for VersionTable {
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
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.files(state)
            .await?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// Registers `manifest` (or an empty table of `schema` when `None`) as table `name`. File lists
/// in segments are read when the table is first scanned.
pub fn register_version(
    ctx: &SessionContext,
    name: &str,
    manifest: Option<&Manifest>,
    schema: SchemaRef,
) -> Result<(), TableError> {
    let table = match manifest {
        Some(m) => VersionTable::of(m)?,
        None => VersionTable::new(engine::TABLE_URL, schema, Vec::new(), [])?,
    };
    ctx.register_table(name, Arc::new(table))
        .map_err(|source| TableError::Register {
            name: name.to_string(),
            source,
        })?;
    Ok(())
}

/// Plans a read-only query (refusing DDL, DML, COPY and statements).
pub async fn plan_query(ctx: &SessionContext, sql: &str) -> Result<DataFrame, TableError> {
    check_single_query(sql)?;
    ctx.sql_with_options(sql, engine::read_only())
        .await
        .map_err(|source| {
            let message = source.strip_backtrace().to_string();
            if message.contains("not supported")
                && (message.contains("DDL")
                    || message.contains("DML")
                    || message.contains("Statement"))
            {
                TableError::NotReadOnly { message }
            } else {
                TableError::Query { source }
            }
        })
}

/// Refuses anything but exactly one query statement.
pub fn check_single_query(sql: &str) -> Result<(), TableError> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
    let statements = DFParser::parse_sql(sql).map_err(|source| TableError::Query { source })?;
    if statements.len() != 1 {
        return Err(TableError::NotReadOnly {
            message: format!("expected one statement, found {}", statements.len()),
        });
    }
    match &statements[0] {
        Statement::Statement(s) if matches!(**s, SqlStatement::Query(_)) => Ok(()),
        other => Err(TableError::NotReadOnly {
            message: format!("`{}` is not a query", first_words(&other.to_string())),
        }),
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Runs a query to completion (for small results such as samples and counts).
pub async fn collect(df: DataFrame) -> Result<Vec<RecordBatch>, TableError> {
    df.collect()
        .await
        .map_err(|source| TableError::Execute { source })
}

/// Rows as a JSON array of objects, NULLs kept as `null` (`[]` when there are none).
pub fn json_rows(batches: &[RecordBatch]) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buf);
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            w.write(b)?;
        }
        w.finish()?;
    }
    if buf.is_empty() {
        buf.extend_from_slice(b"[]");
    }
    Ok(buf)
}
