//! `unique` on the key without a hash table: a k-way merge of the staged files' key columns.
//!
//! The writer sorts every staged file by partition columns, then the key (ascending, NULLs
//! first), and a file holds one partition, so each file is sorted by the key. Rows sharing a key
//! are then adjacent in a merge of the files, and counting them needs one batch of key columns
//! per file in memory, instead of a hash table holding every distinct key. The result is the same as the SQL query's: rows with a NULL in any of the columns are
//! left out; failing rows are the rows of groups of two or more, plus the number of such groups.
//!
//! The merge checks the order it relies on: if any file is not sorted as expected (a file not
//! written by this build's writer), it declines and the rule runs as SQL. A file that cannot
//! be read fails the rule (see [`super::unique`]).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::compute::SortOptions;
use arrow::row::{RowConverter, Rows, SortField};
use futures::StreamExt;
use futures::stream::BoxStream;

use tokio::sync::mpsc;

use super::StagedFiles;
use super::files::{BATCH_ROWS, Declined, Footer, ReadFault, integer_layout, key_columns, open};

/// Files from which the merge of packed keys is split in two (see [`merge_packed_split`]).
const SPLIT_FILES: usize = 4;

/// The key columns `cols` names, in key order, when they are the first `n` key columns (in any
/// order): the columns each staged file is sorted by.
pub(super) fn key_prefix(cols: &[String], key: &[String]) -> Option<Vec<String>> {
    let n = cols.len();
    if n == 0 || n > key.len() {
        return None;
    }
    let prefix = &key[..n];
    let same = cols.iter().all(|c| prefix.contains(c)) && prefix.iter().all(|k| cols.contains(k));
    same.then(|| prefix.to_vec())
}

