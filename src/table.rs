//! Reading a published version with DataFusion: a version's files become one table, with no
//! listing (the manifest names every file) and never a staged file of an unpublished run.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::ObjectMeta;

use crate::engine::{self, FilesTable};
use crate::manifest::{DataFile, Manifest};
use crate::store::object_path;

/// Errors reading or querying a version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error(
        "table {table} has no published version yet\nhelp: `wap run --conf FILE --date YYYY-MM-DD` publishes the first one"
    )]
    Empty { table: String },
    #[error("query failed: {message}")]
    Query { message: String },
    #[error("query execution failed: {message}")]
    Execute { message: String },
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

/// Registers `manifest` (or an empty table of `schema` when `None`) as table `name`.
pub fn register_version(
    ctx: &SessionContext,
    name: &str,
    manifest: Option<&Manifest>,
    schema: SchemaRef,
) -> Result<(), TableError> {
    let (schema, files) = match manifest {
        Some(m) => (m.schema_ref(), m.files().map(object_meta).collect()),
        None => (schema, Vec::new()),
    };
    let table = files_table(schema, files)?;
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
        .map_err(|e| {
            let message = e.strip_backtrace().to_string();
            if message.contains("not supported")
                && (message.contains("DDL")
                    || message.contains("DML")
                    || message.contains("Statement"))
            {
                TableError::NotReadOnly { message }
            } else {
                TableError::Query { message }
            }
        })
}

/// Refuses anything but exactly one query statement.
pub fn check_single_query(sql: &str) -> Result<(), TableError> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
    let statements = DFParser::parse_sql(sql).map_err(|e| TableError::Query {
        message: e.to_string(),
    })?;
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
    df.collect().await.map_err(|e| TableError::Execute {
        message: e.strip_backtrace().to_string(),
    })
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
