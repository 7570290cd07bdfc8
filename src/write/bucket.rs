//! The sort in front of the partition writers: rows are bucketed by partition, then each bucket
//! is sorted on its own.
//!
//! A global sort of a stream by (partition columns, key, tiebreak) spills sorted runs and merges
//! them at the end; memory then grows with the number of runs being merged (DataFusion's merge
//! does not account for all of it). Partitions are independent, so this sorter does less: it
//! appends each row to its partition's bucket (one copy), spills whole buckets to disk (Arrow IPC,
//! appended) when the memory pool refuses more, and at the end sorts one bucket at a time by
//! (key, tiebreak) and emits it. Memory: what the pool allows for buckets, plus one bucket being
//! sorted; a bucket larger than the pool allows is sorted by DataFusion's spilling sort instead.
//! Buckets kept in memory are emitted first, so that their memory is free for the spilled ones.
//! The order of buckets in the output does not matter: each partition's files depend only on its
//! own rows, and those are totally ordered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::{BatchCoalescer, SortOptions};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::datatypes::{Decimal128Type, Int64Type};
use arrow::error::ArrowError;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
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

/// Rows per batch inside a bucket. Small enough that the partly filled batch of every bucket
/// together stays small (84 buckets of lineitem: about 40 MiB), large enough for cheap spills.
const BUCKET_BATCH_ROWS: usize = 2048;
/// Rows per emitted batch.
const EMIT_ROWS: usize = 8192;
/// The hash column added for a bucket sorted by DataFusion's sort.
const TIEBREAK: &str = "__wap_tiebreak";

/// What a sorter did (for tests and logs).
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Spill files written, and the bytes they held (in memory).
    pub spills: std::sync::atomic::AtomicUsize,
    pub spilled_bytes: std::sync::atomic::AtomicUsize,
    /// Buckets sorted by DataFusion's spilling sort (too large for memory).
    pub external: std::sync::atomic::AtomicUsize,
}

/// One partition's rows.
struct Bucket {
    /// Partition values in the row format (orders buckets like the partition columns).
    values: OwnedRow,
    /// The same values as one-row arrays of the input's types (buckets do not hold the
    /// partition columns: they are the same in every row).
    columns: Vec<ArrayRef>,
    coalescer: BatchCoalescer,
    /// Completed batches held in memory, and their size.
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// Spill files, one per time the bucket was spilled, in order.
    spills: Vec<Arc<dyn SpillFile>>,
    spilled_bytes: usize,
}

