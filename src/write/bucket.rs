//! The sort in front of the partition writers: rows are bucketed by partition, then each bucket
//! is sorted on its own.
//!
//! A global sort of a stream by (partition columns, key, tiebreak) spills sorted runs and merges
//! them at the end; memory then grows with the number of runs being merged (DataFusion's merge
//! does not account for all of it). Partitions are independent, so this sort does less: each
//! input appends each row to its partition's bucket (one copy), spilling whole buckets to disk
//! (Arrow IPC, appended) when the memory pool refuses more; at the end the buckets of each
//! partition are joined, and one task per output sorts one partition at a time by (key,
//! tiebreak) and emits it. Memory: what the pool allows for buckets, plus one bucket being sorted
//! per output; a bucket larger than the pool allows is sorted by DataFusion's spilling sort
//! instead. Buckets kept in memory are emitted first, so that their memory is free for the
//! spilled ones. Which output a partition goes to, and in which order, does not matter: each
//! partition's files depend only on its own rows, and those are totally ordered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::datatypes::{Decimal128Type, Int64Type};
use arrow::error::ArrowError;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::col as physical_col;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::builder::BatchBuilder;

/// Rows per batch inside a bucket. Small enough that the partly filled batch of every bucket
/// together stays small (84 buckets of lineitem: about 40 MiB), large enough for cheap spills.
const BUCKET_BATCH_ROWS: usize = 2048;
/// Bytes at which a bucket's batch is completed with fewer rows (rows of long strings).
const BUCKET_BATCH_BYTES: usize = 64 << 20;
/// Rows per emitted batch: the writer's batch, which it then writes without copying.
const EMIT_ROWS: usize = super::WRITE_BATCH_ROWS;
/// A bucket is sorted ahead (see [`Emitter::next_if_room`]) only if sorting it takes at most
/// this fraction of the pool: sorting ahead adds to the peak memory, which for small buckets
/// is little and for large ones (a good part of the pool each) takes the process past its
/// memory target, for no gain in time.
const AHEAD_SHARE: usize = 8;
/// The hash column added for a bucket sorted by DataFusion's sort.
const TIEBREAK: &str = "__wap_tiebreak";

/// What a sort did (for tests and logs).
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Partitions, and the bytes of rows held in buckets (in memory or spilled).
    pub buckets: std::sync::atomic::AtomicUsize,
    pub held_bytes: std::sync::atomic::AtomicUsize,
    /// Spills (a bucket's batches written out), the bytes they held (in memory), and the
    /// files they went to.
    pub spills: std::sync::atomic::AtomicUsize,
    pub spilled_bytes: std::sync::atomic::AtomicUsize,
    pub spill_files: std::sync::atomic::AtomicUsize,
    /// Buckets sorted by DataFusion's spilling sort (too large for memory).
    pub external: std::sync::atomic::AtomicUsize,
    /// Buckets read back and sorted while the one before them was sent (sorted ahead).
    pub ahead: std::sync::atomic::AtomicUsize,
}

/// One partition's rows.
struct Bucket {
    /// Partition values in the row format (orders buckets like the partition columns).
    values: OwnedRow,
    /// The same values as one-row arrays of the input's types (buckets do not hold the
    /// partition columns: they are the same in every row).
    columns: Vec<ArrayRef>,
    /// The batch being filled.
    builder: BatchBuilder,
    /// Completed batches held in memory, and their size.
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// Spill files, in order: one per input that spilled the bucket (each of its spills
    /// appended to the file, the file open until the input ends) and one per spill made while
    /// the buckets are sorted.
    spills: Vec<Arc<dyn SpillFile>>,
    /// The spill file this bucket's next spill is appended to.
    open: Option<super::spill::Appending>,
    spilled_bytes: usize,
}

/// Each row's key packed into an integer, with the row's number in `batches` taken as one.
#[derive(Debug)]
enum Packed {
    /// Keys of at most 96 bits: the key in the high bits, the row in the low 32. One integer
    /// per row: half the bytes of [`Packed::Wide`] to move while sorting, one comparison.
    Narrow(Vec<u128>),
    /// Keys of 97 to 128 bits: the key and the row side by side.
    Wide(Vec<(u128, u32)>),
}

/// An entry of [`Packed`]: its order is the key's, then the row's.
trait PackedRow: Ord + Copy {
    fn key(self) -> u128;
    fn row(self) -> u32;
}

impl PackedRow for u128 {
    fn key(self) -> u128 {
        self >> 32
    }
    fn row(self) -> u32 {
        self as u32
    }
}

impl PackedRow for (u128, u32) {
    fn key(self) -> u128 {
        self.0
    }
    fn row(self) -> u32 {
        self.1
    }
}

impl Packed {
    /// `keys` (row `g` at `g`, the key in the low `bits` bits) with their rows.
    fn of(mut keys: Vec<u128>, bits: u32) -> Packed {
        if bits <= 96 {
            for (g, k) in keys.iter_mut().enumerate() {
                *k = (*k << 32) | g as u128;
            }
            Packed::Narrow(keys)
        } else {
            Packed::Wide(keys.into_iter().zip(0u32..).collect())
        }
    }

    /// The rows in key order (then row order), and the ranges of it where keys repeat.
    fn order(self) -> (Vec<u32>, Vec<std::ops::Range<usize>>) {
        match self {
            Packed::Narrow(rows) => order_packed(rows),
            Packed::Wide(rows) => order_packed(rows),
        }
    }

    #[cfg(test)]
    fn rows(&self) -> Vec<(u128, u32)> {
        match self {
            Packed::Narrow(rows) => rows.iter().map(|&r| (r.key(), r.row())).collect(),
            Packed::Wide(rows) => rows.clone(),
        }
    }
}

/// See [`Packed::order`].
fn order_packed<R: PackedRow>(mut rows: Vec<R>) -> (Vec<u32>, Vec<std::ops::Range<usize>>) {
    // Rows often come in a few ascending runs (sources sorted by the key, as many are, bucketed
    // input by input): the stable sort merges runs it finds in linear time per level, where
    // the unstable one would partition them. Every (key, row) is distinct, so both give the
    // same order.
    let descents = rows.windows(2).filter(|w| w[1] < w[0]).count();
    if descents < rows.len() / 64 {
        rows.sort();
    } else {
        rows.sort_unstable();
    }
    let mut ties = Vec::new();
    let mut start = 0;
    for i in 1..=rows.len() {
        if i == rows.len() || rows[i].key() != rows[start].key() {
            if i - start > 1 {
                ties.push(start..i);
            }
            start = i;
        }
    }
    (rows.into_iter().map(PackedRow::row).collect(), ties)
}

/// Each row of `batches` (taken as one) with its key packed into one integer, or `None` unless
/// every key column is of an integer type (dates, times, timestamps and durations are) and they
/// fit 128 bits together. The integer orders like the key (ascending, NULLs first) and is equal
/// only for equal keys: each column's value as an unsigned integer of its width (a signed one
/// with its sign bit flipped), after a bit that is 0 for NULL in a column that has NULLs here,
/// the columns side by side in key order. Read straight from the columns: no row format, no
/// copy of the keys.
fn packed_keys(batches: &[RecordBatch], key_idx: &[usize]) -> Option<Packed> {
    let first = batches.first()?;
    let mut columns = Vec::with_capacity(key_idx.len());
    let mut bits = 0;
    for &c in key_idx {
        let (width, signed) = match first.schema().field(c).data_type() {
            DataType::Int8 => (1, true),
            DataType::UInt8 => (1, false),
            DataType::Int16 => (2, true),
            DataType::UInt16 => (2, false),
            DataType::Int32 | DataType::Date32 | DataType::Time32(_) => (4, true),
            DataType::UInt32 => (4, false),
            DataType::Int64
            | DataType::Date64
            | DataType::Time64(_)
            | DataType::Timestamp(..)
            | DataType::Duration(_) => (8, true),
            DataType::UInt64 => (8, false),
            _ => return None,
        };
        let nullable = batches.iter().any(|b| b.column(c).null_count() > 0);
        bits += 8 * width + u32::from(nullable);
        columns.push((c, width, signed, nullable));
    }
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if key_idx.is_empty() || bits > 128 || u32::try_from(total).is_err() {
        return None;
    }
    let mut packed = vec![0u128; total];
    let mut at = 0;
    for batch in batches {
        let rows = &mut packed[at..at + batch.num_rows()];
        at += batch.num_rows();
        for &(c, width, signed, nullable) in &columns {
            let data = batch.column(c).to_data();
            let shift = 8 * width + u32::from(nullable);
            let marker = if nullable { 1u128 << (8 * width) } else { 0 };
            match (width, signed) {
                (1, true) => {
                    fold_key::<i8>(rows, &data, shift, marker, |v| u64::from(v as u8 ^ 0x80))
                }
                (1, false) => fold_key::<u8>(rows, &data, shift, marker, u64::from),
                (2, true) => {
                    fold_key::<i16>(rows, &data, shift, marker, |v| u64::from(v as u16 ^ 0x8000))
                }
                (2, false) => fold_key::<u16>(rows, &data, shift, marker, u64::from),
                (4, true) => fold_key::<i32>(rows, &data, shift, marker, |v| {
                    u64::from(v as u32 ^ 0x8000_0000)
                }),
                (4, false) => fold_key::<u32>(rows, &data, shift, marker, u64::from),
                (8, true) => fold_key::<i64>(rows, &data, shift, marker, |v| v as u64 ^ (1 << 63)),
                _ => fold_key::<u64>(rows, &data, shift, marker, |v| v),
            }
        }
    }
    Some(Packed::of(packed, bits))
}

/// Shifts each row's packed key left by `shift` bits and adds the column's value in `data`:
/// `marker` plus its code, or 0 if NULL.
fn fold_key<T: arrow::datatypes::ArrowNativeType>(
    rows: &mut [u128],
    data: &arrow::array::ArrayData,
    shift: u32,
    marker: u128,
    code: impl Fn(T) -> u64,
) {
    let values = &data.buffers()[0].typed_data::<T>()[data.offset()..][..data.len()];
    match data.nulls() {
        None => {
            for (p, &v) in rows.iter_mut().zip(values) {
                *p = (*p << shift) | marker | u128::from(code(v));
            }
        }
        Some(nulls) => {
            for ((p, &v), valid) in rows.iter_mut().zip(values).zip(nulls.iter()) {
                let field = if valid {
                    marker | u128::from(code(v))
                } else {
                    0
                };
                *p = (*p << shift) | field;
            }
        }
    }
}

