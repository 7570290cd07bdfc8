//! Row-level rules proven to pass from Parquet metadata, so the shared scan can leave them out.
//!
//! Three proofs, each exact (a rule is proven only if no row can fail it) and each falling back
//! to the scan when anything is missing or unreadable:
//! - `not_null`: every row group's null count is 0.
//! - `range` over integer, decimal and date columns: every row group's exact min and max pass
//!   (floats are left out because statistics skip NaN).
//! - Any `accepted_values`, `range` or `expression` rule that depends on ONE column, when that
//!   column is dictionary-encoded in every row group: the failing predicate is evaluated over the
//!   dictionary values (plus a NULL unless the statistics say there is none). A row's value is
//!   one of those, so if none fails, no row does. This covers low-cardinality columns, which is
//!   where `accepted_values` rules live, for the price of reading the dictionary pages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, PrimitiveArray, RecordBatch};
use arrow::datatypes::{ArrowPrimitiveType, Float32Type, Float64Type, Int32Type, Int64Type};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::{Buf, Bytes};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use parquet::basic::{Encoding, Type as Physical};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;

use super::StagedFiles;
use super::files::{Footer, group_stats};
use super::sql;
use crate::conf::rules::{Rule, RuleKind, Scope};

/// How many dictionary fetches are in flight at once.
const CONCURRENCY: usize = 16;

/// The names of the staged-scope rules in `rules` that the Parquet metadata of the staged
/// `files` (their `footers`, and dictionary pages where needed) proves to pass. Anything
/// unproven is left to the scan.
pub(super) async fn proven(
    ctx: &SessionContext,
    files: &StagedFiles,
    footers: &[Footer],
    rules: &[&Rule],
) -> HashSet<String> {
    let mut proven = HashSet::new();
    let schema = &files.schema;
    // Each column's dictionary values are fetched once, however many rules use them.
    let mut dictionaries: HashMap<String, Option<ArrayRef>> = HashMap::new();
    for rule in rules.iter().filter(|r| r.scope == Scope::Staged) {
        let done = match &rule.kind {
            RuleKind::NotNull(cols) => cols.iter().all(|c| no_nulls(c, footers)),
            RuleKind::Range { column, .. } => {
                range_by_statistics(ctx, rule, column, schema, footers).await
            }
            _ => false,
        };
        let done = done
            || match single_column(ctx, rule, schema) {
                Some(column) => {
                    if !dictionaries.contains_key(&column) {
                        let values =
                            dictionary_values(&files.store, &column, schema, footers).await;
                        dictionaries.insert(column.clone(), values);
                    }
                    match &dictionaries[&column] {
                        Some(values) => {
                            no_value_fails(ctx, rule, &column, Arc::clone(values)).await
                        }
                        None => false,
                    }
                }
                None => false,
            };
        if done {
            proven.insert(rule.name.clone());
        }
    }
    proven
}

fn no_nulls(column: &str, footers: &[Footer]) -> bool {
    footers.iter().all(|f| {
        group_stats(column, f)
            .is_some_and(|s| s.nulls.null_count() == 0 && s.nulls.values().iter().all(|n| *n == 0))
    })
}

/// Every value lies between its row group's exact min and max, so if none of those fails the
/// (monotonic) range predicate, no row does.
async fn range_by_statistics(
    ctx: &SessionContext,
    rule: &Rule,
    column: &str,
    schema: &Schema,
    footers: &[Footer],
) -> bool {
    use DataType as D;
    let exact_type = schema.field_with_name(column).is_ok_and(|f| {
        matches!(
            f.data_type(),
            D::Int8
                | D::Int16
                | D::Int32
                | D::Int64
                | D::UInt8
                | D::UInt16
                | D::UInt32
                | D::UInt64
                | D::Decimal128(_, _)
                | D::Date32
        )
    });
    if !exact_type {
        return false;
    }
    let mut bounds = Vec::new();
    for f in footers {
        let Some(stats) = group_stats(column, f) else {
            return false;
        };
        if stats.exact.null_count() > 0 || stats.exact.true_count() < stats.exact.len() {
            return false;
        }
        bounds.push(stats.mins);
        bounds.push(stats.maxes);
    }
    let refs: Vec<&dyn Array> = bounds.iter().map(|a| a.as_ref()).collect();
    let Ok(values) = arrow::compute::concat(&refs) else {
        return false;
    };
    if values.null_count() > 0 {
        return false;
    }
    no_value_fails(ctx, rule, column, values).await
}

