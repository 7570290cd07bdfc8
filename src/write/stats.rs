//! Column statistics of a written file, from the footer its writer just produced: the values
//! other engines prune files by (Delta `add.stats`, Iceberg metrics).
//!
//! Only what the footer states exactly is kept. A bound that the writer truncated (long
//! strings), a row group without statistics, or a type without a physical form in
//! [`ColumnStats`] leaves that bound out: a missing bound costs a reader some pruning, a wrong
//! one would make it skip rows.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::SortOptions;
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::ParquetMetaData;
use serde_json::Value;

use crate::manifest::ColumnStats;

/// Statistics of every top-level column of `schema` that the file's footer describes.
pub fn file_stats(metadata: &ParquetMetaData, schema: &Schema) -> BTreeMap<String, ColumnStats> {
    let parquet_schema = metadata.file_metadata().schema_descr();
    let groups = metadata.row_groups();
    let mut out = BTreeMap::new();
    for field in schema.fields() {
        if field.data_type().is_nested() {
            continue;
        }
        let Ok(conv) = StatisticsConverter::try_new(field.name(), schema, parquet_schema) else {
            continue;
        };
        // NULLs per row group (`None` when any row group does not say).
        let group_nulls = conv
            .row_group_null_counts(groups.iter())
            .ok()
            .filter(|n| n.null_count() == 0);
        let nulls = group_nulls.as_ref().map(|n| n.values().iter().sum::<u64>());
        let only_nulls = |i: usize| {
            group_nulls
                .as_ref()
                .is_some_and(|n| n.value(i) == groups[i].num_rows() as u64)
        };
        let bound = |values: Option<ArrayRef>, exact: Option<BooleanArray>, want: Ordering| {
            let (values, exact) = (values?, exact?);
            // Every row group must state an exact bound, or have only NULLs (no bound).
            let all_exact = (0..groups.len()).all(|i| {
                (values.is_null(i) && only_nulls(i))
                    || (exact.is_valid(i) && exact.value(i) && values.is_valid(i))
            });
            if !all_exact {
                return None;
            }
            extreme(&values, want).and_then(|i| physical(&values, i))
        };
        let min = bound(
            conv.row_group_mins(groups.iter()).ok(),
            conv.row_group_is_min_value_exact(groups.iter()).ok(),
            Ordering::Less,
        );
        let max = bound(
            conv.row_group_maxes(groups.iter()).ok(),
            conv.row_group_is_max_value_exact(groups.iter()).ok(),
            Ordering::Greater,
        );
        if nulls.is_some() || min.is_some() || max.is_some() {
            out.insert(field.name().clone(), ColumnStats { nulls, min, max });
        }
    }
    out
}

/// The index of the smallest (`Less`) or largest (`Greater`) non-NULL value.
fn extreme(values: &ArrayRef, want: Ordering) -> Option<usize> {
    let cmp =
        arrow::array::make_comparator(values.as_ref(), values.as_ref(), SortOptions::default())
            .ok()?;
    let mut best: Option<usize> = None;
    for i in (0..values.len()).filter(|&i| values.is_valid(i)) {
        if best.is_none_or(|b| cmp(i, b) == want) {
            best = Some(i);
        }
    }
    best
}

/// The value at `i` in the physical form of [`ColumnStats`], or `None` for a type without one
/// (and for floats that are not finite).
fn physical(values: &ArrayRef, i: usize) -> Option<Value> {
    let finite = |f: f64| f.is_finite().then(|| Value::from(f));
    Some(match values.data_type() {
        DataType::Boolean => Value::from(values.as_boolean().value(i)),
        DataType::Int8 => Value::from(values.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => Value::from(values.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => Value::from(values.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => Value::from(values.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Value::from(values.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => Value::from(values.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => Value::from(values.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => Value::from(values.as_primitive::<UInt64Type>().value(i)),
        DataType::Float32 => finite(values.as_primitive::<Float32Type>().value(i) as f64)?,
        DataType::Float64 => finite(values.as_primitive::<Float64Type>().value(i))?,
        DataType::Date32 => Value::from(values.as_primitive::<Date32Type>().value(i)),
        DataType::Timestamp(unit, _) => Value::from(match unit {
            TimeUnit::Second => values.as_primitive::<TimestampSecondType>().value(i),
            TimeUnit::Millisecond => values.as_primitive::<TimestampMillisecondType>().value(i),
            TimeUnit::Microsecond => values.as_primitive::<TimestampMicrosecondType>().value(i),
            TimeUnit::Nanosecond => values.as_primitive::<TimestampNanosecondType>().value(i),
        }),
        DataType::Decimal128(_, _) => {
            Value::from(values.as_primitive::<Decimal128Type>().value(i).to_string())
        }
        DataType::Utf8 => Value::from(values.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Value::from(values.as_string::<i64>().value(i)),
        DataType::Utf8View => Value::from(values.as_string_view().value(i)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Field;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use std::sync::Arc;

    fn write(batches: &[RecordBatch], props: WriterProperties) -> ParquetMetaData {
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batches[0].schema(), Some(props)).unwrap();
        for b in batches {
            w.write(b).unwrap();
            w.flush().unwrap();
        }
        w.close().unwrap()
    }

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("d", DataType::Date32, true),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    fn batch(ids: Vec<Option<i64>>, s: Vec<Option<&str>>) -> RecordBatch {
        let n = ids.len();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Date32Array::from(
                    (0..n as i32).map(|i| 19_000 + i).collect::<Vec<_>>(),
                )),
                Arc::new(
                    Decimal128Array::from((0..n as i128).map(|i| -150 + i).collect::<Vec<_>>())
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn bounds_over_row_groups_nulls_summed() {
        let a = batch(
            vec![Some(5), None, Some(9)],
            vec![Some("b"), Some("c"), None],
        );
        let b = batch(vec![Some(-3), Some(7), None], vec![Some("a"), None, None]);
        let meta = write(&[a, b], WriterProperties::builder().build());
        assert_eq!(meta.num_row_groups(), 2);
        let stats = file_stats(&meta, &schema());
        assert_eq!(
            stats["id"],
            ColumnStats {
                nulls: Some(2),
                min: Some(Value::from(-3)),
                max: Some(Value::from(9))
            }
        );
        assert_eq!(stats["d"].min, Some(Value::from(19_000)));
        assert_eq!(stats["d"].max, Some(Value::from(19_002)));
        assert_eq!(stats["amount"].min, Some(Value::from("-150")));
        assert_eq!(stats["amount"].max, Some(Value::from("-148")));
        assert_eq!(stats["s"].nulls, Some(3));
        assert_eq!(stats["s"].min, Some(Value::from("a")));
        assert_eq!(stats["s"].max, Some(Value::from("c")));
    }

    #[test]
    fn truncated_bounds_are_left_out_all_null_columns_have_none() {
        let long = "x".repeat(100);
        let a = batch(vec![None, None, None], vec![Some(&long), Some("y"), None]);
        let props = WriterProperties::builder()
            .set_statistics_truncate_length(Some(8))
            .build();
        let stats = file_stats(&write(&[a], props), &schema());
        // The max "y" is exact, the min (a prefix of 100 x's) is not.
        assert_eq!(stats["s"].min, None);
        assert_eq!(stats["s"].max, Some(Value::from("y")));
        assert_eq!(stats["id"].nulls, Some(3));
        assert_eq!(
            (stats["id"].min.clone(), stats["id"].max.clone()),
            (None, None)
        );
    }
}