/// How a column is held in a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Held {
    /// As it comes.
    Same,
    /// String and binary views as plain arrays: a view array's size counts every buffer it
    /// points into, so batches cut from shared buffers would be accounted many times over (and
    /// spill all at once); plain arrays are compact and exactly sized. The bucket's builder
    /// copies rows from the views straight into its plain buffers (no cast of the whole input).
    Plain,
    /// Decimals of up to 18 digits as their unscaled 64-bit integers: half the size, and what
    /// Parquet stores them as.
    Decimal(u8, i8),
}

impl Held {
    fn of(t: &DataType) -> (Held, DataType) {
        match t {
            DataType::Utf8View => (Held::Plain, DataType::Utf8),
            DataType::BinaryView => (Held::Plain, DataType::Binary),
            DataType::Decimal128(p, s) if *p <= 18 => (Held::Decimal(*p, *s), DataType::Int64),
            t => (Held::Same, t.clone()),
        }
    }

    /// `a` (of the input's type) as appended to a bucket's builder: as held, but that views
    /// stay views (see [`Held::Plain`]).
    fn hold(self, a: &ArrayRef, name: &str) -> DfResult<ArrayRef> {
        Ok(match self {
            Held::Same | Held::Plain => Arc::clone(a),
            Held::Decimal(..) => Arc::new(
                a.as_primitive::<Decimal128Type>()
                    .try_unary::<_, Int64Type, _>(|v| {
                        i64::try_from(v).map_err(|_| {
                            ArrowError::ComputeError(format!(
                                "column `{name}` holds a value with more digits than its decimal type \
                                 allows\nhelp: cast it to a wider decimal in the transform"
                            ))
                        })
                    })?,
            ),
        })
    }

    /// A held array back in the input's type `to`.
    fn restore(self, a: &ArrayRef, to: &DataType) -> DfResult<ArrayRef> {
        Ok(match self {
            Held::Same => Arc::clone(a),
            Held::Plain => arrow::compute::cast(a, to)?,
            Held::Decimal(p, s) => Arc::new(
                a.as_primitive::<Int64Type>()
                    .unary::<_, Decimal128Type>(i128::from)
                    .with_precision_and_scale(p, s)?,
            ),
        })
    }
}

/// A column of a bucket: where it is in the input, how it is held, and its input type.
#[derive(Debug, Clone)]
struct HeldColumn {
    input: usize,
    how: Held,
    input_type: DataType,
}

/// Held columns `which` of `batch`, in the input's types.
fn restored(held: &[HeldColumn], batch: &RecordBatch, which: &[usize]) -> DfResult<Vec<ArrayRef>> {
    which
        .iter()
        .map(|&c| held[c].how.restore(batch.column(c), &held[c].input_type))
        .collect()
}

/// The tiebreak of each row of `batch` (held): [`crate::engine::row_hash`] of its columns
/// `rest` in the input's types, as the unpartitioned sort computes it.
fn tie_hashes(held: &[HeldColumn], rest: &[usize], batch: &RecordBatch) -> DfResult<Vec<u64>> {
    crate::engine::row_hash(&restored(held, batch, rest)?, batch.num_rows())
}

/// What every part of one sort shares: how rows are held, which columns are the partition, the
/// key and the rest, and where spills go.
///
/// Buckets hold rows compactly (see [`Held`]), without the partition columns; emitted batches
/// have the input's schema again.
struct Layout {
    /// The input's (and output's) schema, and the schema rows are held in: the input's columns
    /// but the partition columns, with the types of `held`.
    input: SchemaRef,
    schema: SchemaRef,
    /// For each held column: its index in the input, how it is held and its input type.
    held: Arc<[HeldColumn]>,
    /// Input indices of the partition columns.
    part_idx: Vec<usize>,
    /// Held indices of the key columns (those that are not partition columns) and of the other
    /// columns (hashed to order rows sharing a key).
    key_idx: Vec<usize>,
    rest_idx: Vec<usize>,
    /// The partition columns in the row format (bucket identity and order).
    converter: RowConverter,
    /// The key columns in the row format, when a key takes at most 16 bytes there: keys are
    /// then sorted as integers.
    key_converter: Option<RowConverter>,
    /// Reads spills for DataFusion's spilling sort (see [`super::spill`] for how they are
    /// written, and read otherwise).
    spills: SpillManager,
    task: Arc<TaskContext>,
    stats: Arc<Stats>,
}

/// The order of every sort of the writer: ascending, NULLs first.
pub(super) const ASCENDING: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

/// Sorts `inputs` (rows of any partitions, in any order) into `outputs` streams of
/// partition-contiguous rows: every partition comes whole in one of them, sorted by `key`
/// (ascending, NULLs first), then, among rows sharing a key, by the hash of the other columns
/// ([`crate::engine::RowHash`]: a total order, so files are deterministic). The hash is computed
/// only for rows whose key repeats.
///
/// Each input is read on its own task into buckets of its own; once all are read, the buckets
/// of each partition are joined and `outputs` tasks sort them, largest first, each taking the
/// next partition when done with one: no output waits on a slow input, and a partition's size
/// decides nothing about which output gets it. An error, and a panic too, arrives on every
/// output as an error, never as a short stream that would be written as if complete. Dropping
/// an output stream stops everything.
pub(super) fn sort_partitions(
    inputs: Vec<SendableRecordBatchStream>,
    schema: SchemaRef,
    partition_by: &[String],
    key: &[String],
    task: Arc<TaskContext>,
    outputs: usize,
    progress: Option<Arc<crate::progress::Progress>>,
) -> DfResult<(Vec<SendableRecordBatchStream>, Arc<Stats>)> {
    let layout = Arc::new(Layout::new(schema, partition_by, key, task)?);
    let stats = Arc::clone(&layout.stats);
    let out_schema = Arc::clone(&layout.input);
    let sorters = (0..inputs.len())
        .map(|i| BucketSorter::new(i, inputs.len(), outputs.max(1), Arc::clone(&layout)))
        .collect::<Vec<_>>();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..outputs.max(1))
        .map(|_| mpsc::channel::<DfResult<RecordBatch>>(2))
        .unzip();
    let txs = senders.clone();
    let work = tokio::spawn(async move {
        let mut reading = tokio::task::JoinSet::new();
        for (mut sorter, mut input) in sorters.into_iter().zip(inputs) {
            let senders = senders.clone();
            reading.spawn(async move {
                while let Some(batch) = input.next().await {
                    if senders.iter().any(|s| s.is_closed()) {
                        return Err(gone());
                    }
                    sorter.push(&batch?)?;
                }
                sorter.finish()
            });
        }
        let mut parts = Vec::new();
        while let Some(read) = reading.join_next().await {
            parts.push(read.map_err(|e| stopped("reading", &e))??);
        }
        tracing::debug!(
            spills = layout
                .stats
                .spills
                .load(std::sync::atomic::Ordering::Relaxed),
            spill_files = layout
                .stats
                .spill_files
                .load(std::sync::atomic::Ordering::Relaxed),
            "inputs bucketed"
        );
        let emitter = Arc::new(Emitter::new(Arc::clone(&layout), parts));
        if let Some(p) = &progress {
            let buckets = layout
                .stats
                .buckets
                .load(std::sync::atomic::Ordering::Relaxed);
            crate::progress::Progress::add(&p.partitions_total, buckets as u64);
        }
        let mut emitting = tokio::task::JoinSet::new();
        for (w, tx) in senders.into_iter().enumerate() {
            emitting.spawn(Arc::clone(&emitter).emit(w, tx));
        }
        while let Some(done) = emitting.join_next().await {
            done.map_err(|e| stopped("sorting", &e))??;
        }
        let load =
            |a: &std::sync::atomic::AtomicUsize| a.load(std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            buckets = load(&layout.stats.buckets),
            spills = load(&layout.stats.spills),
            spill_files = load(&layout.stats.spill_files),
            held_bytes = load(&layout.stats.held_bytes),
            spilled_bytes = load(&layout.stats.spilled_bytes),
            external_sorts = load(&layout.stats.external),
            sorted_ahead = load(&layout.stats.ahead),
            "partition sort done"
        );
        Ok(())
    });
    tokio::spawn(async move {
        let failed = match work.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => stopped("sort", &e),
        };
        let failed = Arc::new(failed);
        for tx in txs {
            let _ = tx
                .send(Err(DataFusionError::Shared(Arc::clone(&failed))))
                .await;
        }
    });
    let streams = receivers
        .into_iter()
        .map(|rx| {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&out_schema),
                stream,
            )) as SendableRecordBatchStream
        })
        .collect();
    Ok((streams, stats))
}

/// Why an output ended when another output's writer stopped (it failed): that writer's error is
/// the cause, this one only says the output is not complete.
#[derive(Debug, thiserror::Error)]
#[error("a writer of the partition sort stopped")]
pub(super) struct WriterStopped;

fn gone() -> DataFusionError {
    DataFusionError::External(Box::new(WriterStopped))
}

/// Whether `e` is [`WriterStopped`]: an effect of another writer's error, not a cause.
pub(super) fn writer_stopped(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::Shared(inner) => writer_stopped(inner),
        DataFusionError::External(inner) => inner.is::<WriterStopped>(),
        _ => false,
    }
}

/// A task of the sort that stopped (panicked or was cancelled), as an error.
fn stopped(what: &str, e: &tokio::task::JoinError) -> DataFusionError {
    DataFusionError::Execution(format!("the partition sort stopped while {what}: {e}"))
}

