//! `unique` over integer keys that span a small range: one bit per possible key.
//!
//! The footers give each key column's exact min and max, so the keys of a run all lie in a box
//! of `span_1 * span_2 * ...` values. When that box is small against the row count (order keys
//! times line numbers, say: a few bits per row), a key is a bit in a bitmap of the box: a bit
//! found set is a
//! duplicate, and a second bitmap counts each duplicated key once. Files are read
//! concurrently, in any order, and need not be sorted; the work per row is one fetch-or
//! instead of a comparison per level of a merge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::StagedFiles;
use super::files::{Declined, Footer, ReadFault, group_stats, integer_layout, key_columns, open};

/// Bits of the bitmaps per row of the table, at most: past that the box is sparse and the merge
/// (whose memory does not grow with the key range) is used instead.
const BITS_PER_ROW: u128 = 64;
/// The largest box, in bits (two bitmaps of 256 MiB).
const MAX_BITS: u128 = 1 << 31;

/// `(failing rows, duplicated keys)` of a `unique` rule over `columns` of the staged `files`,
/// when every column is an integer-like type (see [`integer_layout`]), every file has a footer
/// in `footers` with exact statistics for them, and their box is small enough (see the module
/// doc) for the pool to hold its two bitmaps. Declines otherwise, or when a file holds a value
/// outside its footer's bounds; fails when a file cannot be read. Rows with a NULL in the key
/// are left out, as the SQL leaves them out.
pub(super) async fn unique_by_bitmap(
    ctx: &SessionContext,
    files: &StagedFiles,
    columns: &[String],
    footers: &[Footer],
) -> Result<(u64, u64), Declined> {
    let no = |why: String| Err(Declined::NotApplicable(why));
    for c in columns {
        let integer = files
            .schema
            .field_with_name(c)
            .is_ok_and(|f| integer_layout(f.data_type()).is_some());
        if !integer {
            return no(format!("column `{c}` is not of an integer-like type"));
        }
    }
    let Some(metas) = files
        .files
        .iter()
        .map(|file| {
            footers
                .iter()
                .find(|f| f.file.location == file.location)
                .map(|f| f.meta.clone())
        })
        .collect::<Option<Vec<_>>>()
    else {
        return no("a staged file's footer was not read".into());
    };
    let rows: u128 = metas
        .iter()
        .map(|m| m.metadata().file_metadata().num_rows().max(0) as u128)
        .sum();
    let Some(bounds) = columns
        .iter()
        .map(|c| bounds(c, footers))
        .collect::<Option<Vec<_>>>()
    else {
        return no("the footers lack exact min/max statistics of a key column".into());
    };
    // No key at all (every key column NULL in every row, or no rows): nothing repeats.
    let Some(bounds) = bounds.into_iter().collect::<Option<Vec<(i128, i128)>>>() else {
        return Ok((0, 0));
    };
    let mut bits: u128 = 1;
    for &(min, max) in &bounds {
        bits = match bits.checked_mul((max - min + 1) as u128) {
            Some(b) if b <= MAX_BITS => b,
            _ => return no(format!("the keys' range is over {MAX_BITS} values")),
        };
    }
    if bits > BITS_PER_ROW * rows.max(1) {
        return no(format!(
            "the keys' range ({bits} values) is sparse for {rows} rows (over {BITS_PER_ROW} per row)"
        ));
    }
    let words = bits.div_ceil(64) as usize;
    let reservation =
        MemoryConsumer::new("wap audit unique bitmap").register(&ctx.runtime_env().memory_pool);
    let bytes = 2 * words * std::mem::size_of::<u64>();
    if reservation.try_grow(bytes).is_err() {
        return no(format!(
            "the memory pool cannot hold two bitmaps of {bytes} bytes"
        ));
    }
    let maps = Arc::new(Bitmaps {
        seen: (0..words).map(|_| AtomicU64::new(0)).collect(),
        repeated: (0..words).map(|_| AtomicU64::new(0)).collect(),
        bounds,
    });
    let at_once = ctx.state().config().target_partitions().max(1);
    let tasks = files.files.iter().cloned().zip(metas).map(|(file, meta)| {
        let (store, columns, maps) = (
            Arc::clone(&files.store),
            columns.to_vec(),
            Arc::clone(&maps),
        );
        async move {
            let mut stream = open(&store, &file, &columns, Some(meta)).await?;
            let path = file.location.to_string();
            // Decoding is CPU work: each file on a task of its own, `at_once` at a time.
            let stopped = ReadFault::Stopped { path: path.clone() };
            tokio::spawn(async move {
                let mut counts = (0u64, 0u64);
                let mut scratch = Scratch::default();
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|source| ReadFault::Parquet {
                        path: path.clone(),
                        source,
                    })?;
                    let Some((failing, groups)) = maps.mark(&batch, &columns, &mut scratch) else {
                        return Err(Declined::NotApplicable(format!(
                            "{path} holds a key outside its footer's bounds"
                        )));
                    };
                    counts = (counts.0 + failing, counts.1 + groups);
                }
                Ok(counts)
            })
            .await
            .map_err(|_| Declined::Fault(stopped))?
        }
    });
    let counts: Vec<Result<(u64, u64), Declined>> = futures::stream::iter(tasks)
        .buffer_unordered(at_once)
        .collect()
        .await;
    counts
        .into_iter()
        .try_fold((0, 0), |(f, g), c| c.map(|(cf, cg)| (f + cf, g + cg)))
}

