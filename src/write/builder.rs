//! A batch filled by gathering rows from other batches: the one copy of a row on its way into a
//! bucket of the partition sort.
//!
//! Gathering rows of one input batch into many buckets with `take` and then appending the taken
//! slices to each bucket's coalescer copies every row twice, and the coalescer keeps the taken
//! string arrays whole, as slices, until its batch completes: one input batch's strings stay
//! alive in every bucket it feeds, outside the memory pool's view.
//! Here each column of a bucket's batch is a growing buffer that rows are copied into straight
//! from the input, so that what a bucket holds is exactly its rows.

use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{Array, ArrayData, ArrayRef, RecordBatch, UInt32Array, make_array};
use arrow::buffer::{Buffer, NullBuffer};
use arrow::datatypes::{ArrowNativeType, DataType, SchemaRef, i256};
use arrow::error::ArrowError;

/// The most a string or binary column reserves for its values before the first row.
const INITIAL_VALUES_BYTES: usize = 1 << 20;

/// A batch of `schema` being filled.
pub(super) struct BatchBuilder {
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
}

/// One column being filled.
enum Column {
    /// Fixed-width values (every primitive type but intervals: integers, floats, decimals,
    /// dates, times…), and strings and binaries with 32-bit offsets: rows copied into buffers
    /// (strings and binaries from plain or view arrays alike).
    Buffers(Box<dyn Growing>),
    /// Anything else: the rows of each append taken as an array of their own, concatenated when
    /// the batch is finished.
    Other(Vec<ArrayRef>),
}

/// The buffers of a column being filled.
trait Growing: Send + Sync {
    /// Bytes of the rows so far.
    fn size(&self) -> usize;
    /// Appends rows `indices` of `data`.
    fn append(&mut self, data: &ArrayData, indices: &[u32]) -> Result<(), ArrowError>;
    /// The buffers and validity of the rows so far; empty again.
    fn finish(&mut self) -> (Vec<Buffer>, Option<Buffer>);
}

/// Buffers are allocated for `capacity` rows on the first row, not before: a bucket that gets
/// no more rows holds nothing.
struct Fixed<T: ArrowNativeType> {
    values: Vec<T>,
    nulls: NullBufferBuilder,
    capacity: usize,
}

struct Bytes {
    /// Empty before the first row, then starting with 0.
    offsets: Vec<i32>,
    values: Vec<u8>,
    nulls: NullBufferBuilder,
    capacity: usize,
}

impl BatchBuilder {
    /// An empty batch of `schema` with room for `capacity` rows.
    pub(super) fn new(schema: SchemaRef, capacity: usize) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| Column::new(f.data_type(), capacity))
            .collect();
        BatchBuilder {
            schema,
            columns,
            rows: 0,
        }
    }

    /// Rows so far.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of the rows so far.
    pub(super) fn size(&self) -> usize {
        self.columns.iter().map(Column::size).sum()
    }

    /// The rows so far as a batch; the builder is empty again.
    pub(super) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns = self
            .columns
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(c, f)| c.finish(f.data_type(), self.rows))
            .collect::<Result<Vec<_>, _>>()?;
        self.rows = 0;
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}

/// Appends rows of `columns` (one array per column of the builders' schema, of its types, but
/// that a string or binary column may come as a view array) to many builders: `(builder, rows)`,
/// rows in order. Column by column, so that each input column is read while it is in the cache
/// (scattered rows of one input batch go to many buckets).
pub(super) fn append_to_many(
    columns: &[ArrayRef],
    parts: &mut [(&mut BatchBuilder, &[u32])],
) -> Result<(), ArrowError> {
    for (c, array) in columns.iter().enumerate() {
        let data = array.to_data();
        for (builder, indices) in parts.iter_mut() {
            builder.columns[c].append(array, &data, indices)?;
        }
    }
    for (builder, indices) in parts.iter_mut() {
        builder.rows += indices.len();
    }
    Ok(())
}

impl Column {
    fn new(data_type: &DataType, capacity: usize) -> Self {
        let fixed = |width| -> Option<Box<dyn Growing>> {
            // Read and written as unsigned integers (or `i128`, `i256`) of their width.
            Some(match width {
                1 => Box::new(Fixed::<u8>::new(capacity)),
                2 => Box::new(Fixed::<u16>::new(capacity)),
                4 => Box::new(Fixed::<u32>::new(capacity)),
                8 => Box::new(Fixed::<u64>::new(capacity)),
                16 => Box::new(Fixed::<i128>::new(capacity)),
                32 => Box::new(Fixed::<i256>::new(capacity)),
                _ => return None,
            })
        };
        let growing = match data_type {
            DataType::Utf8 | DataType::Binary => Some(Box::new(Bytes::new(capacity)) as _),
            // Intervals are structs of smaller integers: their buffers are aligned to those,
            // not to their width.
            DataType::Interval(_) => None,
            t => t.primitive_width().and_then(fixed),
        };
        growing.map_or(Column::Other(Vec::new()), Column::Buffers)
    }