impl Layout {
    fn new(
        schema: SchemaRef,
        partition_by: &[String],
        key: &[String],
        task: Arc<TaskContext>,
    ) -> DfResult<Self> {
        let input = schema;
        let part_idx = partition_by
            .iter()
            .map(|c| input.index_of(c).map_err(DataFusionError::from))
            .collect::<DfResult<Vec<_>>>()?;
        let mut held = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in input.fields().iter().enumerate() {
            if part_idx.contains(&i) {
                continue;
            }
            let (how, t) = Held::of(f.data_type());
            held.push(HeldColumn {
                input: i,
                how,
                input_type: f.data_type().clone(),
            });
            fields.push(f.as_ref().clone().with_data_type(t));
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let key_idx: Vec<usize> = key
            .iter()
            .filter(|c| !partition_by.contains(c))
            .map(|c| schema.index_of(c).map_err(DataFusionError::from))
            .collect::<DfResult<_>>()?;
        let rest_idx = (0..schema.fields().len())
            .filter(|i| !key.contains(schema.field(*i).name()))
            .collect();
        let sort_fields = part_idx
            .iter()
            .map(|&i| SortField::new_with_options(input.field(i).data_type().clone(), ASCENDING))
            .collect();
        let key_types: Vec<&DataType> = key_idx
            .iter()
            .map(|&c| schema.field(c).data_type())
            .collect();
        let width: Option<usize> = key_types
            .iter()
            .map(|t| t.primitive_width().map(|w| w + 1))
            .sum();
        let key_converter = match width {
            Some(w) if w <= 16 && !key_types.is_empty() => Some(RowConverter::new(
                key_types
                    .iter()
                    .map(|t| SortField::new_with_options((*t).clone(), ASCENDING))
                    .collect(),
            )?),
            _ => None,
        };
        let metrics = SpillMetrics::new(&ExecutionPlanMetricsSet::new(), 0);
        let spills = SpillManager::new(task.runtime_env(), metrics, Arc::clone(&schema));
        Ok(Layout {
            input,
            schema,
            held: held.into(),
            part_idx,
            key_idx,
            rest_idx,
            converter: RowConverter::new(sort_fields)?,
            key_converter,
            spills,
            task,
            stats: Arc::default(),
        })
    }

    /// The columns of an input batch as appended to buckets (see [`Held::hold`]).
    fn hold(&self, batch: &RecordBatch) -> DfResult<Vec<ArrayRef>> {
        self.held
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| c.how.hold(batch.column(c.input), f.name()))
            .collect()
    }

    /// A batch of `bucket` in the output schema: the held columns restored and the partition
    /// columns put back.
    fn output(&self, bucket: &Bucket, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let n = batch.num_rows();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.input.fields().len()];
        let zeros = arrow::array::UInt32Array::from(vec![0u32; n]);
        for (p, &i) in self.part_idx.iter().enumerate() {
            columns[i] = Some(arrow::compute::take(&bucket.columns[p], &zeros, None)?);
        }
        for (c, a) in self.held.iter().zip(batch.columns()) {
            columns[c.input] = Some(c.how.restore(a, &c.input_type)?);
        }
        let columns = columns.into_iter().map(|c| c.expect("every column set"));
        Ok(RecordBatch::try_new(
            Arc::clone(&self.input),
            columns.collect(),
        )?)
    }

    /// The order of the rows of `batches` (taken as one): by key, then, where keys repeat, by
    /// the hash of the other columns.
    fn sort_indices(&self, batches: &[RecordBatch]) -> DfResult<Vec<u32>> {
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let concat = |c: usize| -> DfResult<ArrayRef> {
            let refs: Vec<&dyn arrow::array::Array> =
                batches.iter().map(|b| b.column(c).as_ref()).collect();
            Ok(arrow::compute::concat(&refs)?)
        };
        let keys = || {
            self.key_idx
                .iter()
                .map(|&c| concat(c))
                .collect::<DfResult<Vec<_>>>()
        };
        let packed = match packed_keys(batches, &self.key_idx) {
            Some(packed) => Some(packed),
            None => match &self.key_converter {
                // Keys as integers: the row format's bytes, big-endian (every row of a key of
                // primitive types has the same length, at most 16 bytes).
                Some(converter) => {
                    let rows = converter.convert_columns(&keys()?)?;
                    let bytes = rows.iter().next().map_or(0, |r| r.as_ref().len());
                    let keys = rows
                        .iter()
                        .map(|r| {
                            debug_assert_eq!(r.as_ref().len(), bytes);
                            let mut b = [0u8; 16];
                            b[16 - bytes..].copy_from_slice(r.as_ref());
                            u128::from_be_bytes(b)
                        })
                        .collect();
                    Some(Packed::of(keys, 8 * bytes as u32))
                }
                None => None,
            },
        };
        let (mut indices, ties) = if self.key_idx.is_empty() {
            (
                (0..total as u32).collect::<Vec<_>>(),
                std::iter::once(0..total).collect(),
            )
        } else if let Some(packed) = packed {
            packed.order()
        } else {
            let keys = keys()?;
            let columns: Vec<arrow::compute::SortColumn> = keys
                .iter()
                .map(|k| arrow::compute::SortColumn {
                    values: Arc::clone(k),
                    options: Some(ASCENDING),
                })
                .collect();
            let sorted = arrow::compute::lexsort_to_indices(&columns, None)?;
            let sorted_keys = keys
                .iter()
                .map(|k| arrow::compute::take(k, &sorted, None))
                .collect::<Result<Vec<_>, _>>()?;
            let ties = arrow::compute::partition(&sorted_keys)?
                .ranges()
                .into_iter()
                .filter(|r| r.len() > 1)
                .collect();
            (sorted.values().to_vec(), ties)
        };
        if self.rest_idx.is_empty() || ties.is_empty() {
            // Rows sharing a key (if any) are the same row: their order does not show.
            return Ok(indices);
        }
        // Hash the rows that share a key with another, all at once, and order each run of them.
        let locate = Locator::new(batches);
        let tied: Vec<(usize, usize)> = ties
            .iter()
            .flat_map(|r| indices[r.clone()].iter().map(|&g| locate.at(g)))
            .collect();
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let tied = arrow::compute::interleave_record_batch(&refs, &tied)?;
        let hashes = tie_hashes(&self.held, &self.rest_idx, &tied)?;
        let mut at = 0;
        for r in ties {
            let mut run: Vec<(u64, u32)> = hashes[at..at + r.len()]
                .iter()
                .copied()
                .zip(indices[r.clone()].iter().copied())
                .collect();
            at += r.len();
            run.sort_unstable();
            for (slot, (_, g)) in indices[r].iter_mut().zip(run) {
                *slot = g;
            }
        }
        Ok(indices)
    }

    /// Appends `bucket`'s batches to its open spill file (a new one if none is open); returns
    /// the bytes freed.
    fn spill(&self, bucket: &mut Bucket) -> DfResult<usize> {
        let batches = std::mem::take(&mut bucket.batches);
        if batches.is_empty() {
            return Ok(0);
        }
        let file = match &mut bucket.open {
            Some(file) => file,
            None => {
                let env = self.task.runtime_env();
                self.stats
                    .spill_files
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                bucket.open.insert(super::spill::Appending::new(
                    &env,
                    &self.schema,
                    "wap bucket sort",
                )?)
            }
        };
        file.append(&batches)?;
        self.stats
            .spills
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(batches);
        let bytes = std::mem::take(&mut bucket.bytes);
        self.stats
            .spilled_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        bucket.spilled_bytes += bytes;
        Ok(bytes)
    }

    /// A bucket sorted by DataFusion's spilling sort: by key, then the tiebreak hash of every
    /// row (the same order as [`Self::sort_indices`]). The output is held rows, hash dropped.
    fn sort_outside(
        &self,
        batches: Vec<RecordBatch>,
        spilled: Vec<Arc<dyn SpillFile>>,
    ) -> DfResult<SendableRecordBatchStream> {
        let hashed = !self.rest_idx.is_empty();
        let mut fields: Vec<arrow::datatypes::FieldRef> = self.schema.fields().to_vec();
        if hashed {
            fields.push(Arc::new(arrow::datatypes::Field::new(
                TIEBREAK,
                DataType::UInt64,
                false,
            )));
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let mut exprs = self
            .key_idx
            .iter()
            .map(|&c| physical_col(self.schema.field(c).name(), &schema))
            .collect::<DfResult<Vec<_>>>()?;
        if hashed {
            exprs.push(physical_col(TIEBREAK, &schema)?);
        }
        let input = OnceStream::new(Arc::clone(&self.schema), batches, spilled, &self.spills)?;
        let Some(ordering) = LexOrdering::new(
            exprs
                .into_iter()
                .map(|e| PhysicalSortExpr::new(e, ASCENDING)),
        ) else {
            // No key column and nothing to hash: every row is the same row.
            return Ok(input.take());
        };
        // The hash column, computed batch by batch as the sort reads (same values as in memory).
        let rest: Vec<usize> = self.rest_idx.clone();
        let held = Arc::clone(&self.held);
        let with_hash = Arc::clone(&schema);
        let stream = input.take().map(move |batch| {
            let batch = batch?;
            let hashes = tie_hashes(&held, &rest, &batch)?;
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(arrow::array::UInt64Array::from(hashes)));
            Ok(RecordBatch::try_new(Arc::clone(&with_hash), columns)?)
        });
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&schema), stream));
        let plan = StreamingTableExec::try_new(
            Arc::clone(&schema),
            vec![Arc::new(OnceStream::of(stream))],
            None,
            Vec::<LexOrdering>::new(),
            false,
            None,
        )?;
        let sort = SortExec::new(ordering, Arc::new(plan));
        let sorted = sort.execute(0, Arc::clone(&self.task))?;
        let width = self.schema.fields().len();
        let out = Arc::clone(&self.schema);
        let dropped = sorted.map(move |b| {
            let b = b?;
            Ok(RecordBatch::try_new(
                Arc::clone(&out),
                b.columns()[..width].to_vec(),
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            dropped,
        )))
    }
}

/// The buckets of one input: each row goes to its partition's bucket (one copy); whole buckets
/// spill to disk (Arrow IPC) when the memory pool refuses more.
struct BucketSorter {
    layout: Arc<Layout>,
    /// Each partition's bucket, by its values in the row format: looked up for every row whose
    /// partition differs from the row before's (in a source in no partition order, nearly
    /// every row), so hashed with foldhash, not SipHash.
    index: datafusion::common::HashMap<Vec<u8>, usize>,
    buckets: Vec<Bucket>,
    reservation: MemoryReservation,
    /// This input's share of a bounded pool, and the sorting tasks after it, which decide how
    /// much its buckets hold before spilling (see [`Self::budget`]).
    share: Option<usize>,
    outputs: usize,
}

/// What one input left: its buckets (every row in a completed batch) and the memory they hold.
struct Part {
    buckets: Vec<Bucket>,
    reservation: MemoryReservation,
}