/// The exact min and max of `column` over every row group of `footers`, as `i128`: `None` when
/// a statistic is missing or inexact, `Some(None)` when the column holds no value at all.
fn bounds(column: &str, footers: &[Footer]) -> Option<Option<(i128, i128)>> {
    let mut bounds: Option<(i128, i128)> = None;
    for f in footers {
        let stats = group_stats(column, f)?;
        let (mut lo, mut hi) = (Vec::new(), Vec::new());
        widen(&stats.mins, &mut lo)?;
        widen(&stats.maxes, &mut hi)?;
        for (g, &rows) in stats.rows.iter().enumerate() {
            if stats.mins.is_null(g) || stats.maxes.is_null(g) {
                // Without bounds only a group of NULLs alone is known to hold no value.
                if stats.nulls.is_null(g) || stats.nulls.value(g) as i64 != rows {
                    return None;
                }
                continue;
            }
            if stats.exact.is_null(g) || !stats.exact.value(g) {
                return None;
            }
            bounds = Some(match bounds {
                None => (lo[g], hi[g]),
                Some((a, b)) => (a.min(lo[g]), b.max(hi[g])),
            });
        }
    }
    Some(bounds)
}

/// Every value of an integer-like array (see [`integer_layout`]) as `i128`, into `out`
/// (cleared first); a NULL slot gives whatever its slot holds. `None` for another type.
fn widen(a: &ArrayRef, out: &mut Vec<i128>) -> Option<()> {
    let (width, signed) = integer_layout(a.data_type())?;
    let data = a.to_data();
    let buffer = data.buffers().first()?;
    let at = data.offset()..data.offset() + data.len();
    out.clear();
    match (width, signed) {
        (1, true) => out.extend(buffer.typed_data::<i8>()[at].iter().map(|&v| v as i128)),
        (2, true) => out.extend(buffer.typed_data::<i16>()[at].iter().map(|&v| v as i128)),
        (4, true) => out.extend(buffer.typed_data::<i32>()[at].iter().map(|&v| v as i128)),
        (8, true) => out.extend(buffer.typed_data::<i64>()[at].iter().map(|&v| v as i128)),
        (1, false) => out.extend(buffer.typed_data::<u8>()[at].iter().map(|&v| v as i128)),
        (2, false) => out.extend(buffer.typed_data::<u16>()[at].iter().map(|&v| v as i128)),
        (4, false) => out.extend(buffer.typed_data::<u32>()[at].iter().map(|&v| v as i128)),
        (8, false) => out.extend(buffer.typed_data::<u64>()[at].iter().map(|&v| v as i128)),
        _ => return None,
    }
    Some(())
}

/// Per-task buffers, reused batch after batch.
#[derive(Default)]
struct Scratch {
    values: Vec<i128>,
    index: Vec<u64>,
}

/// The two bitmaps over the key box, shared by the tasks.
struct Bitmaps {
    /// A key's bit: set by its first row.
    seen: Vec<AtomicU64>,
    /// Set by its second row: the key is counted as duplicated once, its rows all failing.
    repeated: Vec<AtomicU64>,
    /// Each key column's min and max.
    bounds: Vec<(i128, i128)>,
}