    fn size(&self) -> usize {
        match self {
            Column::Buffers(c) => c.size(),
            Column::Other(parts) => parts.iter().map(|a| a.get_array_memory_size()).sum(),
        }
    }

    /// Appends rows `indices` of `array` (`data`: its data).
    fn append(
        &mut self,
        array: &ArrayRef,
        data: &ArrayData,
        indices: &[u32],
    ) -> Result<(), ArrowError> {
        match self {
            Column::Buffers(c) => c.append(data, indices),
            Column::Other(parts) => {
                let at = UInt32Array::from(indices.to_vec());
                parts.push(arrow::compute::take(array, &at, None)?);
                Ok(())
            }
        }
    }

    fn finish(&mut self, data_type: &DataType, rows: usize) -> Result<ArrayRef, ArrowError> {
        match self {
            Column::Buffers(c) => {
                let (buffers, nulls) = c.finish();
                let data = ArrayData::builder(data_type.clone())
                    .len(rows)
                    .null_bit_buffer(nulls)
                    .buffers(buffers);
                // SAFETY: the buffers are built here to the layout of `data_type` for `rows` rows
                // (tests check every type against the full validation, and debug builds check
                // every batch): fixed-width values `rows` wide; offsets from 0, never
                // decreasing, ending at the values' length; every value copied whole from a
                // valid array of the same type (for strings: whole UTF-8 values). Validating
                // it all again (offsets one by one, UTF-8) would cost a pass over every byte
                // bucketed.
                let data = unsafe { data.build_unchecked() };
                debug_assert!(data.validate_full().is_ok(), "{:?}", data.validate_full());
                Ok(make_array(data))
            }
            Column::Other(parts) => {
                let parts = std::mem::take(parts);
                if parts.is_empty() {
                    return Ok(arrow::array::new_empty_array(data_type));
                }
                let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                arrow::compute::concat(&refs)
            }
        }
    }
}

/// The bytes `array`'s rows take once appended to a builder: for a string or binary view
/// array, its values and 32-bit offsets (not the buffers its views point into, which may be
/// shared with other arrays); otherwise its memory size.
pub(super) fn appended_size(array: &ArrayRef) -> usize {
    match array.data_type() {
        DataType::Utf8View | DataType::BinaryView => {
            let data = array.to_data();
            let len = view_len(&data);
            (0..data.len() as u32).map(len).sum::<usize>() + 4 * data.len()
        }
        _ => array.get_array_memory_size(),
    }
}

/// The byte length of each row of a string or binary view array's `data`: its view's, or 0 for
/// a NULL row (whose view need not describe any bytes).
fn view_len(data: &ArrayData) -> impl Fn(u32) -> usize + '_ {
    let views = &data.buffers()[0].typed_data::<u128>()[data.offset()..];
    let nulls = nulls_of(data);
    move |i: u32| match nulls {
        Some(n) if n.is_null(i as usize) => 0,
        _ => views[i as usize] as u32 as usize,
    }
}

/// The validity of `data`'s rows, if any is NULL.
fn nulls_of(data: &ArrayData) -> Option<&NullBuffer> {
    data.nulls().filter(|n| n.null_count() > 0)
}

fn append_nulls(to: &mut NullBufferBuilder, from: Option<&NullBuffer>, indices: &[u32]) {
    match from {
        None => to.append_n_non_nulls(indices.len()),
        Some(nulls) => {
            for &i in indices {
                to.append(nulls.is_valid(i as usize));
            }
        }
    }
}

/// The validity so far (`None` if no row is NULL) as a buffer; `nulls` is empty again.
fn take_nulls(nulls: &mut NullBufferBuilder) -> Option<Buffer> {
    nulls.finish().map(|n| n.into_inner().into_inner())
}

impl<T: ArrowNativeType> Fixed<T> {
    fn new(capacity: usize) -> Self {
        Fixed {
            values: Vec::new(),
            nulls: NullBufferBuilder::new(capacity),
            capacity,
        }
    }
}

impl<T: ArrowNativeType> Growing for Fixed<T> {
    fn size(&self) -> usize {
        self.values.len() * std::mem::size_of::<T>() + self.nulls.len() / 8
    }