impl BucketSorter {
    /// The sorter of input `i` of `inputs`, ahead of `outputs` sorting tasks.
    fn new(i: usize, inputs: usize, outputs: usize, layout: Arc<Layout>) -> Self {
        let pool = layout.task.memory_pool();
        let reservation = MemoryConsumer::new(format!("wap bucket sort {i}"))
            .with_can_spill(true)
            .register(pool);
        let inputs = inputs.max(1);
        let share = match pool.memory_limit() {
            MemoryLimit::Finite(limit) => Some(limit / inputs),
            MemoryLimit::Infinite | MemoryLimit::Unknown => None,
        };
        BucketSorter {
            layout,
            index: Default::default(),
            buckets: Vec::new(),
            reservation,
            share,
            outputs: outputs.max(1),
        }
    }

    /// The most this input's buckets hold now: its share of the pool less its share of the room
    /// the sorting tasks will need (two copies of a partition per output, the partition
    /// estimated from this input's largest bucket so far: partitions are spread over all
    /// inputs), but at least half of its share. Small partitions leave most of the pool to the
    /// buckets, so that less is spilled; large ones leave the room to sort them, so that the sorting tasks need not spill held buckets to make room (memory
    /// freed and allocated again, which the allocator is slow to give back).
    fn budget(&self) -> usize {
        let Some(share) = self.share else {
            return usize::MAX;
        };
        let largest = self
            .buckets
            .iter()
            .map(|b| b.total() + b.builder.size())
            .max()
            .unwrap_or(0);
        let room = 2 * self.outputs * largest;
        share.saturating_sub(room).max(share / 2)
    }

    /// The bucket of the partition `row` (the values of row `r` of `batch`).
    fn bucket_of(
        &mut self,
        row: arrow::row::Row<'_>,
        batch: &RecordBatch,
        r: usize,
    ) -> DfResult<usize> {
        if let Some(&b) = self.index.get(row.as_ref()) {
            return Ok(b);
        }
        let at = arrow::array::UInt32Array::from(vec![r as u32]);
        let columns = self
            .layout
            .part_idx
            .iter()
            .map(|&i| arrow::compute::take(batch.column(i), &at, None))
            .collect::<Result<Vec<_>, _>>()?;
        let b = self.buckets.len();
        self.index.insert(row.as_ref().to_vec(), b);
        self.buckets.push(Bucket {
            values: row.owned(),
            columns,
            builder: BatchBuilder::new(Arc::clone(&self.layout.schema), BUCKET_BATCH_ROWS),
            batches: Vec::new(),
            bytes: 0,
            spills: Vec::new(),
            open: None,
            spilled_bytes: 0,
        });
        Ok(b)
    }

