//! Reading the staged files directly (not through SQL): their footers, a file's key columns as
//! a stream, and what can go wrong doing so. Used by the metadata proofs and the `unique`
//! strategies.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::datatypes::DataType;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

/// How many footers are read at once.
const CONCURRENCY: usize = 16;
/// Rows per batch read from each file.
pub(super) const BATCH_ROWS: usize = 8192;

/// Why a strategy did not give the counts.
#[derive(Debug)]
pub(super) enum Declined {
    /// It does not apply to these columns or files (the reason, in words).
    NotApplicable(String),
    /// A staged file could not be read.
    Fault(ReadFault),
}

impl From<ReadFault> for Declined {
    fn from(fault: ReadFault) -> Self {
        Declined::Fault(fault)
    }
}

/// A staged file that could not be read by a `unique` strategy or the proofs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadFault {
    #[error("unable to read staged file {path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("unable to decode the key columns of staged file {path}: {source}")]
    Arrow {
        path: String,
        source: arrow::error::ArrowError,
    },
    #[error("staged file {path} has no column `{column}`")]
    Column { path: String, column: String },
    #[error("the reader of staged file {path} stopped before its end (task failed)")]
    Stopped { path: String },
}

/// A staged file with its footer.
#[derive(Debug)]
pub(super) struct Footer {
    pub(super) file: ObjectMeta,
    pub(super) meta: ArrowReaderMetadata,
}

/// Every file's footer (one ranged read each, concurrently).
pub(super) async fn footers(
    store: &Arc<dyn ObjectStore>,
    files: &[ObjectMeta],
) -> Result<Vec<Footer>, ReadFault> {
    futures::stream::iter(files.iter().cloned())
        .map(|file| {
            let store = Arc::clone(store);
            async move {
                // Deprecated in favour of a hand-written AsyncFileReader; it reads exactly the
                // footer.
                #[allow(deprecated)]
                let mut reader = parquet::arrow::async_reader::ParquetObjectReader::new(
                    store,
                    file.location.clone(),
                )
                .with_file_size(file.size);
                match ArrowReaderMetadata::load_async(&mut reader, Default::default()).await {
                    Ok(meta) => Ok(Footer { file, meta }),
                    Err(source) => Err(ReadFault::Parquet {
                        path: file.location.to_string(),
                        source,
                    }),
                }
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// A column's statistics in each row group of one file, as Arrow arrays of the column's type:
/// min and max (NULL where the group has none), whether both are exact, the null count, and
/// the group's rows.
pub(super) struct GroupStats {
    pub(super) mins: ArrayRef,
    pub(super) maxes: ArrayRef,
    pub(super) exact: arrow::array::BooleanArray,
    pub(super) nulls: arrow::array::UInt64Array,
    pub(super) rows: Vec<i64>,
}

/// `column`'s [`GroupStats`] in `footer`'s file; `None` when they cannot be read.
pub(super) fn group_stats(column: &str, footer: &Footer) -> Option<GroupStats> {
    let m = &footer.meta;
    let conv = StatisticsConverter::try_new(column, m.schema(), m.parquet_schema()).ok()?;
    let groups = m.metadata().row_groups();
    let exact = arrow::compute::and(
        &conv.row_group_is_min_value_exact(groups).ok()?,
        &conv.row_group_is_max_value_exact(groups).ok()?,
    )
    .ok()?;
    Some(GroupStats {
        mins: conv.row_group_mins(groups).ok()?,
        maxes: conv.row_group_maxes(groups).ok()?,
        exact,
        nulls: conv.row_group_null_counts(groups).ok()?,
        rows: groups.iter().map(|g| g.num_rows()).collect(),
    })
}

/// A stream of the `columns` of `file`, with its `footer` if already read. Declines when a
/// column is not in the file; fails when the file cannot be opened.
pub(super) async fn open(
    store: &Arc<dyn ObjectStore>,
    file: &ObjectMeta,
    columns: &[String],
    footer: Option<ArrowReaderMetadata>,
) -> Result<BoxStream<'static, parquet::errors::Result<RecordBatch>>, Declined> {
    let fault = |source| {
        Declined::Fault(ReadFault::Parquet {
            path: file.location.to_string(),
            source,
        })
    };
    // Deprecated in favour of a hand-written AsyncFileReader; it reads ranges as asked.
    #[allow(deprecated)]
    let reader = parquet::arrow::async_reader::ParquetObjectReader::new(
        Arc::clone(store),
        file.location.clone(),
    )
    .with_file_size(file.size);
    let builder = match footer {
        Some(meta) => ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta),
        None => ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(fault)?,
    };
    let roots = columns
        .iter()
        .map(|c| {
            builder.schema().index_of(c).map_err(|_| {
                Declined::NotApplicable(format!("column `{c}` is not in {}", file.location))
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let stream = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(fault)?;
    Ok(stream.boxed())
}

/// The key `columns` of `batch`, and which rows have no NULL in any of them (`None`: all);
/// `None` when a column is missing.
pub(super) fn key_columns(
    batch: &RecordBatch,
    columns: &[String],
) -> Option<(Vec<ArrayRef>, Option<NullBuffer>)> {
    let arrays = columns
        .iter()
        .map(|c| batch.column_by_name(c).cloned())
        .collect::<Option<Vec<_>>>()?;
    let mut valid: Option<NullBuffer> = None;
    for a in &arrays {
        valid = NullBuffer::union(valid.as_ref(), a.logical_nulls().as_ref());
    }
    Some((arrays, valid))
}

/// The width in bytes of a type the row format encodes as an integer of that width, and
/// whether it is signed.
pub(super) fn integer_layout(t: &DataType) -> Option<(usize, bool)> {
    use DataType as D;
    Some(match t {
        D::Int8 => (1, true),
        D::Int16 => (2, true),
        D::Int32 | D::Date32 | D::Time32(_) => (4, true),
        D::Int64 | D::Date64 | D::Time64(_) | D::Timestamp(..) | D::Duration(_) => (8, true),
        D::UInt8 => (1, false),
        D::UInt16 => (2, false),
        D::UInt32 => (4, false),
        D::UInt64 => (8, false),
        _ => return None,
    })
}