    fn append(&mut self, data: &ArrayData, indices: &[u32]) -> Result<(), ArrowError> {
        let values = &data.buffers()[0].typed_data::<T>()[data.offset()..];
        if self.values.capacity() == 0 {
            self.values.reserve_exact(self.capacity.max(indices.len()));
        }
        self.values
            .extend(indices.iter().map(|&i| values[i as usize]));
        append_nulls(&mut self.nulls, nulls_of(data), indices);
        Ok(())
    }

    fn finish(&mut self) -> (Vec<Buffer>, Option<Buffer>) {
        let values = std::mem::take(&mut self.values);
        (vec![Buffer::from_vec(values)], take_nulls(&mut self.nulls))
    }
}

/// Values up to this long are copied as a block of this many bytes.
const SHORT: usize = 16;
/// Bytes of a value held in its view (the Arrow format's inline limit).
const INLINE: usize = 12;

impl Bytes {
    fn new(capacity: usize) -> Self {
        Bytes {
            offsets: Vec::new(),
            values: Vec::new(),
            nulls: NullBufferBuilder::new(capacity),
            capacity,
        }
    }

    /// Makes room for `rows` more values of `bytes` in all, after checking that they fit in
    /// 32-bit offsets. On the batch's first rows, also for a batch of values as long as these
    /// on average (up to a point: the buffer grows if the values are longer).
    fn reserve(&mut self, bytes: usize, rows: usize) -> Result<(), ArrowError> {
        if self.offsets.is_empty() {
            self.offsets.reserve_exact(self.capacity.max(rows) + 1);
            self.offsets.push(0);
            let average = bytes / rows.max(1);
            self.values
                .reserve((average * self.capacity).min(INITIAL_VALUES_BYTES));
        }
        if i32::try_from(self.values.len() + bytes).is_err() {
            return Err(ArrowError::ComputeError(
                "a batch of a string or binary column exceeds 2 GiB (values this large, in rows \
                 of one partition, cannot be held)\nhelp: drop or shorten the column in the \
                 transform (for example with `substr`)"
                    .to_string(),
            ));
        }
        self.values.reserve(bytes + SHORT);
        Ok(())
    }

    /// Appends rows `indices` of a string or binary view array, whose values are inline in
    /// their views (up to 12 bytes) or in one of the array's data buffers: copied straight into
    /// the plain buffers, without a plain copy of the whole array first. A NULL row gets no
    /// bytes (its view need not describe any).
    fn append_views(&mut self, data: &ArrayData, indices: &[u32]) -> Result<(), ArrowError> {
        let views = &data.buffers()[0].typed_data::<u128>()[data.offset()..];
        let buffers = &data.buffers()[1..];
        let len = view_len(data);
        let bytes: usize = indices.iter().map(|&i| len(i)).sum();
        self.reserve(bytes, indices.len())?;
        for &i in indices {
            let view = views[i as usize];
            let n = len(i);
            if n <= INLINE {
                // Copied as the whole inline part, then the overshoot is cut (see SHORT).
                let at = self.values.len();
                self.values
                    .extend_from_slice(&view.to_le_bytes()[4..4 + INLINE]);
                self.values.truncate(at + n);
            } else {
                let buffer = (view >> 64) as u32 as usize;
                let start = (view >> 96) as u32 as usize;
                self.values
                    .extend_from_slice(&buffers[buffer].as_slice()[start..start + n]);
            }
            self.offsets.push(self.values.len() as i32);
        }
        append_nulls(&mut self.nulls, nulls_of(data), indices);
        Ok(())
    }
}

impl Growing for Bytes {
    fn size(&self) -> usize {
        self.offsets.len().saturating_sub(1) * 4 + self.values.len() + self.nulls.len() / 8
    }

    fn append(&mut self, data: &ArrayData, indices: &[u32]) -> Result<(), ArrowError> {
        if matches!(data.data_type(), DataType::Utf8View | DataType::BinaryView) {
            return self.append_views(data, indices);
        }
        let offsets = &data.buffers()[0].typed_data::<i32>()[data.offset()..];
        let values = data.buffers()[1].as_slice();
        let span = |i: u32| offsets[i as usize] as usize..offsets[i as usize + 1] as usize;
        let bytes: usize = indices.iter().map(|&i| span(i).len()).sum();
        self.reserve(bytes, indices.len())?;
        // Short values (most are) are copied as a block of SHORT bytes, which compiles to a
        // few moves instead of a call per value, then the overshoot is cut.
        for &i in indices {
            let span = span(i);
            let at = self.values.len();
            if span.len() <= SHORT && span.start + SHORT <= values.len() {
                self.values
                    .extend_from_slice(&values[span.start..span.start + SHORT]);
                self.values.truncate(at + span.len());
            } else {
                self.values.extend_from_slice(&values[span]);
            }
            self.offsets.push(self.values.len() as i32);
        }
        append_nulls(&mut self.nulls, nulls_of(data), indices);
        Ok(())
    }