/// How a column is held in a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Held {
    /// As it comes.
    Same,
    /// String and binary views as plain arrays: a view array's size counts every buffer it
    /// points into, so batches cut from shared buffers would be accounted many times over (and
    /// spill all at once); plain arrays are compact and exactly sized.
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

    /// `a` (of the input's type) as held.
    fn hold(self, a: &ArrayRef, name: &str, held: &DataType) -> DfResult<ArrayRef> {
        Ok(match self {
            Held::Same => Arc::clone(a),
            Held::Plain => arrow::compute::cast(a, held)?,
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

/// Sorts one stream (rows of several partitions, in any order) into partition-contiguous output,
/// each partition sorted by its key, then, among rows sharing a key, by the hash of the other
/// columns ([`crate::engine::RowHash`]: a total order, so files are deterministic). The hash is
/// computed only for rows whose key repeats.
///
/// Buckets hold rows compactly (see [`Held`]), without the partition columns; emitted batches
/// have the input's schema again.
pub(super) struct BucketSorter {
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
    converter: RowConverter,
    /// The key columns in the row format, when a key takes at most 16 bytes there: keys are
    /// then sorted as integers.
    key_converter: Option<RowConverter>,
    index: HashMap<Vec<u8>, usize>,
    buckets: Vec<Bucket>,
    reservation: MemoryReservation,
    spills: SpillManager,
    task: Arc<TaskContext>,
    /// Bytes and rows of every completed bucket batch so far, and bytes per row from them (for
    /// estimating partly filled batches).
    completed: (usize, usize),
    row_bytes: usize,
    pub(super) stats: Arc<Stats>,
}

/// The order of every sort of the writer: ascending, NULLs first.
pub(super) const ASCENDING: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

impl BucketSorter {
    /// A sorter for stream `i` of `schema`, bucketing by the columns `partition_by` and sorting
    /// each bucket by `key` (ascending, NULLs first), then the hash of the other columns.
    pub(super) fn new(
        i: usize,
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
        let reservation = MemoryConsumer::new(format!("wap bucket sort {i}"))
            .with_can_spill(true)
            .register(task.memory_pool());
        let metrics = SpillMetrics::new(&ExecutionPlanMetricsSet::new(), i);
        let spills = SpillManager::new(task.runtime_env(), metrics, Arc::clone(&schema));
        Ok(BucketSorter {
            input,
            schema,
            held: held.into(),
            part_idx,
            key_idx,
            rest_idx,
            converter: RowConverter::new(sort_fields)?,
            key_converter,
            index: HashMap::new(),
            buckets: Vec::new(),
            reservation,
            spills,
            task,
            completed: (0, 0),
            row_bytes: 0,
            stats: Arc::default(),
        })
    }

    /// Runs the sorter over `input` on its own task; the sorted output arrives on the returned
    /// stream. Dropping the stream stops the task.
    pub(super) fn spawn(
        mut self,
        mut input: SendableRecordBatchStream,
    ) -> DfResult<SendableRecordBatchStream> {
        let out_schema = Arc::clone(&self.input);
        let (tx, rx) = mpsc::channel::<DfResult<RecordBatch>>(2);
        let sender = tx.clone();
        let work = tokio::spawn(async move {
            while let Some(batch) = input.next().await {
                // The writer is gone (it failed): stop reading.
                if sender.is_closed() {
                    return Ok(());
                }
                self.push(&batch?)?;
            }
            drop(input);
            self.emit(&sender).await
        });
        // The stream ends cleanly only if the sort did: an error, and a panic too, arrive as an
        // error, never as a short stream that would be written as if complete.
        tokio::spawn(async move {
            let failed = match work.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(DataFusionError::Execution(format!(
                    "the partition sort stopped: {e}"
                ))),
            };
            if let Some(e) = failed {
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
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
            .part_idx
            .iter()
            .map(|&i| arrow::compute::take(batch.column(i), &at, None))
            .collect::<Result<Vec<_>, _>>()?;
        let b = self.buckets.len();
        self.index.insert(row.as_ref().to_vec(), b);
        self.buckets.push(Bucket {
            values: row.owned(),
            columns,
            coalescer: BatchCoalescer::new(Arc::clone(&self.schema), BUCKET_BATCH_ROWS),
            batches: Vec::new(),
            bytes: 0,
            spills: Vec::new(),
            spilled_bytes: 0,
        });
        Ok(b)
    }

    /// An input batch as held in buckets.
    fn hold(&self, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let columns = self
            .held
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| c.how.hold(batch.column(c.input), f.name(), f.data_type()))
            .collect::<DfResult<Vec<_>>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// A batch of bucket `b` in the output schema: the held columns restored and the partition
    /// columns put back.
    fn output(&self, b: usize, batch: &RecordBatch) -> DfResult<RecordBatch> {
        let n = batch.num_rows();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.input.fields().len()];
        let zeros = arrow::array::UInt32Array::from(vec![0u32; n]);
        for (p, &i) in self.part_idx.iter().enumerate() {
            columns[i] = Some(arrow::compute::take(
                &self.buckets[b].columns[p],
                &zeros,
                None,
            )?);
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
        let keys = self
            .key_idx
            .iter()
            .map(|&c| concat(c))
            .collect::<DfResult<Vec<_>>>()?;
        let (mut indices, ties) = if keys.is_empty() {
            (
                (0..total as u32).collect::<Vec<_>>(),
                std::iter::once(0..total).collect(),
            )
        } else if let Some(converter) = &self.key_converter {
            // Keys as integers (the row format's bytes, big-endian), sorted with their row.
            let rows = converter.convert_columns(&keys)?;
            let mut packed: Vec<(u128, u32)> = rows
                .iter()
                .enumerate()
                .map(|(g, r)| {
                    let mut b = [0u8; 16];
                    b[..r.as_ref().len()].copy_from_slice(r.as_ref());
                    (u128::from_be_bytes(b), g as u32)
                })
                .collect();
            drop(rows);
            packed.sort_unstable();
            let mut ties = Vec::new();
            let mut start = 0;
            for i in 1..=packed.len() {
                if i == packed.len() || packed[i].0 != packed[start].0 {
                    if i - start > 1 {
                        ties.push(start..i);
                    }
                    start = i;
                }
            }
            (packed.into_iter().map(|(_, g)| g).collect(), ties)
        } else {
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

    /// Appends the rows of `batch` to their buckets.
    fn push(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let cols: Vec<ArrayRef> = self
            .part_idx
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let rows = self.converter.convert_columns(&cols)?;
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
        let held = self.hold(batch)?;
        if ids.iter().all(|&b| b == ids[0]) {
            self.append(ids[0] as usize, held)?;
        } else {
            // Group the rows by bucket with one gather, then hand each bucket its slice.
            let mut order: Vec<u64> = ids
                .iter()
                .enumerate()
                .map(|(r, &b)| (u64::from(b) << 32) | r as u64)
                .collect();
            order.sort_unstable();
            let indices =
                arrow::array::UInt32Array::from_iter_values(order.iter().map(|&o| o as u32));
            let grouped = arrow::compute::take_record_batch(&held, &indices)?;
            let mut start = 0;
            while start < n {
                let b = (order[start] >> 32) as usize;
                let end = start + order[start..].partition_point(|&o| (o >> 32) as usize == b);
                self.append(b, grouped.slice(start, end - start))?;
                start = end;
            }
        }
        self.row_bytes = self.completed.0.div_ceil(self.completed.1.max(1));
        let held: usize = (0..self.buckets.len()).map(|b| self.spillable(b)).sum();
        self.account(held)
    }

    /// Appends rows of one bucket to it.
    fn append(&mut self, b: usize, rows: RecordBatch) -> DfResult<()> {
        let bucket = &mut self.buckets[b];
        bucket.coalescer.push_batch(rows)?;
        while let Some(done) = bucket.coalescer.next_completed_batch() {
            let size = done.get_array_memory_size();
            bucket.bytes += size;
            self.completed.0 += size;
            self.completed.1 += done.num_rows();
            bucket.batches.push(done);
        }
        Ok(())
    }
    /// Makes the reservation `held` bytes. When the pool refuses, spills the largest buckets
    /// until half of what is held is free: few, large spills (each spill is a file).
    fn account(&mut self, held: usize) -> DfResult<()> {
        if self.try_resize(held) {
            return Ok(());
        }
        let mut held = held;
        let target = held / 2;
        while held > target {
            let Some(largest) = (0..self.buckets.len())
                .filter(|&b| self.spillable(b) > 0)
                .max_by_key(|&b| self.spillable(b))
            else {
                break;
            };
            held = held.saturating_sub(self.spill(largest, true)?);
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

    /// Bytes bucket `b` holds: its batches, and its partly filled batch estimated from the
    /// size of its completed ones (the coalescer's buffers keep their capacity when empty, so
    /// its own size would count room, not rows).
    fn spillable(&self, b: usize) -> usize {
        let bucket = &self.buckets[b];
        let rows = bucket.coalescer.get_buffered_rows();
        bucket.bytes + rows * self.row_bytes
    }

    /// Writes a bucket's batches (with `partial`, also its partly filled one) to a spill file;
    /// returns the bytes freed.
    fn spill(&mut self, b: usize, partial: bool) -> DfResult<usize> {
        let bucket = &mut self.buckets[b];
        let mut freed = 0;
        if partial && bucket.coalescer.get_buffered_rows() > 0 {
            let before = bucket.coalescer.size();
            bucket.coalescer.finish_buffered_batch()?;
            while let Some(done) = bucket.coalescer.next_completed_batch() {
                bucket.bytes += done.get_array_memory_size();
                bucket.batches.push(done);
            }
            freed += before.saturating_sub(bucket.coalescer.size());
        }
        let batches = std::mem::take(&mut bucket.batches);
        if batches.is_empty() {
            return Ok(freed);
        }
        if let Some(file) = self
            .spills
            .spill_record_batch_and_finish(&batches, "wap bucket sort")?
        {
            bucket.spills.push(file);
            self.stats
                .spills
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        drop(batches);
        let bytes = std::mem::take(&mut bucket.bytes);
        self.stats
            .spilled_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        bucket.spilled_bytes += bytes;
        // What the partly filled batch held moved into `bytes` above.
        Ok(bytes.max(freed))
    }

    /// Sorts and sends every bucket: those held in memory first, then the spilled ones.
    async fn emit(&mut self, tx: &mpsc::Sender<DfResult<RecordBatch>>) -> DfResult<()> {
        for bucket in &mut self.buckets {
            bucket.coalescer.finish_buffered_batch()?;
            while let Some(done) = bucket.coalescer.next_completed_batch() {
                bucket.bytes += done.get_array_memory_size();
                bucket.batches.push(done);
            }
        }
        let mut order: Vec<usize> = (0..self.buckets.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&self.buckets[a], &self.buckets[b]);
            (!x.spills.is_empty(), &x.values).cmp(&(!y.spills.is_empty(), &y.values))
        });
        let held: usize = self.buckets.iter().map(|b| b.bytes).sum();
        self.reservation.resize(held);
        for (at, &b) in order.iter().enumerate() {
            let total = self.buckets[b].bytes + self.buckets[b].spilled_bytes;
            // Sorting in memory needs the spilled part read back, plus the sort columns and
            // scratch, counted as a second copy of the bucket (with less, what is outside the
            // pool's view took the process over 1 GiB at TPC-H SF10). Room is made by spilling
            // the buckets still to come, largest first.
            let extra = 2 * total - self.buckets[b].bytes;
            let in_memory = loop {
                if self.reservation.try_grow(extra).is_ok() {
                    break true;
                }
                let Some(&largest) = order[at + 1..]
                    .iter()
                    .filter(|&&o| self.buckets[o].bytes > 0)
                    .max_by_key(|&&o| self.buckets[o].bytes)
                else {
                    break false;
                };
                let freed = self.spill(largest, false)?;
                self.reservation.shrink(freed.min(self.reservation.size()));
            };
            let batches = std::mem::take(&mut self.buckets[b].batches);
            let bytes = std::mem::take(&mut self.buckets[b].bytes);
            let spilled = std::mem::take(&mut self.buckets[b].spills);
            if in_memory {
                let mut all = Vec::new();
                for file in spilled {
                    let mut read = self.spills.read_spill_as_stream(file, None)?;
                    while let Some(batch) = read.next().await {
                        all.push(batch?);
                    }
                }
                all.extend(batches);
                // Sort the sort columns alone, then gather the rows batch by batch: the bucket
                // is never copied whole.
                let indices = self.sort_indices(&all)?;
                let locate = Locator::new(&all);
                let refs: Vec<&RecordBatch> = all.iter().collect();
                for chunk in indices.chunks(EMIT_ROWS) {
                    let rows: Vec<(usize, usize)> = chunk.iter().map(|&g| locate.at(g)).collect();
                    let batch = arrow::compute::interleave_record_batch(&refs, &rows)?;
                    if tx.send(self.output(b, &batch)).await.is_err() {
                        return Ok(());
                    }
                }
                drop(refs);
                drop(all);
                self.reservation
                    .shrink(self.reservation.size().min(bytes + extra));
            } else {
                // Everything still held belongs to buckets to come; the sort gets the rest.
                let held: usize = self.buckets.iter().map(|b| b.bytes).sum();
                self.reservation.resize(held);
                self.stats
                    .external
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut sorted = self.sort_outside(batches, spilled)?;
                while let Some(batch) = sorted.next().await {
                    if tx.send(self.output(b, &batch?)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        self.reservation.free();
        let load =
            |a: &std::sync::atomic::AtomicUsize| a.load(std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            buckets = self.buckets.len(),
            spill_files = load(&self.stats.spills),
            held_bytes = self.completed.0,
            spilled_bytes = load(&self.stats.spilled_bytes),
            external_sorts = load(&self.stats.external),
            "partition sort done"
        );
        Ok(())
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
    /// zero-padded strings, sorted another way), and payload `t`, `v`.
    fn input(seed: u64, string_key: bool) -> (SchemaRef, Vec<RecordBatch>) {
        let key_type = if string_key {
            DataType::Utf8
        } else {
            DataType::Int64
        };
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

    /// A sorter by partition `p`, then `key`, over `items`, in `ctx`: its output and its
    /// statistics.
    fn sort(
        ctx: &datafusion::prelude::SessionContext,
        schema: &SchemaRef,
        key: &str,
        items: Vec<DfResult<RecordBatch>>,
    ) -> (SendableRecordBatchStream, Arc<Stats>) {
        let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(schema),
            futures::stream::iter(items),
        ));
        let sorter = BucketSorter::new(
            0,
            Arc::clone(schema),
            &["p".to_string()],
            &[key.to_string()],
            ctx.task_ctx(),
        )
        .unwrap();
        let stats = Arc::clone(&sorter.stats);
        (sorter.spawn(stream).unwrap(), stats)
    }

    /// Sorts the input with a pool of `limit` bytes: the output batches, concatenated, and the
    /// spill files and external sorts it took.
    async fn sorted(limit: usize, reversed: bool, string_key: bool) -> (RecordBatch, usize, usize) {
        let (schema, mut batches) = input(7, string_key);
        if reversed {
            batches.reverse();
            for b in &mut batches {
                let back = arrow::array::UInt32Array::from_iter_values((0..1000).rev());
                *b = arrow::compute::take_record_batch(b, &back).unwrap();
            }
        }
        let options = crate::engine::EngineOptions {
            memory_limit: limit,
            batch_size: 1000,
        };
        let ctx = crate::engine::session(&options, Arc::new(InMemory::new()), None).unwrap();
        let (out, stats) = sort(&ctx, &schema, "k", batches.into_iter().map(Ok).collect());
        let out_schema = out.schema();
        let got: Vec<RecordBatch> = out.map(|b| b.unwrap()).collect().await;
        let load =
            |a: &std::sync::atomic::AtomicUsize| a.load(std::sync::atomic::Ordering::Relaxed);
        (
            arrow::compute::concat_batches(&out_schema, &got).unwrap(),
            load(&stats.spills),
            load(&stats.external),
        )
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
    async fn an_input_error_arrives_as_an_error_not_as_a_short_stream() {
        let (schema, batches) = input(3, false);
        let ctx =
            crate::engine::session(&Default::default(), Arc::new(InMemory::new()), None).unwrap();
        let items: Vec<DfResult<RecordBatch>> = batches
            .into_iter()
            .take(3)
            .map(Ok)
            .chain([Err(DataFusionError::Execution("source went away".into()))])
            .collect();
        let got: Vec<DfResult<RecordBatch>> = sort(&ctx, &schema, "k", items).0.collect().await;
        assert_eq!(got.len(), 1, "no rows before the error");
        let err = got.into_iter().next().unwrap().unwrap_err();
        assert!(err.to_string().contains("source went away"), "{err}");
    }

    #[tokio::test]
    async fn spilling_sorting_outside_memory_and_input_order_change_nothing() {
        // Integer keys (sorted as packed integers in memory) and string keys (sorted column by
        // column).
        for string_key in [false, true] {
            same_order_whatever_the_memory(string_key).await;
        }
    }

    async fn same_order_whatever_the_memory(string_key: bool) {
        // Everything in memory; spilled buckets sorted in memory; the big bucket larger than the
        // pool (sorted by DataFusion's spilling sort). Each with the input in reverse order too.
        let (roomy, spills, external) = sorted(1 << 30, false, string_key).await;
        assert_eq!((spills, external), (0, 0));
        assert_eq!(roomy.num_rows(), 40_000);
        assert_eq!(
            roomy.schema(),
            input(7, string_key).0,
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
        // 3 MiB: buckets spill, and are read back and sorted in memory; 1 MiB: the big bucket
        // goes to the spilling sort.
        for (limit, big_outside) in [(1 << 30, false), (3 << 20, false), (1 << 20, true)] {
            for reversed in [false, true] {
                let (tight, spills, external) = sorted(limit, reversed, string_key).await;
                assert_eq!(
                    spills > 0,
                    limit < 1 << 30,
                    "limit {limit}: {spills} spills"
                );
                assert_eq!(
                    external > 0,
                    big_outside,
                    "limit {limit}: {external} external sorts"
                );
                check_grouped_and_sorted(&tight);
                assert_eq!(
                    by_partition(&tight),
                    expected,
                    "limit {limit}, reversed {reversed}, string key {string_key}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_key_made_of_partition_columns_orders_rows_by_their_hash() {
        let (schema, batches) = input(5, false);
        let ctx =
            crate::engine::session(&Default::default(), Arc::new(InMemory::new()), None).unwrap();
        let items = batches.into_iter().map(Ok).collect();
        let got: Vec<RecordBatch> = sort(&ctx, &schema, "p", items)
            .0
            .map(|b| b.unwrap())
            .collect()
            .await;
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
        let ctx =
            crate::engine::session(&Default::default(), Arc::new(InMemory::new()), None).unwrap();
        let got: Vec<DfResult<RecordBatch>> =
            sort(&ctx, &schema, "k", vec![Ok(batch)]).0.collect().await;
        let err = got.into_iter().find_map(|b| b.err()).expect("an error");
        assert!(err.to_string().contains("column `d`"), "{err}");
    }
}