    /// Appends the rows of `batch` to their buckets.
    fn push(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let layout = Arc::clone(&self.layout);
        let cols: Vec<ArrayRef> = layout
            .part_idx
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let rows = layout.converter.convert_columns(&cols)?;
        // Each row's bucket (consecutive rows of one partition are looked up once).
        let mut ids: Vec<u32> = Vec::with_capacity(n);
        let mut last: Option<(arrow::row::Row<'_>, u32)> = None;
        for (r, row) in rows.iter().enumerate() {
            let b = match last {
                Some((prev, b)) if prev == row => b,
                _ => self.bucket_of(row, batch, r)? as u32,
            };
            last = Some((row, b));
            ids.push(b);
        }
        let held = layout.hold(batch)?;
        let row_bytes = held
            .iter()
            .map(super::builder::appended_size)
            .sum::<usize>()
            / n;
        // The rows of each bucket, in input order (a counting sort by bucket).
        let mut starts = vec![0usize; self.buckets.len() + 1];
        for &b in &ids {
            starts[b as usize + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        let mut next = starts.clone();
        let mut rows = vec![0u32; n];
        for (r, &b) in ids.iter().enumerate() {
            rows[next[b as usize]] = r as u32;
            next[b as usize] += 1;
        }
        // In rounds, all buckets at once (column by column): the rows each bucket's batch has
        // room for, then completed batches are closed. One round but for a batch completing
        // mid-way.
        let mut pending: Vec<(usize, &[u32])> = (0..self.buckets.len())
            .map(|b| (b, &rows[starts[b]..starts[b + 1]]))
            .filter(|(_, rows)| !rows.is_empty())
            .collect();
        while !pending.is_empty() {
            let mut now = Vec::with_capacity(pending.len());
            let mut later = Vec::new();
            let mut next = pending.iter().peekable();
            for (b, bucket) in self.buckets.iter_mut().enumerate() {
                let Some(&(_, rows)) = next.next_if(|(p, _)| *p == b) else {
                    continue;
                };
                let n = bucket.room(row_bytes).min(rows.len());
                now.push((&mut bucket.builder, &rows[..n]));
                if n < rows.len() {
                    later.push((b, &rows[n..]));
                }
            }
            super::builder::append_to_many(&held, &mut now)?;
            drop(now);
            for bucket in &mut self.buckets {
                if bucket.full() {
                    bucket.close()?;
                }
            }
            pending = later;
        }
        let held: usize = (0..self.buckets.len()).map(|b| self.spillable(b)).sum();
        self.account(held)
    }

    /// Makes the reservation `held` bytes. Beyond the budget, or when the pool refuses, spills
    /// the largest buckets until a quarter of what is held is free: few, large spills (each
    /// spill is a file), and most of the budget still held when the input ends (emitted without
    /// a spill).
    fn account(&mut self, held: usize) -> DfResult<()> {
        if held <= self.budget() && self.try_resize(held) {
            return Ok(());
        }
        let mut held = held;
        let target = held - held / 4;
        while held > target {
            let Some(largest) = (0..self.buckets.len())
                .filter(|&b| self.spillable(b) > 0)
                .max_by_key(|&b| self.spillable(b))
            else {
                break;
            };
            held = held.saturating_sub(self.spill(largest)?);
        }
        if !self.try_resize(held) {
            // The pool is full of others' memory and nothing of ours is left to spill: hold
            // what we have (at most one input batch) rather than fail.
            self.reservation.grow(held - self.reservation.size());
        }
        Ok(())
    }

    /// Sets the reservation to `held` bytes if the pool allows it.
    fn try_resize(&mut self, held: usize) -> bool {
        let now = self.reservation.size();
        if held <= now {
            self.reservation.shrink(now - held);
            true
        } else {
            self.reservation.try_grow(held - now).is_ok()
        }
    }

    /// Bytes bucket `b` holds: its batches and the batch being filled.
    fn spillable(&self, b: usize) -> usize {
        let bucket = &self.buckets[b];
        bucket.bytes + bucket.builder.size()
    }

    /// Spills bucket `b`, its partly filled batch included; returns the bytes freed.
    fn spill(&mut self, b: usize) -> DfResult<usize> {
        let bucket = &mut self.buckets[b];
        bucket.close()?;
        self.layout.spill(bucket)
    }

    /// The input is done: every bucket's partly filled batch completed.
    fn finish(mut self) -> DfResult<Part> {
        for bucket in &mut self.buckets {
            bucket.close()?;
            bucket.seal()?;
        }
        let held: usize = self.buckets.iter().map(Bucket::total).sum();
        self.layout
            .stats
            .held_bytes
            .fetch_add(held, std::sync::atomic::Ordering::Relaxed);
        Ok(Part {
            buckets: self.buckets,
            reservation: self.reservation,
        })
    }
}

impl Bucket {
    /// Rows (about `row_bytes` each) the batch being filled has room for: at least one.
    fn room(&self, row_bytes: usize) -> usize {
        let rows = BUCKET_BATCH_ROWS - self.builder.rows();
        let fit = BUCKET_BATCH_BYTES.saturating_sub(self.builder.size()) / row_bytes.max(1);
        rows.min(fit.max(1))
    }

    /// Whether the batch being filled is complete.
    fn full(&self) -> bool {
        self.builder.rows() == BUCKET_BATCH_ROWS || self.builder.size() >= BUCKET_BATCH_BYTES
    }

    /// Completes the partly filled batch, if any.
    fn close(&mut self) -> DfResult<()> {
        if self.builder.rows() > 0 {
            let done = self.builder.finish()?;
            self.bytes += done.get_array_memory_size();
            self.batches.push(done);
        }
        Ok(())
    }

    /// Ends the open spill file, if any: readable, and no more is appended to it.
    fn seal(&mut self) -> DfResult<()> {
        if let Some(file) = self.open.take() {
            self.spills.push(file.finish()?);
        }
        Ok(())
    }

    /// Bytes in memory and spilled.
    fn total(&self) -> usize {
        self.bytes + self.spilled_bytes
    }
}

/// The partitions of all inputs, each one bucket, and the tasks that sort and send them.
struct Emitter {
    layout: Arc<Layout>,
    queue: Mutex<Queue>,
}

/// The buckets still to sort (the next one last), and the memory those in memory hold.
struct Queue {
    buckets: Vec<Bucket>,
    held: MemoryReservation,
}

impl Emitter {
    /// Joins the buckets of each partition across `parts`. Buckets held in memory come first
    /// (their memory is then free for the spilled ones), larger ones before smaller ones (so
    /// that the outputs finish together).
    fn new(layout: Arc<Layout>, parts: Vec<Part>) -> Self {
        let mut index: HashMap<OwnedRow, usize> = HashMap::new();
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut reservations = Vec::new();
        for part in parts {
            reservations.push(part.reservation);
            for bucket in part.buckets {
                debug_assert!(bucket.open.is_none(), "inputs seal their spill files");
                match index.get(&bucket.values) {
                    Some(&b) => {
                        let joined = &mut buckets[b];
                        joined.batches.extend(bucket.batches);
                        joined.bytes += bucket.bytes;
                        joined.spills.extend(bucket.spills);
                        joined.spilled_bytes += bucket.spilled_bytes;
                    }
                    None => {
                        index.insert(bucket.values.clone(), buckets.len());
                        buckets.push(bucket);
                    }
                }
            }
        }
        // Sorted last-first: the queue pops from the end.
        let rank = |b: &Bucket| (!b.spills.is_empty(), std::cmp::Reverse(b.total()));
        buckets.sort_by(|x, y| (rank(y), &y.values).cmp(&(rank(x), &x.values)));
        layout
            .stats
            .buckets
            .store(buckets.len(), std::sync::atomic::Ordering::Relaxed);
        // One reservation for what is held, made before the inputs' are let go. It never asks
        // for more, and the tasks that sort spill it to make room: as a consumer that cannot
        // spill, it leaves those tasks the rest of the pool to share.
        let held = MemoryConsumer::new("wap bucket sort held").register(layout.task.memory_pool());
        held.grow(buckets.iter().map(|b| b.bytes).sum());
        drop(reservations);
        Emitter {
            layout,
            queue: Mutex::new(Queue { buckets, held }),
        }
    }

    /// The next bucket, and whether it is sorted in memory: reading its spilled part back plus
    /// the sort columns and scratch count as a second copy of the bucket (with less, what is
    /// outside the pool's view grows past the process's memory target). Room is made by
    /// spilling the buckets still to come, largest first; when there is none, the bucket goes
    /// to DataFusion's spilling sort.
    fn next(&self, reservation: &mut MemoryReservation) -> DfResult<Option<(Bucket, bool)>> {
        let mut queue = self
            .queue
            .lock()
            .expect("no sort task panics holding the queue");
        let queue = &mut *queue;
        let Some(bucket) = queue.buckets.pop() else {
            return Ok(None);
        };
        queue.held.shrink(bucket.bytes.min(queue.held.size()));
        reservation.grow(bucket.bytes);
        let extra = 2 * bucket.total() - bucket.bytes;
        let in_memory = loop {
            if reservation.try_grow(extra).is_ok() {
                break true;
            }
            let Some(largest) = (0..queue.buckets.len())
                .filter(|&o| queue.buckets[o].bytes > 0)
                .max_by_key(|&o| queue.buckets[o].bytes)
            else {
                break false;
            };
            let spilled = &mut queue.buckets[largest];
            let freed = self.layout.spill(spilled)?;
            spilled.seal()?;
            queue.held.shrink(freed.min(queue.held.size()));
        };
        if !in_memory {
            // The spilling sort accounts for itself.
            reservation.free();
        }
        Ok(Some((bucket, in_memory)))
    }

    /// The next bucket, to sort ahead, if sorting it takes at most 1/[`AHEAD_SHARE`] of the
    /// pool and it fits without spilling anything to make room (see [`Emitter::next`]) and
    /// with room left for the bucket after it; its memory is taken in `reservation`. Else
    /// `None`, and the queue is as it was.
    fn next_if_room(&self, reservation: &mut MemoryReservation) -> Option<Bucket> {
        let mut queue = self
            .queue
            .lock()
            .expect("no sort task panics holding the queue");
        let (bucket, after) = match queue.buckets.as_slice() {
            [.., after, bucket] => (bucket, 2 * after.total()),
            [bucket] => (bucket, 0),
            [] => return None,
        };
        let need = 2 * bucket.total();
        let bytes = bucket.bytes;
        // What the bucket holds moves from the queue's reservation to this one: net nothing.
        queue.held.shrink(bytes.min(queue.held.size()));
        reservation.grow(bytes);
        // The pool checks each reservation against a task's fair share, not a task's
        // reservations together nor the pool's total: that total is checked here, with room
        // left for the bucket after this one, which the other sorting task takes next (sorting
        // ahead must not send it to the spilling sort).
        let pool = self.layout.task.memory_pool();
        let limit = match pool.memory_limit() {
            MemoryLimit::Finite(limit) => limit,
            MemoryLimit::Infinite | MemoryLimit::Unknown => usize::MAX,
        };
        let room = limit.saturating_sub(pool.reserved());
        if need > limit / AHEAD_SHARE
            || need - bytes + after > room
            || reservation.try_grow(need - bytes).is_err()
        {
            reservation.free();
            queue.held.grow(bytes);
            return None;
        }
        queue.buckets.pop()
    }

    /// Reads `bucket`'s spilled part back and sorts it, in memory.
    async fn prepare(&self, mut bucket: Bucket, reservation: MemoryReservation) -> DfResult<Ready> {
        let layout = &self.layout;
        let mut all = Vec::new();
        for file in std::mem::take(&mut bucket.spills) {
            all.extend(super::spill::read(file).await?);
        }
        all.extend(std::mem::take(&mut bucket.batches));
        // Sort the sort columns alone; the rows are gathered batch by batch when sent: the
        // bucket is never copied whole.
        let indices = layout.sort_indices(&all)?;
        Ok(Ready {
            bucket,
            all,
            indices,
            _reservation: reservation,
        })
    }

    /// Sorts buckets and sends them on `tx` until none is left; fails if the receiver is gone.
    /// While a bucket sorted in memory is sent, the next one is read back and sorted on a task
    /// of its own if memory allows without spilling: the writer then does not wait for it.
    async fn emit(
        self: Arc<Self>,
        w: usize,
        tx: mpsc::Sender<DfResult<RecordBatch>>,
    ) -> DfResult<()> {
        let layout = &self.layout;
        let pool = layout.task.memory_pool();
        // One consumer per task, whatever it holds: the pool's fair share divides by consumers.
        let task = MemoryConsumer::new(format!("wap bucket emit {w}"))
            .with_can_spill(true)
            .register(pool);
        let consumer = || task.new_empty();
        let mut upcoming: Option<Prefetch> = None;
        loop {
            let ready = match upcoming.take() {
                Some(prefetch) => prefetch.join().await?,
                None => {
                    let mut reservation = consumer();
                    let Some((mut bucket, in_memory)) = self.next(&mut reservation)? else {
                        return Ok(());
                    };
                    if !in_memory {
                        layout
                            .stats
                            .external
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let batches = std::mem::take(&mut bucket.batches);
                        let spilled = std::mem::take(&mut bucket.spills);
                        let mut sorted = layout.sort_outside(batches, spilled)?;
                        while let Some(batch) = sorted.next().await {
                            if tx.send(layout.output(&bucket, &batch?)).await.is_err() {
                                return Err(gone());
                            }
                        }
                        continue;
                    }
                    self.prepare(bucket, reservation).await?
                }
            };
            let mut next = consumer();
            if let Some(bucket) = self.next_if_room(&mut next) {
                layout
                    .stats
                    .ahead
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let emitter = Arc::clone(&self);
                upcoming = Some(Prefetch(tokio::spawn(async move {
                    emitter.prepare(bucket, next).await
                })));
            }
            let locate = Locator::new(&ready.all);
            let refs: Vec<&RecordBatch> = ready.all.iter().collect();
            for chunk in ready.indices.chunks(EMIT_ROWS) {
                let batch = gather(&layout.schema, &refs, &locate, chunk)?;
                if tx.send(layout.output(&ready.bucket, &batch)).await.is_err() {
                    return Err(gone());
                }
            }
        }
    }
}

/// A bucket read back and sorted, and the memory it holds until sent.
struct Ready {
    bucket: Bucket,
    all: Vec<RecordBatch>,
    indices: Vec<u32>,
    _reservation: MemoryReservation,
}

/// The next bucket being prepared on a task of its own; stopped if dropped unjoined (the
/// sorting task failed).
struct Prefetch(tokio::task::JoinHandle<DfResult<Ready>>);

impl Prefetch {
    async fn join(mut self) -> DfResult<Ready> {
        (&mut self.0)
            .await
            .map_err(|e| stopped("sorting ahead", &e))?
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rows of a batch that consecutive sorted rows run over, on average, from which they are
/// copied run by run rather than row by row.
const RUN_ROWS: usize = 16;

/// Rows `rows` of `batches` taken as one (see [`Locator`]), in that order, as one batch. Sources
/// sorted by the key, as many are, leave a bucket's batches sorted, so that sorted rows come in
/// long runs of consecutive rows of one batch: those are found from the row numbers alone and
/// copied as slices (a copy per run and column), other rows one by one.
fn gather(
    schema: &SchemaRef,
    batches: &[&RecordBatch],
    locate: &Locator,
    rows: &[u32],
) -> DfResult<RecordBatch> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    let mut at = 0;
    while at < rows.len() {
        if runs.len() * RUN_ROWS > rows.len() {
            let scattered: Vec<(usize, usize)> = rows.iter().map(|&g| locate.at(g)).collect();
            return Ok(arrow::compute::interleave_record_batch(
                batches, &scattered,
            )?);
        }
        let first = rows[at];
        let (b, r) = locate.at(first);
        // The run ends where the row numbers stop counting up or the batch ends.
        let room = batches[b].num_rows() - r;
        let mut len = 1;
        while len < room && at + len < rows.len() && rows[at + len] == first + len as u32 {
            len += 1;
        }
        runs.push((b, r, len));
        at += len;
    }
    let slices: Vec<RecordBatch> = runs
        .iter()
        .map(|&(b, start, len)| batches[b].slice(start, len))
        .collect();
    Ok(arrow::compute::concat_batches(schema, &slices)?)
}

/// Finds row `g` of batches taken as one.
struct Locator {
    starts: Vec<usize>,
}

impl Locator {
    fn new(batches: &[RecordBatch]) -> Self {
        let mut starts = Vec::with_capacity(batches.len());
        let mut at = 0;
        for batch in batches {
            starts.push(at);
            at += batch.num_rows();
        }
        Locator { starts }
    }

    /// `(batch, row)` of row `g`.
    fn at(&self, g: u32) -> (usize, usize) {
        let g = g as usize;
        let batch = self.starts.partition_point(|&s| s <= g) - 1;
        (batch, g - self.starts[batch])
    }
}

/// A bucket too large to sort in memory, as the one-shot input of a spilling sort.
struct OnceStream {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnceStream")
    }
}

impl OnceStream {
    /// The bucket's spilled batches, then those held in memory.
    fn new(
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        spilled: Vec<Arc<dyn SpillFile>>,
        spills: &SpillManager,
    ) -> DfResult<Self> {
        let mut parts: Vec<SendableRecordBatchStream> = Vec::new();
        for file in spilled {
            parts.push(spills.read_spill_as_stream_unbuffered(file, None)?);
        }
        let held = futures::stream::iter(batches.into_iter().map(Ok));
        let chained = futures::stream::iter(parts).flatten().chain(held);
        Ok(Self::of(Box::pin(RecordBatchStreamAdapter::new(
            schema, chained,
        ))))
    }

    fn of(stream: SendableRecordBatchStream) -> Self {
        OnceStream {
            schema: stream.schema(),
            stream: Mutex::new(Some(stream)),
        }
    }

    /// The stream itself; an error stream the second time.
    fn take(&self) -> SendableRecordBatchStream {
        let taken = self.stream.lock().expect("not poisoned").take();
        taken.unwrap_or_else(|| {
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async {
                    Err(DataFusionError::Internal("bucket read twice".into()))
                }),
            ))
        })
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Decimal128Array, Int64Array, StringViewArray};
    use arrow::datatypes::{Field, Schema};
    use object_store::memory::InMemory;