    fn finish(&mut self) -> (Vec<Buffer>, Option<Buffer>) {
        let mut offsets = std::mem::take(&mut self.offsets);
        if offsets.is_empty() {
            offsets.push(0);
        }
        let mut values = std::mem::take(&mut self.values);
        values.shrink_to_fit();
        (
            vec![Buffer::from_vec(offsets), Buffer::from_vec(values)],
            take_nulls(&mut self.nulls),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        AsArray, BinaryViewArray, BooleanArray, Decimal128Array, Int32Array, Int64Array, ListArray,
        StringArray, StringViewArray,
    };
    use arrow::datatypes::{Field, Int32Type, Schema};

    impl BatchBuilder {
        /// Appends rows `indices` of `batch` to this builder alone.
        fn append(&mut self, batch: &RecordBatch, indices: &[u32]) -> Result<(), ArrowError> {
            append_to_many(batch.columns(), &mut [(self, indices)])
        }
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("d", DataType::Decimal128(30, 2), true),
            Field::new("n", DataType::Int32, false),
            Field::new(
                "iv",
                DataType::Interval(arrow::datatypes::IntervalUnit::DayTime),
                true,
            ),
            Field::new(
                "l",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))),
                true,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    None,
                    Some(3),
                    Some(4),
                    None,
                ])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("bb"),
                    None,
                    Some(""),
                    Some("eeeee"),
                ])),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    None,
                    Some(false),
                    Some(true),
                    Some(false),
                ])),
                Arc::new(
                    Decimal128Array::from(vec![
                        Some(10),
                        Some(-20),
                        None,
                        Some(i128::MAX),
                        Some(0),
                    ])
                    .with_precision_and_scale(30, 2)
                    .unwrap(),
                ),
                Arc::new(Int32Array::from(vec![5, 6, 7, 8, 9])),
                Arc::new(arrow::array::IntervalDayTimeArray::from(vec![
                    Some(arrow::datatypes::IntervalDayTime::new(1, 2)),
                    None,
                    Some(arrow::datatypes::IntervalDayTime::new(-3, 4)),
                    Some(arrow::datatypes::IntervalDayTime::new(5, -6)),
                    None,
                ])),
                Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
                    Some(vec![Some(1)]),
                    None,
                    Some(vec![]),
                    Some(vec![Some(2), None]),
                    Some(vec![Some(3)]),
                ])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn gathered_rows_equal_take_of_the_same_rows_whatever_the_offsets_and_nulls() {
        let whole = batch();
        // Sliced inputs: the arrays' offsets must be honoured.
        let parts = [whole.slice(0, 3), whole.slice(2, 3)];
        let picks: [&[u32]; 2] = [&[2, 0, 1], &[2, 1, 1, 0]];
        let mut builder = BatchBuilder::new(whole.schema(), 2);
        let mut expected = Vec::new();
        for (part, rows) in parts.iter().zip(picks) {
            builder.append(part, rows).unwrap();
            let at = UInt32Array::from(rows.to_vec());
            expected.push(arrow::compute::take_record_batch(part, &at).unwrap());
        }
        assert_eq!(builder.rows(), 7);
        assert!(builder.size() > 0);
        let got = builder.finish().unwrap();
        got.columns()
            .iter()
            .for_each(|c| c.to_data().validate_full().unwrap());
        let expected = arrow::compute::concat_batches(&whole.schema(), &expected).unwrap();
        assert_eq!(got, expected);
        // Empty again, and reusable.
        assert_eq!(builder.rows(), 0);
        assert_eq!(builder.size(), 0);
        builder.append(&whole, &[4]).unwrap();
        assert_eq!(builder.finish().unwrap(), whole.slice(4, 1));
        // Nothing appended: an empty batch of valid arrays.
        let empty = BatchBuilder::new(whole.schema(), 2).finish().unwrap();
        assert_eq!(empty.num_rows(), 0);
        empty
            .columns()
            .iter()
            .for_each(|c| c.to_data().validate_full().unwrap());
    }

    #[test]
    fn strings_short_and_long_and_at_the_end_of_their_buffer_are_copied_exactly() {
        // Lengths around the block copied for short values, the last ones ending the buffer
        // (no block fits after them).
        let values: Vec<String> = (0..40usize)
            .map(|n| {
                (0..n)
                    .map(|k| char::from(b'a' + ((n + k) % 26) as u8))
                    .collect()
            })
            .chain(["x".to_string(), String::new(), "y".repeat(15)])
            .collect();
        let strings = StringArray::from(values.clone());
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        let input = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(strings)]).unwrap();
        let rows: Vec<u32> = (0..values.len() as u32)
            .rev()
            .chain([42, 17, 42, 0])
            .collect();
        let mut builder = BatchBuilder::new(Arc::clone(&schema), 4);
        builder.append(&input, &rows[..5]).unwrap();
        builder.append(&input, &rows[5..]).unwrap();
        let got = builder.finish().unwrap();
        got.column(0).to_data().validate_full().unwrap();
        let expected =
            arrow::compute::take_record_batch(&input, &UInt32Array::from(rows.clone())).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn views_are_copied_as_plain_values_inline_or_not_null_or_not_and_sliced() {
        // Lengths around the 12 bytes a view holds inline; some NULL.
        let values: Vec<Option<String>> = (0..40usize)
            .map(|n| {
                (n % 7 != 3).then(|| {
                    (0..n)
                        .map(|k| char::from(b'a' + ((n + k) % 26) as u8))
                        .collect()
                })
            })
            .collect();
        let strings = StringViewArray::from_iter(values.iter().map(|v| v.as_deref()));
        let binaries = BinaryViewArray::from_iter(values.iter().map(|v| v.as_deref()));
        // NULL rows whose views still describe values, inline and in a buffer: no bytes.
        let (views, buffers, _) =
            StringViewArray::from(vec!["a value longer than twelve bytes", "short", "x"])
                .into_parts();
        let masked = StringViewArray::new(
            views,
            buffers,
            Some(NullBuffer::from(vec![false, false, true])),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::Binary, true),
        ]));
        let mut builder = BatchBuilder::new(Arc::clone(&schema), 4);
        let mut expected = Vec::new();
        let inputs: [(ArrayRef, ArrayRef); 2] = [
            // Sliced: the arrays' offsets must be honoured.
            (
                Arc::new(strings.slice(5, 35)),
                Arc::new(binaries.slice(5, 35)),
            ),
            (Arc::new(masked.clone()), Arc::new(masked.to_binary_view())),
        ];
        let picks: [Vec<u32>; 2] = [(0..35).rev().chain([30, 0, 30]).collect(), vec![2, 0, 1, 2]];
        for ((s, b), rows) in inputs.iter().zip(&picks) {
            let columns = [Arc::clone(s), Arc::clone(b)];
            append_to_many(&columns, &mut [(&mut builder, rows)]).unwrap();
            let at = UInt32Array::from(rows.clone());
            let plain = |a: &ArrayRef, t: &DataType| {
                let taken = arrow::compute::take(a, &at, None).unwrap();
                arrow::compute::cast(&taken, t).unwrap()
            };
            expected.push(
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![plain(s, &DataType::Utf8), plain(b, &DataType::Binary)],
                )
                .unwrap(),
            );
        }
        let got = builder.finish().unwrap();
        got.columns()
            .iter()
            .for_each(|c| c.to_data().validate_full().unwrap());
        assert_eq!(
            got,
            arrow::compute::concat_batches(&schema, &expected).unwrap()
        );
        // NULL rows took no bytes: the values are exactly the valid rows' values.
        let valid: usize = got
            .column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(str::len)
            .sum();
        assert_eq!(got.column(0).as_string::<i32>().values().len(), valid);
    }

    #[test]
    fn appending_to_many_builders_at_once_gives_each_its_rows() {
        let whole = batch();
        let picks: [&[u32]; 3] = [&[4, 0], &[], &[1, 3, 2]];
        let mut many: Vec<BatchBuilder> = (0..3)
            .map(|_| BatchBuilder::new(whole.schema(), 4))
            .collect();
        let mut parts: Vec<(&mut BatchBuilder, &[u32])> = many.iter_mut().zip(picks).collect();
        append_to_many(whole.columns(), &mut parts).unwrap();
        for (builder, rows) in many.iter_mut().zip(picks) {
            assert_eq!(builder.rows(), rows.len());
            let expected =
                arrow::compute::take_record_batch(&whole, &UInt32Array::from(rows.to_vec()))
                    .unwrap();
            assert_eq!(builder.finish().unwrap(), expected);
        }
    }
}