impl Bitmaps {
    /// Marks the keys of `batch`: `(failing rows, duplicated keys)` this batch adds (a key's
    /// first row counts as failing when its second is found). `None` when a column is missing
    /// or a value lies outside the footers' bounds.
    fn mark(
        &self,
        batch: &RecordBatch,
        columns: &[String],
        scratch: &mut Scratch,
    ) -> Option<(u64, u64)> {
        let (arrays, valid) = key_columns(batch, columns)?;
        let valid = valid.filter(|v| v.null_count() > 0);
        let index = &mut scratch.index;
        index.clear();
        index.resize(batch.num_rows(), 0);
        for (a, &(min, max)) in arrays.iter().zip(&self.bounds) {
            widen(a, &mut scratch.values)?;
            let span = (max - min + 1) as u64;
            let mut inside = true;
            for (r, (i, &v)) in index.iter_mut().zip(&scratch.values).enumerate() {
                let offset = v - min;
                if !(0..span as i128).contains(&offset) {
                    inside &= valid.as_ref().is_some_and(|n| n.is_null(r));
                    continue;
                }
                *i = *i * span + offset as u64;
            }
            if !inside {
                return None;
            }
        }
        let (mut failing, mut groups) = (0u64, 0u64);
        for (r, &i) in index.iter().enumerate() {
            if valid.as_ref().is_some_and(|n| n.is_null(r)) {
                continue;
            }
            let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
            if self.seen[word].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                continue;
            }
            if self.repeated[word].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                failing += 2;
                groups += 1;
            } else {
                failing += 1;
            }
        }
        Some((failing, groups))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{lcg, staged_files, unique_by_sql};
    use super::*;
    use arrow::array::{Date32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    /// A key row: `(k1 Int64, k2 Date32)`.
    type Row = (Option<i64>, Option<i32>);

    /// Files of `(k1, k2, s Utf8)` rows, in the order given, registered as `staged`, and their
    /// footers. `stats`: whether files carry statistics.
    async fn staged(files: &[Vec<Row>], stats: bool) -> (SessionContext, StagedFiles, Vec<Footer>) {
        staged_in(files, stats, &Default::default()).await
    }

    /// [`staged`] in a session with `options`.
    async fn staged_in(
        files: &[Vec<Row>],
        stats: bool,
        options: &crate::engine::EngineOptions,
    ) -> (SessionContext, StagedFiles, Vec<Footer>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k1", DataType::Int64, true),
            Field::new("k2", DataType::Date32, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batches: Vec<RecordBatch> = files
            .iter()
            .map(|rows| {
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
                        Arc::new(Date32Array::from_iter(rows.iter().map(|r| r.1))),
                        Arc::new(StringArray::from_iter_values(
                            rows.iter().map(|r| format!("{r:?}")),
                        )),
                    ],
                )
                .unwrap()
            })
            .collect();
        let props = WriterProperties::builder().set_statistics_enabled(if stats {
            EnabledStatistics::Chunk
        } else {
            EnabledStatistics::None
        });
        let (ctx, store, metas) = staged_files(&batches, props, options).await;
        let footers = super::super::files::footers(&store, &metas).await.unwrap();
        (ctx, StagedFiles::new(store, schema, metas), footers)
    }

    /// The bitmap's counts; `None` when it declined (a read fault fails the test).
    async fn bitmap(
        ctx: &SessionContext,
        files: &StagedFiles,
        columns: &[String],
        footers: &[Footer],
    ) -> Option<(u64, u64)> {
        match unique_by_bitmap(ctx, files, columns, footers).await {
            Ok(found) => Some(found),
            Err(Declined::NotApplicable(_)) => None,
            Err(Declined::Fault(f)) => panic!("{f}"),
        }
    }

    fn cols(v: &[&str]) -> Vec<String> {
        v.iter().map(|c| c.to_string()).collect()
    }

    #[tokio::test]
    async fn counts_what_the_sql_counts_in_any_order() {
        for seed in 0..16u64 {
            let mut s = seed;
            let nfiles = 1 + (lcg(&mut s) % 9) as usize;
            // Negative and positive keys, spans from a handful to hundreds of values.
            let range = 2 + lcg(&mut s) % 300;
            let files: Vec<Vec<Row>> = (0..nfiles)
                .map(|_| {
                    (0..lcg(&mut s) % 700)
                        .map(|_| {
                            let k1 = (!lcg(&mut s).is_multiple_of(10))
                                .then(|| (lcg(&mut s) % range) as i64 - 100);
                            let k2 = (!lcg(&mut s).is_multiple_of(12))
                                .then(|| 19_000 + (lcg(&mut s) % 4) as i32);
                            (k1, k2)
                        })
                        .collect()
                })
                .collect();
            let (ctx, sf, footers) = staged(&files, true).await;
            for c in [cols(&["k1"]), cols(&["k1", "k2"]), cols(&["k2", "k1"])] {
                let dense = bitmap(&ctx, &sf, &c, &footers).await;
                assert_eq!(
                    dense,
                    Some(unique_by_sql(&ctx, &c).await),
                    "seed {seed}, columns {c:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_key_in_three_files_is_one_duplicated_key_of_three_rows() {
        let row = |k: i64| (Some(k), Some(1));
        let files = vec![
            (0..150).map(row).chain([row(7)]).collect(),
            vec![row(7), row(300), row(-5)],
            (150..300)
                .map(row)
                .chain([row(-5), (None, Some(1))])
                .collect(),
            vec![(None, Some(1)), (Some(7), None)],
        ];
        let (ctx, sf, footers) = staged(&files, true).await;
        let c = cols(&["k1", "k2"]);
        // Key 7 in files 0, 0 and 1; -5 in files 1 and 2; rows with a NULL left out.
        assert_eq!(bitmap(&ctx, &sf, &c, &footers).await, Some((5, 2)));
        assert_eq!(unique_by_sql(&ctx, &c).await, (5, 2));
    }

    #[tokio::test]
    async fn a_key_column_of_nulls_alone_repeats_nothing() {
        let files = vec![vec![(None, Some(1)), (None, Some(1))], vec![(None, None)]];
        let (ctx, sf, footers) = staged(&files, true).await;
        for c in [cols(&["k1"]), cols(&["k1", "k2"])] {
            assert_eq!(bitmap(&ctx, &sf, &c, &footers).await, Some((0, 0)));
            assert_eq!(unique_by_sql(&ctx, &c).await, (0, 0));
        }
    }

    #[tokio::test]
    async fn left_to_the_merge_when_the_bitmap_would_not_do() {
        let dense = |k: i64| (Some(k), Some(1));
        let files: Vec<Vec<Row>> = vec![(0..500).map(dense).collect()];
        let c = cols(&["k1"]);
        let (ctx, sf, footers) = staged(&files, true).await;
        assert_eq!(
            bitmap(&ctx, &sf, &c, &footers).await,
            Some((0, 0)),
            "dense keys use the bitmap"
        );
        // A string column.
        assert_eq!(bitmap(&ctx, &sf, &cols(&["s"]), &footers).await, None);
        // No footers, or footers of other files.
        assert_eq!(bitmap(&ctx, &sf, &c, &[]).await, None);
        // Keys far apart: 500 rows over a range of 500 million.
        let sparse: Vec<Vec<Row>> = vec![(0..500).map(|k| dense(k * 1_000_000)).collect()];
        let (ctx, sf, footers) = staged(&sparse, true).await;
        assert_eq!(bitmap(&ctx, &sf, &c, &footers).await, None);
        // Bitmaps (two of 512 bits) that the pool cannot hold.
        let tight = crate::engine::EngineOptions {
            memory_limit: 100,
            batch_size: 1000,
        };
        let (ctx, sf, footers) = staged_in(&files, true, &tight).await;
        assert_eq!(bitmap(&ctx, &sf, &c, &footers).await, None);
        // Files without statistics.
        let (ctx, sf, footers) = staged(&files, false).await;
        assert_eq!(bitmap(&ctx, &sf, &c, &footers).await, None);
    }

    #[test]
    fn a_value_outside_the_footers_bounds_gives_up_but_a_null_slot_does_not() {
        let maps = || Bitmaps {
            seen: (0..2).map(|_| AtomicU64::new(0)).collect(),
            repeated: (0..2).map(|_| AtomicU64::new(0)).collect(),
            bounds: vec![(10, 109)],
        };
        let batch = |values: Int64Array| {
            RecordBatch::try_from_iter([("k", Arc::new(values) as ArrayRef)]).unwrap()
        };
        let c = cols(&["k"]);
        let mut scratch = Scratch::default();
        assert_eq!(
            maps().mark(
                &batch(Int64Array::from(vec![10, 109, 10])),
                &c,
                &mut scratch
            ),
            Some((2, 1))
        );
        for outside in [9, 110, i64::MIN, i64::MAX] {
            assert_eq!(
                maps().mark(
                    &batch(Int64Array::from(vec![50, outside])),
                    &c,
                    &mut scratch
                ),
                None,
                "{outside}"
            );
        }
        // A NULL slot holds whatever value: here one far outside.
        let nulls = Int64Array::new(
            vec![109, i64::MAX, 109].into(),
            Some(vec![true, false, true].into()),
        );
        assert_eq!(maps().mark(&batch(nulls), &c, &mut scratch), Some((2, 1)));
    }
}
