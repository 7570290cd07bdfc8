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

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{BatchCoalescer, SortOptions};
use arrow::datatypes::{DataType, SchemaRef};
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

/// What a sorter did (for tests and logs).
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Spill files written.
    pub spills: std::sync::atomic::AtomicUsize,
    /// Buckets sorted by DataFusion's spilling sort (too large for memory).
    pub external: std::sync::atomic::AtomicUsize,
}

/// One partition's rows.
struct Bucket {
    /// Partition values in the row format (orders buckets like the partition columns).
    values: OwnedRow,
    coalescer: BatchCoalescer,
    /// Completed batches held in memory, and their size.
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// Spill files, one per time the bucket was spilled, in order.
    spills: Vec<Arc<dyn SpillFile>>,
    spilled_bytes: usize,
}

/// Sorts one stream (rows of several partitions, in any order) into partition-contiguous output,
/// each partition sorted by `ordering`, with the columns `keep` (the tiebreak dropped).
///
/// Inside, string and binary views are held as plain strings and binaries: a view array's size
/// counts every buffer it points into, so batches cut from shared buffers would be accounted
/// many times over (and spill all at once); plain arrays are compact and exactly sized. Emitted
/// batches have the input's types again.
pub(super) struct BucketSorter {
    /// The input's schema, and the same with views replaced by plain strings and binaries.
    input: SchemaRef,
    schema: SchemaRef,
    part_idx: Vec<usize>,
    ordering: LexOrdering,
    converter: RowConverter,
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

impl BucketSorter {
    /// A sorter for stream `i` of `schema`, bucketing by the columns `partition_by` and sorting
    /// each bucket by `order` (ascending, NULLs first).
    pub(super) fn new(
        i: usize,
        schema: SchemaRef,
        partition_by: &[String],
        order: &[String],
        task: Arc<TaskContext>,
    ) -> DfResult<Self> {
        let input = schema;
        let schema = Arc::new(arrow::datatypes::Schema::new(
            input
                .fields()
                .iter()
                .map(|f| {
                    let t = match f.data_type() {
                        DataType::Utf8View => DataType::Utf8,
                        DataType::BinaryView => DataType::Binary,
                        t => t.clone(),
                    };
                    f.as_ref().clone().with_data_type(t)
                })
                .collect::<Vec<_>>(),
        ));
        let part_idx = partition_by
            .iter()
            .map(|c| schema.index_of(c).map_err(DataFusionError::from))
            .collect::<DfResult<Vec<_>>>()?;
        let fields = part_idx
            .iter()
            .map(|&i| {
                SortField::new_with_options(
                    schema.field(i).data_type().clone(),
                    SortOptions {
                        descending: false,
                        nulls_first: true,
                    },
                )
            })
            .collect();
        let ordering = LexOrdering::new(
            order
                .iter()
                .map(|c| {
                    Ok(PhysicalSortExpr::new(
                        physical_col(c, &schema)?,
                        SortOptions {
                            descending: false,
                            nulls_first: true,
                        },
                    ))
                })
                .collect::<DfResult<Vec<_>>>()?,
        )
        .ok_or_else(|| DataFusionError::Internal("bucket sort needs a key".into()))?;
        let reservation = MemoryConsumer::new(format!("wap bucket sort {i}"))
            .with_can_spill(true)
            .register(task.memory_pool());
        let metrics = SpillMetrics::new(&ExecutionPlanMetricsSet::new(), i);
        let spills = SpillManager::new(task.runtime_env(), metrics, Arc::clone(&schema));
        Ok(BucketSorter {
            input,
            schema,
            part_idx,
            ordering,
            converter: RowConverter::new(fields)?,
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
    /// stream, projected to `keep`. Dropping the stream stops the task.
    pub(super) fn spawn(
        mut self,
        mut input: SendableRecordBatchStream,
        keep: Vec<usize>,
    ) -> DfResult<SendableRecordBatchStream> {
        let out_schema = Arc::new(self.input.project(&keep)?);
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
            self.emit(&sender, &keep).await
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

    fn bucket_of(&mut self, row: arrow::row::Row<'_>) -> usize {
        if let Some(&b) = self.index.get(row.as_ref()) {
            return b;
        }
        let b = self.buckets.len();
        self.index.insert(row.as_ref().to_vec(), b);
        self.buckets.push(Bucket {
            values: row.owned(),
            coalescer: BatchCoalescer::new(Arc::clone(&self.schema), BUCKET_BATCH_ROWS),
            batches: Vec::new(),
            bytes: 0,
            spills: Vec::new(),
            spilled_bytes: 0,
        });
        b
    }

    /// The order of the rows of `batches` (taken as one) by the sort columns.
    fn sort_indices(&self, batches: &[RecordBatch]) -> DfResult<arrow::array::UInt32Array> {
        let columns = self
            .ordering
            .iter()
            .map(|e| {
                let arrays = batches
                    .iter()
                    .map(|b| e.expr.evaluate(b)?.into_array(b.num_rows()))
                    .collect::<DfResult<Vec<ArrayRef>>>()?;
                let refs: Vec<&dyn arrow::array::Array> =
                    arrays.iter().map(|a| a.as_ref()).collect();
                Ok(arrow::compute::SortColumn {
                    values: arrow::compute::concat(&refs)?,
                    options: Some(e.options),
                })
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(arrow::compute::lexsort_to_indices(&columns, None)?)
    }

    /// `batch` with the types of `to` (views to plain arrays, or back).
    fn cast(batch: &RecordBatch, to: &SchemaRef) -> DfResult<RecordBatch> {
        if batch.schema_ref() == to {
            return Ok(batch.clone());
        }
        let columns = batch
            .columns()
            .iter()
            .zip(to.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(Arc::clone(to), columns)?)
    }

    /// Appends the rows of `batch` to their buckets.
    fn push(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let batch = &Self::cast(batch, &self.schema)?;
        let cols: Vec<ArrayRef> = self
            .part_idx
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let rows = self.converter.convert_columns(&cols)?;
        // Which rows go to which bucket.
        let mut members: Vec<(usize, Vec<bool>)> = Vec::new();
        let mut slot: HashMap<usize, usize> = HashMap::new();
        for (r, row) in rows.iter().enumerate() {
            let b = self.bucket_of(row);
            let s = *slot.entry(b).or_insert_with(|| {
                members.push((b, vec![false; n]));
                members.len() - 1
            });
            members[s].1[r] = true;
        }
        for (b, mask) in members {
            let bucket = &mut self.buckets[b];
            if mask.iter().all(|m| *m) {
                bucket.coalescer.push_batch(batch.clone())?;
            } else {
                let filter = BooleanArray::new(BooleanBuffer::from(mask), None);
                bucket
                    .coalescer
                    .push_batch_with_filter(batch.clone(), &filter)?;
            }
            while let Some(done) = bucket.coalescer.next_completed_batch() {
                let size = done.get_array_memory_size();
                bucket.bytes += size;
                self.completed.0 += size;
                self.completed.1 += done.num_rows();
                bucket.batches.push(done);
            }
        }
        self.row_bytes = self.completed.0.div_ceil(self.completed.1.max(1));
        let held: usize = (0..self.buckets.len()).map(|b| self.spillable(b)).sum();
        self.account(held)
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
        bucket.spilled_bytes += bytes;
        // What the partly filled batch held moved into `bytes` above.
        Ok(bytes.max(freed))
    }

    /// Sorts and sends every bucket: those held in memory first, then the spilled ones.
    async fn emit(
        &mut self,
        tx: &mpsc::Sender<DfResult<RecordBatch>>,
        keep: &[usize],
    ) -> DfResult<()> {
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
                let mut starts = Vec::with_capacity(all.len());
                let mut at = 0;
                for batch in &all {
                    starts.push(at);
                    at += batch.num_rows();
                }
                let refs: Vec<&RecordBatch> = all.iter().collect();
                for chunk in indices.values().chunks(EMIT_ROWS) {
                    let rows: Vec<(usize, usize)> = chunk
                        .iter()
                        .map(|&g| {
                            let g = g as usize;
                            let batch = starts.partition_point(|&s| s <= g) - 1;
                            (batch, g - starts[batch])
                        })
                        .collect();
                    let batch = arrow::compute::interleave_record_batch(&refs, &rows)?;
                    let batch = Self::cast(&batch, &self.input)?.project(keep)?;
                    if tx.send(Ok(batch)).await.is_err() {
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
                let input =
                    OnceStream::new(Arc::clone(&self.schema), batches, spilled, &self.spills)?;
                let plan = StreamingTableExec::try_new(
                    Arc::clone(&self.schema),
                    vec![Arc::new(input)],
                    None,
                    Vec::<LexOrdering>::new(),
                    false,
                    None,
                )?;
                let sort = SortExec::new(self.ordering.clone(), Arc::new(plan));
                let mut sorted = sort.execute(0, Arc::clone(&self.task))?;
                while let Some(batch) = sorted.next().await {
                    let batch = Self::cast(&batch?, &self.input)?.project(keep)?;
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        self.reservation.free();
        Ok(())
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
        let stream: SendableRecordBatchStream =
            Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&schema), chained));
        Ok(OnceStream {
            schema,
            stream: Mutex::new(Some(stream)),
        })
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringViewArray, UInt64Array};
    use arrow::datatypes::{Field, Schema};
    use object_store::memory::InMemory;

    fn input(seed: u64) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Utf8View, true),
            Field::new("k", DataType::Int64, true),
            Field::new("t", DataType::UInt64, false),
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
                    t.push(next());
                    v.push(Some(payload));
                }
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringViewArray::from(p)),
                        Arc::new(Int64Array::from(k)),
                        Arc::new(UInt64Array::from(t)),
                        Arc::new(StringViewArray::from(v)),
                    ],
                )
                .unwrap()
            })
            .collect();
        (schema, batches)
    }

    /// A sorter by partition `p`, then `k` and `t`, over `items`, in `ctx`: its output (dropping
    /// `t`) and its statistics.
    fn sort(
        ctx: &datafusion::prelude::SessionContext,
        schema: &SchemaRef,
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
            &["k".to_string(), "t".to_string()],
            ctx.task_ctx(),
        )
        .unwrap();
        let stats = Arc::clone(&sorter.stats);
        (sorter.spawn(stream, vec![0, 1, 3]).unwrap(), stats)
    }

    /// Sorts the input with a pool of `limit` bytes: the output batches, concatenated, and the
    /// spill files and external sorts it took.
    async fn sorted(limit: usize) -> (RecordBatch, usize, usize) {
        let (schema, batches) = input(7);
        let options = crate::engine::EngineOptions {
            memory_limit: limit,
            batch_size: 1000,
        };
        let ctx = crate::engine::session(&options, Arc::new(InMemory::new()), None).unwrap();
        let (out, stats) = sort(&ctx, &schema, batches.into_iter().map(Ok).collect());
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
        let k = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
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
            }
        }
        assert_eq!(seen.len(), 11, "10 partitions and NULL");
    }

    #[tokio::test]
    async fn an_input_error_arrives_as_an_error_not_as_a_short_stream() {
        let (schema, batches) = input(3);
        let ctx =
            crate::engine::session(&Default::default(), Arc::new(InMemory::new()), None).unwrap();
        let items: Vec<DfResult<RecordBatch>> = batches
            .into_iter()
            .take(3)
            .map(Ok)
            .chain([Err(DataFusionError::Execution("source went away".into()))])
            .collect();
        let got: Vec<DfResult<RecordBatch>> = sort(&ctx, &schema, items).0.collect().await;
        assert_eq!(got.len(), 1, "no rows before the error");
        let err = got.into_iter().next().unwrap().unwrap_err();
        assert!(err.to_string().contains("source went away"), "{err}");
    }

    #[tokio::test]
    async fn spilling_and_sorting_outside_memory_give_the_same_rows_in_the_same_order() {
        // Everything in memory; spilled buckets sorted in memory; the big bucket larger than the
        // pool (sorted by DataFusion's spilling sort).
        let (roomy, spills, external) = sorted(1 << 30).await;
        assert_eq!((spills, external), (0, 0));
        assert_eq!(roomy.num_rows(), 40_000);
        check_grouped_and_sorted(&roomy);
        // 3 MiB: buckets spill, and are read back and sorted in memory; 1 MiB: the big bucket
        // goes to the spilling sort.
        for (limit, big_outside) in [(3 << 20, false), (1 << 20, true)] {
            let (tight, spills, external) = sorted(limit).await;
            assert!(spills > 0, "limit {limit}: nothing spilled");
            assert_eq!(
                external > 0,
                big_outside,
                "limit {limit}: {external} external sorts"
            );
            check_grouped_and_sorted(&tight);
            // The same rows per partition, in the same order (buckets may come in another order).
            let by_partition = |b: &RecordBatch| {
                let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
                for i in 0..b.num_rows() {
                    let cells: Vec<String> = (0..b.num_columns())
                        .map(|c| {
                            arrow::util::display::array_value_to_string(b.column(c), i).unwrap()
                        })
                        .collect();
                    m.entry(cells[0].clone()).or_default().push(cells.join("|"));
                }
                m
            };
            assert_eq!(by_partition(&tight), by_partition(&roomy), "limit {limit}");
        }
    }
}