    /// Rows of partition `p`, key `k` (an integer, or with `string_key` the same numbers as
    /// zero-padded strings), and two other columns (see [`input_keyed`]).
    fn input(seed: u64, string_key: bool) -> (SchemaRef, Vec<RecordBatch>) {
        let key_type = if string_key {
            DataType::Utf8
        } else {
            DataType::Int64
        };
        input_keyed(seed, &key_type)
    }

    /// [`input`] with key `k` of `key_type`: the same numbers (zero-padded strings for Utf8),
    /// so that every key type orders the rows alike.
    fn input_keyed(seed: u64, key_type: &DataType) -> (SchemaRef, Vec<RecordBatch>) {
        let key_type = key_type.clone();
        let string_key = key_type == DataType::Utf8;
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Utf8View, true),
            Field::new("k", key_type.clone(), true),
            Field::new("t", DataType::Decimal128(12, 2), false),
            Field::new("v", DataType::Utf8View, true),
        ]));
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        };
        let batches = (0..40)
            .map(|_| {
                let n = 1000;
                let mut p = Vec::new();
                let mut k = Vec::new();
                let mut t = Vec::new();
                let mut v = Vec::new();
                for _ in 0..n {
                    // One partition far larger than the others, and a NULL partition.
                    let r = next() % 20;
                    p.push(match r {
                        0..=9 => Some("big".to_string()),
                        10 => None,
                        _ => Some(format!("p{r}")),
                    });
                    k.push((next() % 7 != 0).then(|| (next() % 5000) as i64));
                    let payload = format!("payload number {} of a row long enough", next());
                    // Few distinct values: rows sharing a key often differ only in `v`.
                    t.push((next() % 3) as i128 * 150);
                    v.push(Some(payload));
                }
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringViewArray::from(p)),
                        arrow::compute::cast(
                            &(Arc::new(Int64Array::from(k)) as ArrayRef),
                            &key_type,
                        )
                        .map(|k| {
                            if string_key {
                                // Zero-padded, so that strings sort like the numbers.
                                let k = k.as_string::<i32>();
                                Arc::new(
                                    k.iter()
                                        .map(|v| v.map(|v| format!("{v:0>5}")))
                                        .collect::<arrow::array::StringArray>(),
                                ) as ArrayRef
                            } else {
                                k
                            }
                        })
                        .unwrap(),
                        Arc::new(
                            Decimal128Array::from(t)
                                .with_precision_and_scale(12, 2)
                                .unwrap(),
                        ),
                        Arc::new(StringViewArray::from(v)),
                    ],
                )
                .unwrap()
            })
            .collect();
        (schema, batches)
    }

    /// A sort by partition `p`, then `key`, of `items` dealt round-robin to `inputs` streams,
    /// into `outputs` streams, in `ctx`: its outputs and its statistics.
    fn sort(
        ctx: &datafusion::prelude::SessionContext,
        schema: &SchemaRef,
        key: &str,
        items: Vec<DfResult<RecordBatch>>,
        (inputs, outputs): (usize, usize),
    ) -> (Vec<SendableRecordBatchStream>, Arc<Stats>) {
        let mut dealt: Vec<Vec<DfResult<RecordBatch>>> = (0..inputs).map(|_| Vec::new()).collect();
        for (i, item) in items.into_iter().enumerate() {
            dealt[i % inputs].push(item);
        }
        let streams = dealt
            .into_iter()
            .map(|items| {
                Box::pin(RecordBatchStreamAdapter::new(
                    Arc::clone(schema),
                    futures::stream::iter(items),
                )) as SendableRecordBatchStream
            })
            .collect();
        sort_partitions(
            streams,
            Arc::clone(schema),
            &["p".to_string()],
            &[key.to_string()],
            ctx.task_ctx(),
            outputs,
            None,
        )
        .unwrap()
    }

    /// A session with the default pool.
    fn session() -> datafusion::prelude::SessionContext {
        crate::engine::session(&Default::default(), Arc::new(InMemory::new()), None).unwrap()
    }

    /// The batches of every output, output after output (any error fails the test).
    async fn emitted(outputs: Vec<SendableRecordBatchStream>) -> Vec<RecordBatch> {
        drain(outputs)
            .await
            .into_iter()
            .flatten()
            .map(|b| b.unwrap())
            .collect()
    }

    /// Every item of every output, the outputs read at once, one after the other.
    async fn drain(outputs: Vec<SendableRecordBatchStream>) -> Vec<Vec<DfResult<RecordBatch>>> {
        futures::future::join_all(outputs.into_iter().map(|o| o.collect::<Vec<_>>())).await
    }

    /// The order the test input comes in.
    #[derive(Debug, Clone, Copy)]
    enum Order {
        Given,
        Reversed,
        ByKey,
    }

    /// Sorts the input (in `shape`: inputs and outputs) with a pool of `limit` bytes: the output
    /// batches, concatenated output after output, and the spill files and external sorts it
    /// took.
    async fn sorted(
        limit: usize,
        order: Order,
        key_type: &DataType,
        shape: (usize, usize),
    ) -> (RecordBatch, Arc<Stats>) {
        let (schema, mut batches) = input_keyed(7, key_type);
        match order {
            Order::Given => {}
            Order::Reversed => {
                batches.reverse();
                for b in &mut batches {
                    let back = arrow::array::UInt32Array::from_iter_values((0..1000).rev());
                    *b = arrow::compute::take_record_batch(b, &back).unwrap();
                }
            }
            Order::ByKey => {
                // As sources sorted by the key come (ties too, by the hash of the other
                // columns, as the sort orders them): bucket batches are then long sorted runs,
                // which the sort emits by slices.
                let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
                let hashes = crate::engine::row_hash(&all.columns()[2..], all.num_rows()).unwrap();
                let columns = [
                    Arc::clone(all.column(1)),
                    Arc::new(arrow::array::UInt64Array::from(hashes)) as ArrayRef,
                ];
                let order = arrow::compute::lexsort_to_indices(
                    &columns.map(|values| arrow::compute::SortColumn {
                        values,
                        options: Some(ASCENDING),
                    }),
                    None,
                )
                .unwrap();
                let all = arrow::compute::take_record_batch(&all, &order).unwrap();
                batches = (0..40).map(|i| all.slice(i * 1000, 1000)).collect();
            }
        }
        let options = crate::engine::EngineOptions {
            memory_limit: limit,
            batch_size: 1000,
        };
        let ctx = crate::engine::session(&options, Arc::new(InMemory::new()), None).unwrap();
        let (outputs, stats) = sort(
            &ctx,
            &schema,
            "k",
            batches.into_iter().map(Ok).collect(),
            shape,
        );
        let out_schema = outputs[0].schema();
        let got = emitted(outputs).await;
        (
            arrow::compute::concat_batches(&out_schema, &got).unwrap(),
            stats,
        )
    }

    fn load(a: &std::sync::atomic::AtomicUsize) -> usize {
        a.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn check_grouped_and_sorted(batch: &RecordBatch) {
        let p = arrow::compute::cast(batch.column(0), &DataType::Utf8).unwrap();
        let p = p
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let k = arrow::compute::cast(batch.column(1), &DataType::Int64).unwrap();
        let k = k.as_primitive::<Int64Type>();
        // The tiebreak: the hash of the other columns, as the unpartitioned sort computes it.
        let hashes = crate::engine::row_hash(
            &[Arc::clone(batch.column(2)), Arc::clone(batch.column(3))],
            batch.num_rows(),
        )
        .unwrap();
        let mut ties = 0;
        let mut seen = std::collections::HashSet::new();
        for i in 0..batch.num_rows() {
            let part = p.is_valid(i).then(|| p.value(i).to_string());
            if i == 0 || part != (p.is_valid(i - 1).then(|| p.value(i - 1).to_string())) {
                assert!(
                    seen.insert(part.clone()),
                    "partition {part:?} is not contiguous"
                );
            } else {
                let (a, b) = (
                    k.is_valid(i - 1).then(|| k.value(i - 1)),
                    k.is_valid(i).then(|| k.value(i)),
                );
                assert!(a <= b, "row {i}: keys out of order ({a:?} then {b:?})");
                if a == b {
                    ties += 1;
                    assert!(
                        hashes[i - 1] <= hashes[i],
                        "row {i}: rows sharing key {a:?} out of hash order"
                    );
                }
            }
        }
        assert_eq!(seen.len(), 11, "10 partitions and NULL");
        assert!(
            ties > 1000,
            "only {ties} rows share a key with the previous one"
        );
    }

    #[tokio::test]
    async fn an_input_error_arrives_on_every_output_as_an_error_not_as_a_short_stream() {
        let (schema, batches) = input(3, false);
        let ctx = session();
        let items: Vec<DfResult<RecordBatch>> = batches
            .into_iter()
            .take(3)
            .map(Ok)
            .chain([Err(DataFusionError::Execution("source went away".into()))])
            .collect();
        let got = drain(sort(&ctx, &schema, "k", items, (2, 3)).0).await;
        assert_eq!(got.len(), 3);
        for output in got {
            assert_eq!(output.len(), 1, "no rows before the error");
            let err = output.into_iter().next().unwrap().unwrap_err();
            assert!(err.to_string().contains("source went away"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_dropped_output_stops_the_sort() {
        let (schema, batches) = input(3, false);
        let ctx = session();
        let items = batches.into_iter().map(Ok).collect();
        let (mut outputs, _) = sort(&ctx, &schema, "k", items, (2, 2));
        drop(outputs.pop());
        // The other output ends with an error instead of waiting, or ending as if complete.
        let rest = tokio::time::timeout(std::time::Duration::from_secs(30), drain(outputs))
            .await
            .expect("the sort stops");
        let last = rest[0].last().expect("an item");
        let err = last.as_ref().expect_err("the output ends with an error");
        assert!(
            err.to_string()
                .contains("writer of the partition sort stopped"),
            "{err}"
        );
        assert!(writer_stopped(err), "{err}");
    }

    #[tokio::test]
    async fn spilling_sorting_outside_memory_and_input_order_change_nothing() {
        // Integer keys (sorted as packed integers in memory), float keys (sorted as integers of
        // the row format's bytes) and string keys (sorted column by column).
        for key_type in [DataType::Int64, DataType::Float64, DataType::Utf8] {
            same_order_whatever_the_memory(&key_type).await;
        }
    }

    async fn same_order_whatever_the_memory(key_type: &DataType) {
        // Everything in memory; spilled buckets sorted in memory; the big bucket larger than the
        // pool (sorted by DataFusion's spilling sort). Each with the input in reverse order, and
        // sorted by the key, too.
        let (roomy, stats) = sorted(1 << 30, Order::Given, key_type, (1, 1)).await;
        assert_eq!((load(&stats.spills), load(&stats.external)), (0, 0));
        // With room, every bucket but the first is sorted while the one before it is sent.
        assert_eq!(load(&stats.ahead), load(&stats.buckets) - 1);
        assert_eq!(roomy.num_rows(), 40_000);
        assert_eq!(
            roomy.schema(),
            input_keyed(7, key_type).0,
            "the input's types come back"
        );
        check_grouped_and_sorted(&roomy);
        // The same rows per partition, in the same order (buckets may come in another order).
        let by_partition = |b: &RecordBatch| {
            let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for i in 0..b.num_rows() {
                let cells: Vec<String> = (0..b.num_columns())
                    .map(|c| arrow::util::display::array_value_to_string(b.column(c), i).unwrap())
                    .collect();
                m.entry(cells[0].clone()).or_default().push(cells.join("|"));
            }
            m
        };
        let expected = by_partition(&roomy);
        // One input and output: at 3 MiB buckets spill, and are read back and sorted in
        // memory; at 1 MiB the big bucket goes to the spilling sort. Several inputs (each
        // partition split across them) and outputs: everything in memory, and at 3 MiB spills
        // (whether the big bucket then fits a sorting task's share depends on which task takes
        // it when: either way, the same rows come out).
        let cases = [
            (1 << 30, (1, 1), false, Some(false)),
            (3 << 20, (1, 1), true, Some(false)),
            (1 << 20, (1, 1), true, Some(true)),
            (1 << 30, (3, 2), false, Some(false)),
            (3 << 20, (2, 2), true, None),
        ];
        for (limit, shape, spilled, big_outside) in cases {
            for order in [Order::Given, Order::Reversed, Order::ByKey] {
                let (tight, stats) = sorted(limit, order, key_type, shape).await;
                let (spills, external) = (load(&stats.spills), load(&stats.external));
                // An input's spills of a bucket go to one file: here every case that spills,
                // spills some bucket more than once from one input.
                let files = load(&stats.spill_files);
                assert!(
                    spills == 0 || files < spills,
                    "limit {limit}, shape {shape:?}: {spills} spills in {files} files"
                );
                if limit == 1 << 30 {
                    // Each sorting task sorts its first bucket after taking it, the others
                    // ahead (a task may find nothing left to take).
                    let (ahead, buckets) = (load(&stats.ahead), load(&stats.buckets));
                    assert!(
                        (buckets - shape.1..buckets).contains(&ahead),
                        "shape {shape:?}: {ahead} of {buckets} buckets sorted ahead"
                    );
                }
                assert_eq!(
                    spills > 0,
                    spilled,
                    "limit {limit}, shape {shape:?}: {spills} spills"
                );
                if let Some(outside) = big_outside {
                    assert_eq!(
                        external > 0,
                        outside,
                        "limit {limit}, shape {shape:?}: {external} external sorts"
                    );
                }
                check_grouped_and_sorted(&tight);
                assert_eq!(
                    by_partition(&tight),
                    expected,
                    "limit {limit}, shape {shape:?}, {order:?}, key {key_type}"
                );
            }
        }
    }

    #[tokio::test]
    async fn buckets_are_sorted_ahead_only_when_small_against_the_pool() {
        // Six partitions of 4,000 rows (about 0.6 MiB held each, 1.2 MiB to sort), two
        // sorting tasks.
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Utf8View, false),
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8View, false),
        ]));
        let batches: Vec<RecordBatch> = (0..24)
            .map(|b| {
                let rows = 0..1000i64;
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringViewArray::from_iter_values(
                            rows.clone().map(|r| format!("p{}", (r + b) % 6)),
                        )),
                        Arc::new(Int64Array::from_iter_values(
                            rows.clone().map(|r| r * 24 + b),
                        )),
                        Arc::new(StringViewArray::from_iter_values(
                            rows.map(|r| format!("{r:0>100}")),
                        )),
                    ],
                )
                .unwrap()
            })
            .collect();
        let mut outputs = Vec::new();
        // 64 MiB: sorted ahead; 6 MiB: four buckets fit but each takes more than an eighth of
        // the pool, so none is sorted ahead, and none goes to the spilling sort either.
        for (limit, sorted_ahead) in [(64 << 20, 4..6), (6 << 20, 0..1)] {
            let options = crate::engine::EngineOptions {
                memory_limit: limit,
                batch_size: 1000,
            };
            let ctx = crate::engine::session(&options, Arc::new(InMemory::new()), None).unwrap();
            let items = batches.iter().cloned().map(Ok).collect();
            let (streams, stats) = sort(&ctx, &schema, "k", items, (2, 2));
            let got = emitted(streams).await;
            assert_eq!(load(&stats.buckets), 6);
            assert_eq!(
                (load(&stats.spills), load(&stats.external)),
                (0, 0),
                "limit {limit}"
            );
            let ahead = load(&stats.ahead);
            assert!(
                sorted_ahead.contains(&ahead),
                "limit {limit}: {ahead} buckets sorted ahead, expected {sorted_ahead:?}"
            );
            // Partition after partition (in any order), each by key: (p, k) of every row.
            let mut rows: Vec<(String, i64)> = Vec::new();
            for batch in &got {
                let p = arrow::compute::cast(batch.column(0), &DataType::Utf8).unwrap();
                let k = batch.column(1).as_primitive::<Int64Type>();
                rows.extend(
                    (0..batch.num_rows())
                        .map(|i| (p.as_string::<i32>().value(i).to_string(), k.value(i))),
                );
            }
            let mut seen = std::collections::HashSet::new();
            for (i, row) in rows.iter().enumerate() {
                if i == 0 || rows[i - 1].0 != row.0 {
                    assert!(seen.insert(row.0.clone()), "{} is not contiguous", row.0);
                } else {
                    assert!(rows[i - 1].1 < row.1, "limit {limit}: row {i} out of order");
                }
            }
            rows.sort();
            outputs.push(rows);
        }
        let expected: std::collections::BTreeSet<(String, i64)> = (0..24)
            .flat_map(|b| (0..1000i64).map(move |r| (format!("p{}", (r + b) % 6), r * 24 + b)))
            .collect();
        assert_eq!(outputs[0], expected.into_iter().collect::<Vec<_>>());
        assert_eq!(outputs[0], outputs[1]);
    }

    #[tokio::test]
    async fn a_key_made_of_partition_columns_orders_rows_by_their_hash() {
        let (schema, batches) = input(5, false);
        let ctx = session();
        let items = batches.into_iter().map(Ok).collect();
        let got = emitted(sort(&ctx, &schema, "p", items, (2, 2)).0).await;
        let all = arrow::compute::concat_batches(&schema, &got).unwrap();
        assert_eq!(all.num_rows(), 40_000);
        let hashes = crate::engine::row_hash(&all.columns()[1..], all.num_rows()).unwrap();
        let part = arrow::compute::cast(all.column(0), &DataType::Utf8).unwrap();
        let ranges = arrow::compute::partition(&[part]).unwrap().ranges();
        assert_eq!(ranges.len(), 11, "each partition in one run");
        for r in ranges {
            assert!(
                hashes[r.clone()].is_sorted(),
                "rows of partition at {r:?} not in hash order"
            );
        }
    }

    /// Key columns of `types` (NULLs in those marked), over three batches, with the types'
    /// extremes, zero and repeats among their values.
    fn keys_of(types: &[(DataType, bool)], seed: u64) -> Vec<RecordBatch> {
        use arrow::array::UInt64Array;
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        };
        let fields: Vec<Field> = types
            .iter()
            .enumerate()
            .map(|(i, (t, nulls))| Field::new(format!("k{i}"), t.clone(), *nulls))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        (0..3)
            .map(|_| {
                let columns = types
                    .iter()
                    .map(|(t, nulls)| {
                        let (lo, hi): (i128, i128) = match t {
                            DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
                            DataType::UInt8 => (0, u8::MAX.into()),
                            DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
                            DataType::UInt16 => (0, u16::MAX.into()),
                            DataType::Int32 | DataType::Date32 => {
                                (i32::MIN.into(), i32::MAX.into())
                            }
                            DataType::UInt32 => (0, u32::MAX.into()),
                            DataType::UInt64 => (0, u64::MAX.into()),
                            _ => (i64::MIN.into(), i64::MAX.into()),
                        };
                        let values: Vec<Option<i128>> = (0..200)
                            .map(|_| match next() % 8 {
                                0 if *nulls => None,
                                1 => Some(lo),
                                2 => Some(hi),
                                3 => Some(0),
                                4 => Some((lo + 1).max(-1)),
                                _ => Some((next() % 9) as i128 - if lo < 0 { 4 } else { 0 }),
                            })
                            .collect();
                        // Every value is within its type's range: a safe cast from 64 bits (or
                        // to 64 unsigned ones) keeps it exactly, and NULL as NULL.
                        let array: ArrayRef = if *t == DataType::UInt64 {
                            Arc::new(
                                values
                                    .iter()
                                    .map(|v| v.map(|v| v as u64))
                                    .collect::<UInt64Array>(),
                            )
                        } else {
                            let wide: ArrayRef = Arc::new(
                                values
                                    .iter()
                                    .map(|v| v.map(|v| v as i64))
                                    .collect::<Int64Array>(),
                            );
                            let narrow = arrow::compute::cast(&wide, t).unwrap();
                            assert_eq!(
                                narrow.null_count(),
                                wide.null_count(),
                                "{t}: a value out of range"
                            );
                            narrow
                        };
                        array
                    })
                    .collect();
                RecordBatch::try_new(Arc::clone(&schema), columns).unwrap()
            })
            .collect()
    }

    #[test]
    fn packed_keys_order_and_repeat_like_the_row_format() {
        use arrow::datatypes::TimeUnit;
        let cases: Vec<Vec<(DataType, bool)>> = vec![
            vec![(DataType::Int64, true), (DataType::Int32, false)],
            vec![
                (DataType::Int8, false),
                (DataType::UInt16, true),
                (DataType::Int16, true),
            ],
            vec![(DataType::UInt64, false), (DataType::Int64, false)],
            vec![(DataType::UInt32, true), (DataType::UInt8, false)],
            vec![
                (DataType::Date32, true),
                (DataType::Timestamp(TimeUnit::Microsecond, None), false),
            ],
            vec![(DataType::Int64, false), (DataType::Int32, false)],
        ];
        // Keys of at most 96 bits share one integer with their row.
        let narrow = [false, true, false, true, false, true];
        for (n, types) in cases.iter().enumerate() {
            let batches = keys_of(types, n as u64 + 1);
            let idx: Vec<usize> = (0..types.len()).collect();
            let packed = packed_keys(&batches, &idx).expect("integer keys that fit pack");
            assert_eq!(
                matches!(packed, Packed::Narrow(_)),
                narrow[n],
                "types {types:?}"
            );
            let packed = packed.rows();
            let converter = RowConverter::new(
                types
                    .iter()
                    .map(|(t, _)| SortField::new_with_options(t.clone(), ASCENDING))
                    .collect(),
            )
            .unwrap();
            let mut rows = converter.empty_rows(0, 0);
            for b in &batches {
                converter.append(&mut rows, b.columns()).unwrap();
            }
            assert_eq!(packed.len(), rows.num_rows());
            assert!(batches.iter().any(|b| b.column(0).null_count() > 0) == types[0].1);
            for i in 0..packed.len() {
                assert_eq!(packed[i].1 as usize, i);
                for j in 0..packed.len() {
                    assert_eq!(
                        packed[i].0.cmp(&packed[j].0),
                        rows.row(i).cmp(&rows.row(j)),
                        "types {types:?}, rows {i} and {j}"
                    );
                }
            }
        }
        // Past 128 bits, or not integers: not packed.
        let wide = keys_of(&[(DataType::Int64, true), (DataType::Int64, false)], 9);
        assert!(packed_keys(&wide, &[0, 1]).is_none());
        let float: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![1.0, 0.5]));
        let float = RecordBatch::try_from_iter([("f", float)]).unwrap();
        assert!(packed_keys(&[float], &[0]).is_none());
    }

    #[test]
    fn packed_rows_order_by_key_then_row_and_name_their_repeats() {
        // Keys with repeats, in a few ascending runs (the stable sort) or scattered (the
        // unstable one), up to the widest of each form.
        let mut s = 11u64;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        };
        let scattered: Vec<u128> = (0..5000).map(|_| u128::from(next() % 700)).collect();
        let runs: Vec<u128> = (0..5000u128).map(|g| (g % 1700) / 3).collect();
        for keys in [scattered, runs] {
            for bits in [96, 128] {
                let top = (u128::MAX >> (128 - bits)) - 800;
                let keys: Vec<u128> = keys.iter().map(|k| top + k).collect();
                let packed = Packed::of(keys.clone(), bits);
                assert_eq!(matches!(packed, Packed::Narrow(_)), bits <= 96);
                let mut expected: Vec<(u128, u32)> = keys.iter().copied().zip(0u32..).collect();
                expected.sort();
                let (rows, ties) = packed.order();
                let got: Vec<(u128, u32)> = rows.iter().map(|&g| (keys[g as usize], g)).collect();
                assert_eq!(got, expected, "{bits} bits");
                // The repeats of the reference order, not of the order under test.
                let mut repeats = Vec::new();
                let mut at = 0;
                for same in expected.chunk_by(|a, b| a.0 == b.0) {
                    if same.len() > 1 {
                        repeats.push(at..at + same.len());
                    }
                    at += same.len();
                }
                assert!(!repeats.is_empty());
                assert_eq!(ties, repeats, "{bits} bits");
            }
        }
    }

    #[test]
    fn gathered_rows_equal_interleaved_ones_in_runs_or_scattered() {
        let (_, batches) = input(7, true);
        let refs: Vec<&RecordBatch> = batches.iter().take(3).collect();
        let schema = refs[0].schema();
        let long = |b: usize, n: usize| (0..n).map(move |r| (b, r));
        let cases: Vec<Vec<(usize, usize)>> = vec![
            // Long runs of consecutive rows, over batch boundaries (copied by slices).
            long(1, 40).chain(long(0, 30)).chain(long(2, 25)).collect(),
            // Rows numbered consecutively across a batch's end: two runs.
            (990..1000)
                .map(|r| (0, r))
                .chain(long(1, 10))
                .chain(long(2, 30))
                .collect(),
            // Scattered rows (copied one by one).
            (0..60).map(|i| (i % 3, (i * 7) % 20)).collect(),
            // Runs, then a scattered tail that tips the balance.
            long(0, 20)
                .chain((0..30).map(|i| (i % 3, 30 - i)))
                .collect(),
            vec![(2, 5)],
        ];
        let owned: Vec<RecordBatch> = refs.iter().map(|b| (*b).clone()).collect();
        let locate = Locator::new(&owned);
        let start = |b: usize| owned[..b].iter().map(|b| b.num_rows()).sum::<usize>();
        for rows in cases {
            let global: Vec<u32> = rows.iter().map(|&(b, r)| (start(b) + r) as u32).collect();
            let got = gather(&schema, &refs, &locate, &global).unwrap();
            let expected = arrow::compute::interleave_record_batch(&refs, &rows).unwrap();
            assert_eq!(got, expected, "rows {rows:?}");
        }
    }

    #[test]
    fn a_bucket_batch_of_long_strings_completes_early() {
        let rows = 100;
        let long = "x".repeat(1 << 20);
        let plain: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![long.as_str(); rows]));
        // Views sharing one buffer: the array's memory is 1 MiB, the rows held are 100 MiB.
        let view = arrow::array::builder::make_view(long.as_bytes(), 0, 0);
        let shared: ArrayRef = Arc::new(StringViewArray::new(
            vec![view; rows].into(),
            vec![arrow::buffer::Buffer::from(long.as_bytes())],
            None,
        ));
        for v in [plain, shared] {
            let schema = Arc::new(Schema::new(vec![
                Field::new("p", DataType::Utf8, false),
                Field::new("k", DataType::Int64, false),
                Field::new("v", v.data_type().clone(), false),
            ]));
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(arrow::array::StringArray::from(vec!["a"; rows])),
                    Arc::new(arrow::array::Int64Array::from_iter_values(0..rows as i64)),
                    v,
                ],
            )
            .unwrap();
            let ctx = session();
            let layout = Arc::new(
                Layout::new(schema, &["p".into()], &["k".into()], ctx.task_ctx()).unwrap(),
            );
            let mut sorter = BucketSorter::new(0, 1, 1, layout);
            sorter.push(&batch).unwrap();
            let bucket = &sorter.buckets[0];
            // 1 MiB a row: the batch completes at 64 MiB (64 rows), not at 2,048 rows.
            let done: Vec<usize> = bucket.batches.iter().map(|b| b.num_rows()).collect();
            assert_eq!(bucket.spills.len(), 0);
            assert_eq!(done, [64]);
            assert_eq!(bucket.builder.rows() + done.iter().sum::<usize>(), rows);
            assert_eq!(
                bucket.batches[0].column(1).as_string::<i32>().value(63),
                long
            );
        }
    }

    #[test]
    fn buckets_leave_the_sorting_tasks_room_for_their_largest_partition() {
        let (schema, batches) = input(3, false);
        // Partitions grow to about 1.3 MB here: past an eighth of the share.
        let limit = 16 << 20;
        let options = crate::engine::EngineOptions {
            memory_limit: limit,
            batch_size: 1000,
        };
        let ctx = crate::engine::session(&options, Arc::new(InMemory::new()), None).unwrap();
        let layout =
            Arc::new(Layout::new(schema, &["p".into()], &["k".into()], ctx.task_ctx()).unwrap());
        // Two inputs, two outputs: a share of 8 MiB each.
        let share = limit / 2;
        let mut sorter = BucketSorter::new(0, 2, 2, Arc::clone(&layout));
        assert_eq!(sorter.budget(), share, "nothing held: the whole share");
        let (mut last, mut floor, mut above) = (share, false, false);
        for batch in &batches {
            sorter.push(batch).unwrap();
            let largest = sorter
                .buckets
                .iter()
                .map(|b| b.total() + b.builder.size())
                .max()
                .unwrap();
            assert!(largest > 0);
            let budget = sorter.budget();
            // Room for two copies of the largest partition per output, down to half.
            if budget == share / 2 {
                floor = true;
                assert!(share - 4 * largest <= budget);
            } else {
                above = true;
                assert_eq!(budget, share - 4 * largest);
            }
            assert!(budget <= last, "{budget} after {last}");
            last = budget;
        }
        assert!(above && floor, "both the room and the floor were reached");
    }

    #[tokio::test]
    async fn a_decimal_wider_than_its_type_is_an_error() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Utf8, true),
            Field::new("k", DataType::Int64, true),
            Field::new("d", DataType::Decimal128(10, 0), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(arrow::array::StringArray::from(vec!["a", "a"])),
                Arc::new(Int64Array::from(vec![1, 2])),
                // Arrow does not check precision: this one does not fit 64 bits.
                Arc::new(
                    Decimal128Array::from(vec![1, i128::from(i64::MAX) + 1])
                        .with_precision_and_scale(10, 0)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        let ctx = session();
        let got = drain(sort(&ctx, &schema, "k", vec![Ok(batch)], (1, 1)).0).await;
        let err = got
            .into_iter()
            .flatten()
            .find_map(|b| b.err())
            .expect("an error");
        assert!(err.to_string().contains("column `d`"), "{err}");
    }
}