/// `(failing rows, duplicated keys)` of a `unique` rule over `columns` (a key prefix, in key
/// order) of the staged `files`, by merging them. Declines when the files are not sorted by
/// these columns (the caller runs the SQL); fails when a file cannot be read. `footers` already
/// read are used instead of reading them again.
pub(super) async fn unique_by_merge(
    files: &StagedFiles,
    columns: &[String],
    footers: &[Footer],
) -> Result<(u64, u64), Declined> {
    let types = columns
        .iter()
        .map(|c| match files.schema.field_with_name(c) {
            Ok(f) => Ok(f.data_type().clone()),
            Err(_) => Err(Declined::NotApplicable(format!(
                "column `{c}` is not in the staged schema"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Keys of fixed-width columns that fit in 16 bytes (an i64 and an i32: 9 + 5 bytes in the
    // row format) are compared as integers.
    let width: Option<usize> = types
        .iter()
        .map(|t| t.primitive_width().map(|w| w + 1))
        .sum();
    let fields = types
        .into_iter()
        .map(|t| {
            SortField::new_with_options(
                t,
                SortOptions {
                    descending: false,
                    nulls_first: true,
                },
            )
        })
        .collect();
    let packed = width.is_some_and(|w| w <= 16);
    let converter = Arc::new(RowConverter::new(fields).map_err(|e| {
        Declined::NotApplicable(format!("the row format cannot hold these columns: {e}"))
    })?);
    let mut cursors = Vec::new();
    for file in &files.files {
        let footer = footers
            .iter()
            .find(|f| f.file.location == file.location)
            .map(|f| f.meta.clone());
        let stream = open(&files.store, file, columns, footer).await?;
        let path = file.location.to_string();
        let mut cursor = Cursor::new(
            read_ahead(
                stream,
                columns.to_vec(),
                Arc::clone(&converter),
                packed,
                path.clone(),
            ),
            path,
        );
        if cursor.fill().await? {
            cursors.push(cursor);
        }
    }
    // The merge is CPU work: off the caller's task, so the other audit queries keep going. Each
    // file is decoded on a task of its own (see `read_ahead`), the merge only compares.
    let merged = if packed {
        tokio::spawn(merge_packed_split(cursors)).await
    } else {
        tokio::spawn(merge(cursors)).await
    };
    merged.map_err(|_| {
        Declined::Fault(ReadFault::Stopped {
            path: "the merge of the staged files".into(),
        })
    })?
}

/// One batch of a file's keys, ready to compare. A merge gets one kind only: every file's keys
/// are packed, or none are.
enum Keys {
    /// Keys as big-endian integers (same order as the row format), rows with a NULL left out.
    Packed(Vec<u128>),
    /// Keys in the row format, and the rows with no NULL in them (`None`: all).
    Rows(Arc<Rows>, Option<NullBuffer>),
}

impl Keys {
    fn len(&self) -> usize {
        match self {
            Keys::Packed(keys) => keys.len(),
            Keys::Rows(rows, _) => rows.num_rows(),
        }
    }
}

/// What a file's reader task sends.
enum Loaded {
    Keys(Keys),
    /// The file ended, every batch sent.
    End,
    /// A batch could not be read or converted.
    Failed(ReadFault),
}

/// Decodes a file's key columns batch by batch on a task of its own, one batch ahead of the
/// merge. The receiver ends with `End` only if the whole file was read: a closed channel
/// without it (a panic) counts as a failure.
fn read_ahead(
    mut stream: BoxStream<'static, parquet::errors::Result<RecordBatch>>,
    columns: Vec<String>,
    converter: Arc<RowConverter>,
    packed: bool,
    path: String,
) -> mpsc::Receiver<Loaded> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(batch) = stream.next().await {
            let keys = batch
                .map_err(|source| ReadFault::Parquet {
                    path: path.clone(),
                    source,
                })
                .and_then(|b| load(&b, &columns, &converter, packed, &path));
            let message = match keys {
                Ok(keys) if keys.len() == 0 => continue,
                Ok(keys) => Loaded::Keys(keys),
                Err(fault) => Loaded::Failed(fault),
            };
            let failed = matches!(message, Loaded::Failed(_));
            if tx.send(message).await.is_err() || failed {
                return;
            }
        }
        let _ = tx.send(Loaded::End).await;
    });
    rx
}

/// A batch's keys (of file `path`); fails when a column is missing or cannot be converted.
fn load(
    batch: &RecordBatch,
    columns: &[String],
    converter: &RowConverter,
    packed: bool,
    path: &str,
) -> Result<Keys, ReadFault> {
    let (arrays, valid) = key_columns(batch, columns).ok_or_else(|| ReadFault::Column {
        path: path.to_string(),
        column: columns
            .iter()
            .find(|c| batch.column_by_name(c).is_none())
            .cloned()
            .unwrap_or_default(),
    })?;
    if packed && let Some(keys) = pack_integers(&arrays, valid.as_ref()) {
        return Ok(Keys::Packed(keys));
    }
    let rows = converter
        .convert_columns(&arrays)
        .map_err(|source| ReadFault::Arrow {
            path: path.to_string(),
            source,
        })?;
    if !packed {
        return Ok(Keys::Rows(Arc::new(rows), valid));
    }
    Ok(Keys::Packed(pack_rows(&rows, valid.as_ref())))
}

/// Rows in the row format (of up to 16 bytes), but those with a NULL, as big-endian integers:
/// the row's bytes left-aligned in 16.
fn pack_rows(rows: &Rows, valid: Option<&NullBuffer>) -> Vec<u128> {
    rows.iter()
        .enumerate()
        .filter(|(i, _)| valid.is_none_or(|v| v.is_valid(*i)))
        .map(|(_, r)| {
            let mut b = [0u8; 16];
            b[..r.as_ref().len()].copy_from_slice(r.as_ref());
            u128::from_be_bytes(b)
        })
        .collect()
}

/// What [`pack_rows`] makes of the row format of `arrays`, computed from the values instead of
/// through the row format (no row buffer, no copy per row), when every column is an integer
/// or a type stored as one (dates, times, timestamps, durations): in the row format a valid
/// value is a 1 byte, then the value big-endian, a signed one with its sign bit flipped (in
/// ascending order, the only one the merge uses). `None` for any other type (or more than 16
/// bytes), left to the row format.
fn pack_integers(arrays: &[ArrayRef], valid: Option<&NullBuffer>) -> Option<Vec<u128>> {
    let rows = arrays.first()?.len();
    let layouts = arrays
        .iter()
        .map(|a| integer_layout(a.data_type()))
        .collect::<Option<Vec<_>>>()?;
    let bits: u32 = layouts
        .iter()
        .map(|&(width, _)| 8 * (width as u32 + 1))
        .sum();
    if bits > 128 {
        return None;
    }
    let mut keys = vec![0u128; rows];
    for (a, &(width, signed)) in arrays.iter().zip(&layouts) {
        let data = a.to_data();
        let bytes = &data.buffers()[0];
        let lane = Lane {
            shift: 8 * (width as u32 + 1),
            marker: 1 << (8 * width),
            flip: if signed { 1 << (8 * width - 1) } else { 0 },
        };
        let at = data.offset()..data.offset() + rows;
        match width {
            1 => lane.put(&mut keys, &bytes.typed_data::<u8>()[at]),
            2 => lane.put(&mut keys, &bytes.typed_data::<u16>()[at]),
            4 => lane.put(&mut keys, &bytes.typed_data::<u32>()[at]),
            8 => lane.put(&mut keys, &bytes.typed_data::<u64>()[at]),
            _ => return None,
        }
    }
    if bits < 128 {
        keys.iter_mut().for_each(|k| *k <<= 128 - bits);
    }
    if let Some(valid) = valid.filter(|v| v.null_count() > 0) {
        let mut i = 0;
        keys.retain(|_| {
            i += 1;
            valid.is_valid(i - 1)
        });
    }
    Some(keys)
}

/// One column's part of packed keys: its values' bits `flip` (the sign bit of a signed type)
/// flipped, after a `marker` byte (1: valid), each key first shifted left to make room.
struct Lane {
    shift: u32,
    marker: u128,
    flip: u64,
}

impl Lane {
    fn put<T: Copy + Into<u64>>(&self, keys: &mut [u128], values: &[T]) {
        for (key, &v) in keys.iter_mut().zip(values) {
            *key = (*key << self.shift) | self.marker | u128::from(v.into() ^ self.flip);
        }
    }
}

/// One file's keys, a batch at a time.
struct Cursor {
    batches: mpsc::Receiver<Loaded>,
    keys: Keys,
    pos: usize,
    /// What it reads, for errors.
    path: String,
}

impl Cursor {
    /// A cursor before its first batch.
    fn new(batches: mpsc::Receiver<Loaded>, path: String) -> Self {
        Cursor {
            batches,
            keys: Keys::Packed(Vec::new()),
            pos: 0,
            path,
        }
    }

    /// Takes the next batch; false at the end of the file. Fails when it could not be read, or
    /// its reader stopped without saying the file ended (a panic).
    async fn fill(&mut self) -> Result<bool, ReadFault> {
        let stopped = || ReadFault::Stopped {
            path: self.path.clone(),
        };
        match self.batches.recv().await.ok_or_else(stopped)? {
            Loaded::Keys(keys) => {
                self.keys = keys;
                self.pos = 0;
                Ok(true)
            }
            Loaded::End => Ok(false),
            Loaded::Failed(fault) => Err(fault),
        }
    }

    /// True once the current batch is used up.
    fn exhausted(&self) -> bool {
        self.pos == self.keys.len()
    }

    /// The current key, packed.
    fn packed(&self) -> u128 {
        match &self.keys {
            Keys::Packed(keys) => keys[self.pos],
            Keys::Rows(..) => unreachable!("every file's keys are packed or none are"),
        }
    }

    /// The current key's batch, in the row format, and whether it has no NULL.
    fn rows(&self) -> (&Arc<Rows>, bool) {
        match &self.keys {
            Keys::Rows(rows, valid) => (rows, valid.as_ref().is_none_or(|v| v.is_valid(self.pos))),
            Keys::Packed(_) => unreachable!("every file's keys are packed or none are"),
        }
    }

    fn less(&self, other: &Cursor) -> bool {
        self.rows().0.row(self.pos) < other.rows().0.row(other.pos)
    }
}

/// Counts runs of equal keys in merge order: `(failing rows, groups)`. Declines when a key
/// comes before the previous one (a file not sorted as the writer sorts).
#[derive(Default)]
struct Runs {
    run: u64,
    failing: u64,
    groups: u64,
}

impl Runs {
    /// The next key compared with the previous one.
    fn next(&mut self, order: std::cmp::Ordering) -> Result<(), Declined> {
        match order {
            std::cmp::Ordering::Less => {
                return Err(Declined::NotApplicable(
                    "a staged file is not sorted by these columns".into(),
                ));
            }
            std::cmp::Ordering::Equal => self.run += 1,
            std::cmp::Ordering::Greater => {
                self.end_run();
                self.run = 1;
            }
        }
        Ok(())
    }

    fn end_run(&mut self) {
        if self.run > 1 {
            self.failing += self.run;
            self.groups += 1;
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.end_run();
        (self.failing, self.groups)
    }
}

/// A merge of cursors of packed keys, a batch of keys at a time, by a tree of losers: each
/// key taken costs one comparison per level of a complete binary tree over the cursors (a
/// binary heap costs two), and no comparison is with a cursor off the path.
struct PackedMerge {
    cursors: Vec<Cursor>,
    /// Each leaf's current key, and whether it is done (no key left: loses to any key). Leaves
    /// past the cursors (up to a power of two) are done from the start.
    keys: Vec<u128>,
    done: Vec<bool>,
    /// `tree[node]`: the leaf that lost the match at `node` (1..leaves); `tree[0]`: the winner.
    tree: Vec<usize>,
}

impl PackedMerge {
    fn new(cursors: Vec<Cursor>) -> Self {
        let leaves = cursors.len().next_power_of_two();
        let mut keys = vec![0; leaves];
        let mut done = vec![true; leaves];
        for (i, c) in cursors.iter().enumerate() {
            keys[i] = c.packed();
            done[i] = false;
        }
        let mut merge = PackedMerge {
            cursors,
            keys,
            done,
            tree: vec![0; leaves],
        };
        // Play every match bottom up: the winner of each node goes up, the loser stays.
        let mut winners = vec![0; 2 * leaves];
        for (leaf, w) in winners[leaves..].iter_mut().enumerate() {
            *w = leaf;
        }
        for node in (1..leaves).rev() {
            let (a, b) = (winners[2 * node], winners[2 * node + 1]);
            let (win, lose) = if merge.before(b, a) { (b, a) } else { (a, b) };
            winners[node] = win;
            merge.tree[node] = lose;
        }
        merge.tree[0] = winners[1];
        merge
    }

    /// Whether leaf `a` comes before leaf `b` (done leaves last).
    fn before(&self, a: usize, b: usize) -> bool {
        (self.done[a], self.keys[a]) < (self.done[b], self.keys[b])
    }

    /// Replays the matches on the path of `leaf` (its key changed) up to the root.
    fn replay(&mut self, leaf: usize) {
        let mut winner = leaf;
        let mut node = (self.keys.len() + leaf) / 2;
        while node > 0 {
            if self.before(self.tree[node], winner) {
                std::mem::swap(&mut self.tree[node], &mut winner);
            }
            node /= 2;
        }
        self.tree[0] = winner;
    }

    /// The next keys in merge order, up to `BATCH_ROWS`, into `out` (emptied first); false
    /// once no key is left; fails when a cursor could not be read. Order is not checked here.
    async fn fill(&mut self, out: &mut Vec<u128>) -> Result<bool, ReadFault> {
        out.clear();
        while out.len() < BATCH_ROWS {
            let i = self.tree[0];
            if self.done[i] {
                break;
            }
            out.push(self.keys[i]);
            let c = &mut self.cursors[i];
            c.pos += 1;
            if c.exhausted() && !c.fill().await? {
                self.done[i] = true;
            } else {
                self.keys[i] = c.packed();
            }
            self.replay(i);
        }
        Ok(!out.is_empty())
    }
}

/// The merge of keys packed in integers, counting runs of equal keys.
async fn merge_packed(cursors: Vec<Cursor>) -> Result<(u64, u64), Declined> {
    let mut merge = PackedMerge::new(cursors);
    let mut keys = Vec::with_capacity(BATCH_ROWS);
    let mut runs = Runs::default();
    let mut last: Option<u128> = None;
    while merge.fill(&mut keys).await? {
        for &key in &keys {
            runs.next(last.map_or(std::cmp::Ordering::Greater, |l| key.cmp(&l)))?;
            last = Some(key);
        }
    }
    Ok(runs.finish())
}

/// The merge of packed keys, as two merges of half the files each, on tasks of their own, and a
/// merge of their two outputs: the trees are shallower and two cores share the work, where one
/// merge of many files keeps one core busy comparing. Rows sharing a key are still
/// adjacent in the final merge, and a file out of order still shows: a merge of streams, one of
/// which descends somewhere, descends right there too, and the final merge checks.
async fn merge_packed_split(mut cursors: Vec<Cursor>) -> Result<(u64, u64), Declined> {
    if cursors.len() < SPLIT_FILES {
        return merge_packed(cursors).await;
    }
    let second = cursors.split_off(cursors.len() / 2);
    let mut merged = Vec::new();
    for group in [cursors, second] {
        let (tx, rx) = mpsc::channel(2);
        let path = format!("a merge of {} staged files", group.len());
        tokio::spawn(merge_into(group, tx));
        let mut cursor = Cursor::new(rx, path);
        if cursor.fill().await? {
            merged.push(cursor);
        }
    }
    merge_packed(merged).await
}

/// Merges `cursors` (packed keys) into batches of keys sent on `tx`, then `End`; `Failed` if a
/// cursor fails. Order is left for the merge downstream to check.
async fn merge_into(cursors: Vec<Cursor>, tx: mpsc::Sender<Loaded>) {
    let mut merge = PackedMerge::new(cursors);
    loop {
        let mut keys = Vec::with_capacity(BATCH_ROWS);
        let message = match merge.fill(&mut keys).await {
            Ok(true) => Loaded::Keys(Keys::Packed(keys)),
            Ok(false) => Loaded::End,
            Err(fault) => Loaded::Failed(fault),
        };
        let more = matches!(message, Loaded::Keys(_));
        if tx.send(message).await.is_err() || !more {
            return;
        }
    }
}

/// The merge of keys in the row format, NULL keys skipped.
async fn merge(mut cursors: Vec<Cursor>) -> Result<(u64, u64), Declined> {
    // A binary min-heap of cursor indices, ordered by each cursor's current row.
    let mut heap: Vec<usize> = (0..cursors.len()).collect();
    let less = |cursors: &[Cursor], a: usize, b: usize| {
        let (x, y) = (&cursors[a], &cursors[b]);
        x.less(y) || (!y.less(x) && a < b)
    };
    for i in (0..heap.len() / 2).rev() {
        sift_down(&mut heap, i, |a, b| less(&cursors, a, b));
    }
    let mut runs = Runs::default();
    // The last key seen: its batch and index.
    let mut last: Option<(Arc<Rows>, usize)> = None;
    while let Some(&top) = heap.first() {
        let c = &cursors[top];
        let (rows, valid) = c.rows();
        if valid {
            let order = match &last {
                None => std::cmp::Ordering::Greater,
                Some((prev, i)) => rows.row(c.pos).cmp(&prev.row(*i)),
            };
            runs.next(order)?;
            if order == std::cmp::Ordering::Greater {
                last = Some((Arc::clone(rows), c.pos));
            }
        }
        let c = &mut cursors[top];
        c.pos += 1;
        if c.exhausted() && !c.fill().await? {
            let end = heap.len() - 1;
            heap.swap(0, end);
            heap.pop();
        }
        sift_down(&mut heap, 0, |a, b| less(&cursors, a, b));
    }
    Ok(runs.finish())
}

fn sift_down(heap: &mut [usize], mut i: usize, less: impl Fn(usize, usize) -> bool) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut smallest = i;
        if l < heap.len() && less(heap[l], heap[smallest]) {
            smallest = l;
        }
        if r < heap.len() && less(heap[r], heap[smallest]) {
            smallest = r;
        }
        if smallest == i {
            return;
        }
        heap.swap(i, smallest);
        i = smallest;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{lcg, staged_files, unique_by_sql};
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    /// Files of (k1 Int64, k2 Utf8, v Int64) rows, each sorted by (k1, k2) with NULLs first
    /// unless `sorted` is false, registered as `staged`.
    async fn staged(
        files: Vec<Vec<(Option<i64>, Option<String>)>>,
        sorted: bool,
    ) -> (SessionContext, StagedFiles) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k1", DataType::Int64, true),
            Field::new("k2", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let batches: Vec<RecordBatch> = files
            .into_iter()
            .map(|mut rows| {
                if sorted {
                    rows.sort();
                }
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(
                            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(
                            rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
                        )),
                        Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
                    ],
                )
                .unwrap()
            })
            .collect();
        let props = parquet::file::properties::WriterProperties::builder();
        let (ctx, store, metas) = staged_files(&batches, props, &Default::default()).await;
        (ctx, StagedFiles::new(store, schema, metas))
    }

    #[tokio::test]
    async fn counts_what_the_sql_counts() {
        let cols = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for seed in 0..12u64 {
            let mut s = seed;
            let nfiles = 1 + (lcg(&mut s) % 9) as usize;
            let range = 5 + lcg(&mut s) % 400;
            let files: Vec<Vec<(Option<i64>, Option<String>)>> = (0..nfiles)
                .map(|_| {
                    let n = lcg(&mut s) % 700;
                    (0..n)
                        .map(|_| {
                            let k1 = (!lcg(&mut s).is_multiple_of(10))
                                .then(|| (lcg(&mut s) % range) as i64);
                            let k2 = (!lcg(&mut s).is_multiple_of(12))
                                .then(|| format!("x{}", lcg(&mut s) % 3));
                            (k1, k2)
                        })
                        .collect()
                })
                .collect();
            let (ctx, staged) = staged(files, true).await;
            for c in [cols(&["k1"]), cols(&["k1", "k2"])] {
                let merged = unique_by_merge(&staged, &c, &[]).await.ok();
                let sql = unique_by_sql(&ctx, &c).await;
                assert_eq!(merged, Some(sql), "seed {seed}, columns {c:?}");
            }
        }
    }

    #[tokio::test]
    async fn duplicates_across_files_and_batches_count() {
        let row = |k: i64| (Some(k), Some("a".to_string()));
        // Key 1: twice in file 0, once in file 1. Key 5: once in each file. 300 other keys.
        let files = vec![
            (0..150).map(row).chain([row(1)]).collect(),
            vec![row(1), row(5), row(1000)],
            (150..300).map(row).chain([row(5)]).collect(),
        ];
        let (ctx, staged) = staged(files, true).await;
        let c = vec!["k1".to_string()];
        assert_eq!(unique_by_merge(&staged, &c, &[]).await.ok(), Some((6, 2)));
        assert_eq!(unique_by_sql(&ctx, &c).await, (6, 2));
    }

    #[tokio::test]
    async fn an_unsorted_file_falls_back_to_sql() {
        let row = |k: i64| (Some(k), None);
        let unsorted = vec![row(103), row(101), row(102)];
        // Alone (one merge), and among six sorted files (the split merge), in either half.
        for at in [None, Some(0), Some(5)] {
            let files: Vec<Vec<(Option<i64>, Option<String>)>> = match at {
                None => vec![unsorted.clone()],
                Some(at) => (0..6)
                    .map(|f| match f == at {
                        true => unsorted.clone(),
                        false => vec![row(10 * f), row(10 * f + 1)],
                    })
                    .collect(),
            };
            let (_, staged) = staged(files, false).await;
            let merged = unique_by_merge(&staged, &["k1".to_string()], &[]).await;
            assert!(
                matches!(merged, Err(Declined::NotApplicable(_))),
                "unsorted file at {at:?}: {merged:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_read_error_or_a_panic_is_not_the_end_of_a_file() {
        let converter = Arc::new(RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap());
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let cursor = |stream: BoxStream<'static, parquet::errors::Result<RecordBatch>>| {
            Cursor::new(
                read_ahead(
                    stream,
                    vec!["k".into()],
                    Arc::clone(&converter),
                    true,
                    "f".into(),
                ),
                "f".into(),
            )
        };
        // A clean file: its batch, then the end.
        let mut clean = cursor(futures::stream::iter([Ok(batch.clone())]).boxed());
        assert_eq!(clean.fill().await.ok(), Some(true));
        assert_eq!(clean.keys.len(), 2);
        assert_eq!(clean.fill().await.ok(), Some(false));
        // A read error after a batch.
        let err = parquet::errors::ParquetError::General("disk on fire".into());
        let mut failing = cursor(futures::stream::iter([Ok(batch.clone()), Err(err)]).boxed());
        assert_eq!(failing.fill().await.ok(), Some(true));
        let err = failing.fill().await.unwrap_err();
        assert!(matches!(err, ReadFault::Parquet { .. }), "{err}");
        // A reader task that panics: its channel closes without `End`.
        let panicking = futures::stream::iter([Ok(batch)])
            .chain(futures::stream::poll_fn(
                |_| -> std::task::Poll<Option<_>> { panic!("decoder bug") },
            ))
            .boxed();
        let mut panicked = cursor(panicking);
        assert_eq!(panicked.fill().await.ok(), Some(true));
        let err = panicked.fill().await.unwrap_err();
        assert!(matches!(err, ReadFault::Stopped { .. }), "{err}");
    }

    /// A batch of one Int64 key column `k`.
    fn int64_keys(keys: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(keys.to_vec()))]).unwrap()
    }

    /// A cursor of packed keys over `items` (batches of [`int64_keys`], or errors).
    fn packed_cursor(items: Vec<parquet::errors::Result<RecordBatch>>) -> Cursor {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        Cursor::new(
            read_ahead(
                futures::stream::iter(items).boxed(),
                vec!["k".into()],
                Arc::new(converter),
                true,
                "f".into(),
            ),
            "f".into(),
        )
    }

    #[tokio::test]
    async fn a_file_that_fails_in_either_half_of_the_split_merge_fails_the_merge() {
        // Six files of two keys each (with one duplicate across the halves), file `failing`
        // ending with a read error after its batch.
        let cursors = |failing: Option<usize>| async move {
            let mut cursors = Vec::new();
            for f in 0..6i64 {
                let k = if f == 5 { 0 } else { 10 * f };
                let mut items = vec![Ok(int64_keys(&[k, k + 1]))];
                if failing == Some(f as usize) {
                    let err = parquet::errors::ParquetError::General("disk on fire".into());
                    items.push(Err(err));
                }
                let mut cursor = packed_cursor(items);
                assert_eq!(cursor.fill().await.ok(), Some(true));
                cursors.push(cursor);
            }
            cursors
        };
        // Keys 0 and 1 appear in files 0 and 5 (one in each half): 4 failing rows, 2 groups.
        assert_eq!(
            merge_packed_split(cursors(None).await).await.ok(),
            Some((4, 2))
        );
        for failing in [0, 5] {
            let merged = merge_packed_split(cursors(Some(failing)).await).await;
            assert!(
                matches!(merged, Err(Declined::Fault(ReadFault::Parquet { .. }))),
                "file {failing} failed: {merged:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_packed_merge_yields_every_key_in_order_whatever_the_number_of_files() {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let pack = |k: i64| match load(&int64_keys(&[k]), &["k".to_string()], &converter, true, "f")
        {
            Ok(Keys::Packed(keys)) => keys[0],
            _ => unreachable!("an Int64 key packs"),
        };
        let mut seed = 7u64;
        // 0 to 9 files (trees of 1 to 16 leaves, most with leaves left over), of 0 to 30 keys
        // each, duplicates within and across files, some files empty.
        for files in 0..=9 {
            let keys: Vec<Vec<i64>> = (0..files)
                .map(|_| {
                    let n = lcg(&mut seed) % 31;
                    let mut k: Vec<i64> = (0..n).map(|_| (lcg(&mut seed) % 50) as i64).collect();
                    k.sort_unstable();
                    k
                })
                .collect();
            let mut cursors = Vec::new();
            for k in &keys {
                // Batches of at most 4 keys, so that cursors refill mid-merge.
                let mut cursor = packed_cursor(k.chunks(4).map(|c| Ok(int64_keys(c))).collect());
                if cursor.fill().await.unwrap() {
                    cursors.push(cursor);
                }
            }
            let mut merge = PackedMerge::new(cursors);
            let mut got = Vec::new();
            let mut out = Vec::new();
            while merge.fill(&mut out).await.unwrap() {
                got.extend_from_slice(&out);
            }
            let mut expected: Vec<u128> = keys.iter().flatten().map(|&k| pack(k)).collect();
            expected.sort_unstable();
            assert_eq!(got, expected, "{files} files: {keys:?}");
        }
    }

    #[test]
    fn integer_keys_pack_as_their_row_format_packs() {
        use arrow::array::{
            Date32Array, Date64Array, DurationNanosecondArray, Int8Array, Int16Array, Int32Array,
            Time32SecondArray, TimestampMicrosecondArray, UInt8Array, UInt16Array, UInt32Array,
            UInt64Array,
        };
        let mut seed = 7u64;
        let mut next = move || lcg(&mut seed) << 31 ^ lcg(&mut seed);
        let n = 500;
        // Extremes first, then random values; every 7th row NULL in the nullable ones.
        let nullable = |i: usize| i % 7 != 3;
        fn at<T: Copy>(edges: &[T], i: usize, random: T) -> T {
            edges.get(i).copied().unwrap_or(random)
        }
        let mut i8s = Vec::new();
        let mut i16s = Vec::new();
        let mut i32s = Vec::new();
        let mut i64s = Vec::new();
        let mut u8s = Vec::new();
        let mut u16s = Vec::new();
        let mut u32s = Vec::new();
        let mut u64s = Vec::new();
        for i in 0..n {
            let r = next();
            i8s.push(nullable(i).then_some(at(&[i8::MIN, -1, 0, 1, i8::MAX], i, r as i8)));
            i16s.push(at(&[i16::MIN, -1, 0, 1, i16::MAX], i, r as i16));
            i32s.push(at(&[i32::MIN, -1, 0, 1, i32::MAX], i, r as i32));
            i64s.push(nullable(i + 1).then_some(at(&[i64::MIN, -1, 0, 1, i64::MAX], i, r as i64)));
            u8s.push(at(&[0, 1, u8::MAX], i, r as u8));
            u16s.push(at(&[0, 1, u16::MAX], i, r as u16));
            u32s.push(nullable(i + 2).then_some(at(&[0, 1, u32::MAX], i, r as u32)));
            u64s.push(at(&[0, 1, u64::MAX], i, r));
        }
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int8Array::from(i8s)),
            Arc::new(Int16Array::from(i16s)),
            Arc::new(Int32Array::from(i32s.clone())),
            Arc::new(Int64Array::from(i64s.clone())),
            Arc::new(UInt8Array::from(u8s)),
            Arc::new(UInt16Array::from(u16s)),
            Arc::new(UInt32Array::from(u32s)),
            Arc::new(UInt64Array::from(u64s)),
            Arc::new(Date32Array::from(i32s.clone())),
            Arc::new(TimestampMicrosecondArray::from(i64s.clone()).with_timezone("UTC")),
            Arc::new(Date64Array::from(i64s.clone())),
            Arc::new(Time32SecondArray::from(i32s)),
            Arc::new(DurationNanosecondArray::from(i64s)),
        ];
        // Keys of up to 16 bytes: every pair and some triples, whole and sliced.
        let mut keys: Vec<Vec<usize>> = (0..arrays.len()).map(|a| vec![a]).collect();
        for a in 0..arrays.len() {
            for b in 0..arrays.len() {
                keys.push(vec![a, b]);
            }
        }
        keys.extend([
            vec![0, 1, 2],
            vec![4, 5, 6, 4],
            vec![2, 0, 9],
            vec![1, 5, 0, 4, 8],
        ]);
        let mut packed = 0;
        for key in keys {
            let columns: Vec<ArrayRef> = key.iter().map(|&c| Arc::clone(&arrays[c])).collect();
            let width: usize = columns
                .iter()
                .map(|a| a.data_type().primitive_width().unwrap() + 1)
                .sum();
            for (offset, len) in [(0, n), (3, n - 10)] {
                let sliced: Vec<ArrayRef> = columns.iter().map(|a| a.slice(offset, len)).collect();
                let mut valid: Option<NullBuffer> = None;
                for a in &sliced {
                    valid = NullBuffer::union(valid.as_ref(), a.logical_nulls().as_ref());
                }
                let direct = pack_integers(&sliced, valid.as_ref());
                if width > 16 {
                    assert_eq!(direct, None, "{key:?}");
                    continue;
                }
                let fields = sliced
                    .iter()
                    .map(|a| SortField::new(a.data_type().clone()))
                    .collect();
                let rows = RowConverter::new(fields)
                    .unwrap()
                    .convert_columns(&sliced)
                    .unwrap();
                let expected = pack_rows(&rows, valid.as_ref());
                assert!(expected.len() < len || valid.is_none(), "{key:?}");
                let direct = direct.unwrap_or_else(|| panic!("{key:?} not packed"));
                assert_eq!(direct.len(), expected.len(), "{key:?} at {offset}");
                if let Some(i) = (0..direct.len()).find(|&i| direct[i] != expected[i]) {
                    panic!(
                        "{key:?} at {offset}, row {i}: {:032x} instead of {:032x}",
                        direct[i], expected[i]
                    );
                }
                packed += 1;
            }
        }
        assert!(packed > 100);
        // Other types are left to the row format.
        let floats: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![1.0, -1.0]));
        assert_eq!(pack_integers(&[floats], None), None);
    }

    #[test]
    fn key_prefixes_in_any_order() {
        let key = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(key_prefix(&s(&["b", "a"]), &key), Some(s(&["a", "b"])));
        assert_eq!(key_prefix(&s(&["a"]), &key), Some(s(&["a"])));
        assert_eq!(key_prefix(&s(&["b"]), &key), None);
        assert_eq!(key_prefix(&s(&["a", "c"]), &key), None);
        assert_eq!(key_prefix(&s(&["a", "b", "c", "d"]), &key), None);
        assert_eq!(key_prefix(&[], &key), None);
    }
}