/// True when the rule's failing predicate holds for none of `values` (a column named `column`).
async fn no_value_fails(ctx: &SessionContext, rule: &Rule, column: &str, values: ArrayRef) -> bool {
    let Some(pred) = sql::failing_predicate(&rule.kind) else {
        return false;
    };
    let field = Field::new(column, values.data_type().clone(), true);
    let Ok(batch) = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![values]) else {
        return false;
    };
    let Ok(df) = ctx.read_batch(batch) else {
        return false;
    };
    let Ok(expr) = df.parse_sql_expr(&pred) else {
        return false;
    };
    let Ok(df) = df.filter(expr) else {
        return false;
    };
    matches!(df.count().await, Ok(0))
}

/// The one column a row-level rule's verdict on a row depends on, if there is exactly one and
/// the rule is deterministic.
fn single_column(ctx: &SessionContext, rule: &Rule, schema: &Schema) -> Option<String> {
    match &rule.kind {
        RuleKind::AcceptedValues { column, .. } | RuleKind::Range { column, .. } => {
            Some(column.clone())
        }
        RuleKind::Expression(e) => {
            let df_schema = datafusion::common::DFSchema::try_from(schema.clone()).ok()?;
            let expr = ctx.parse_sql_expr(e, &df_schema).ok()?;
            if expr.is_volatile() {
                return None;
            }
            let columns = expr.column_refs();
            match columns.into_iter().collect::<Vec<_>>().as_slice() {
                [c] => Some(c.name.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// For the dictionary proof (see the module comment): every value `column` can hold, read from
/// its dictionary pages (plus a NULL unless the statistics rule NULLs out), or None when some row
/// group does not dictionary-encode it or a page cannot be read.
async fn dictionary_values(
    store: &Arc<dyn ObjectStore>,
    column: &str,
    schema: &Schema,
    footers: &[Footer],
) -> Option<ArrayRef> {
    let field = schema.field_with_name(column).ok()?;
    let target = field.data_type().clone();
    // Per file: the column's chunk in each row group, all dictionary-encoded.
    let mut wanted = Vec::new();
    let mut maybe_null = false;
    for f in footers {
        let parquet = f.meta.parquet_schema();
        let index = parquet
            .columns()
            .iter()
            .position(|c| c.path().parts() == [column.to_string()])?;
        let mut chunks = Vec::new();
        for group in f.meta.metadata().row_groups() {
            let chunk = group.column(index);
            if !all_dictionary_encoded(chunk) {
                return None;
            }
            maybe_null |= chunk
                .statistics()
                .and_then(|s| s.null_count_opt())
                .is_none_or(|n| n > 0);
            chunks.push((chunk.clone(), group.num_rows()));
        }
        wanted.push((f.file.location.clone(), chunks));
    }
    let fetched: Result<Vec<Vec<ArrayRef>>, ()> = futures::stream::iter(wanted)
        .map(|(location, chunks)| {
            let store = Arc::clone(store);
            let target = target.clone();
            async move {
                let ranges: Vec<std::ops::Range<u64>> = chunks
                    .iter()
                    .map(|(c, _)| {
                        let start = c.dictionary_page_offset().unwrap_or(0) as u64;
                        start..(c.data_page_offset() as u64).max(start)
                    })
                    .collect();
                let pages = store.get_ranges(&location, &ranges).await.map_err(|_| ())?;
                chunks
                    .iter()
                    .zip(ranges.iter().zip(pages))
                    .map(|((chunk, rows), (range, bytes))| {
                        dictionary(chunk, *rows, range.start, bytes, &target).ok_or(())
                    })
                    .collect()
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await;
    let mut arrays: Vec<ArrayRef> = fetched.ok()?.into_iter().flatten().collect();
    if maybe_null {
        arrays.push(arrow::array::new_null_array(&target, 1));
    }
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    arrow::compute::concat(&refs).ok()
}

fn all_dictionary_encoded(chunk: &ColumnChunkMetaData) -> bool {
    chunk.dictionary_page_offset().is_some_and(|o| o > 0)
        && chunk.page_encoding_stats_mask().is_some_and(|mask| {
            mask.is_only(Encoding::PLAIN_DICTIONARY) || mask.is_only(Encoding::RLE_DICTIONARY)
        })
}

/// A column chunk's dictionary page bytes, addressed by their offset in the file.
struct At {
    start: u64,
    bytes: Bytes,
}

impl Length for At {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ChunkReader for At {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let rest = (self.len().saturating_sub(start)) as usize;
        Ok(self.get_bytes(start, rest)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let from = start
            .checked_sub(self.start)
            .map(|f| f as usize)
            .filter(|f| f + length <= self.bytes.len())
            .ok_or_else(|| {
                parquet::errors::ParquetError::EOF(format!(
                    "{length} bytes at {start} are outside the dictionary page"
                ))
            })?;
        Ok(self.bytes.slice(from..from + length))
    }
}

/// `n` plain-encoded (little-endian, `W` bytes each) values of `T` from the start of `buf`.
fn plain<T: ArrowPrimitiveType, const W: usize>(
    buf: &[u8],
    n: usize,
    from_le: fn([u8; W]) -> T::Native,
) -> Option<ArrayRef> {
    let values = buf
        .get(..n.checked_mul(W)?)?
        .chunks_exact(W)
        .map(|c| from_le(c.try_into().expect("chunks of W bytes")));
    Some(Arc::new(PrimitiveArray::<T>::from_iter_values(values)))
}

/// Decodes one chunk's dictionary page into an array of `target`, for the physical types whose
/// plain encoding maps onto it one to one; None for anything else.
fn dictionary(
    chunk: &ColumnChunkMetaData,
    rows: i64,
    start: u64,
    bytes: Bytes,
    target: &DataType,
) -> Option<ArrayRef> {
    let reader = Arc::new(At { start, bytes });
    let mut pages = SerializedPageReader::new(reader, chunk, rows.max(0) as usize, None).ok()?;
    let Page::DictionaryPage {
        buf,
        num_values,
        encoding: Encoding::PLAIN | Encoding::PLAIN_DICTIONARY,
        ..
    } = pages.get_next_page().ok()??
    else {
        return None;
    };
    let n = num_values as usize;
    let mut buf = buf;
    let decoded: ArrayRef = match (chunk.column_type(), target) {
        (Physical::BYTE_ARRAY, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                if buf.remaining() < 4 {
                    return None;
                }
                let len = buf.get_u32_le() as usize;
                if buf.remaining() < len {
                    return None;
                }
                let value = buf.split_to(len);
                values.push(std::str::from_utf8(&value).ok()?.to_string());
            }
            Arc::new(arrow::array::StringArray::from(values))
        }
        (
            Physical::INT32,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Date32,
        ) => plain::<Int32Type, 4>(&buf, n, i32::from_le_bytes)?,
        (Physical::INT64, DataType::Int64) => plain::<Int64Type, 8>(&buf, n, i64::from_le_bytes)?,
        (Physical::FLOAT, DataType::Float32) => {
            plain::<Float32Type, 4>(&buf, n, f32::from_le_bytes)?
        }
        (Physical::DOUBLE, DataType::Float64) => {
            plain::<Float64Type, 8>(&buf, n, f64::from_le_bytes)?
        }
        _ => return None,
    };
    if decoded.data_type() == target {
        Some(decoded)
    } else {
        arrow::compute::cast(&decoded, target).ok()
    }
}
