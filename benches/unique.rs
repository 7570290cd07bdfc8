//! The `unique` strategies weighed against each other on real files: the bitmap, the merge and
//! the SQL, over the files of a published version, alternating, in one process.
//!
//!     cargo bench --bench unique -- TABLE_DIR [COLUMNS] [ROUNDS]
//!
//! `TABLE_DIR`: a local table (e.g. `target/bench/out/wap/lineitem` after `bench/run.sh`);
//! `COLUMNS`: comma-separated (default `l_orderkey,l_linenumber`); `ROUNDS` (default 5). The
//! footers are read once beforehand, as a run's audit reads them once for all its rules.
//! Prints each strategy's median with its min and max, and checks that they all count the same.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use wap::audit::StagedFiles;
use wap::audit::unique::{Strategy, count_by, read_footers};
use wap::engine::{EngineOptions, session};

fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "median {:.0} ms (min {:.0}, max {:.0})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: cargo bench --bench unique -- TABLE_DIR [COLUMNS] [ROUNDS]");
        std::process::exit(2);
    };
    let columns: Vec<String> = args
        .get(1)
        .map_or("l_orderkey,l_linenumber", String::as_str)
        .split(',')
        .map(str::to_string)
        .collect();
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap());
    let mut manifest = wap::versions::current(&store)
        .await
        .unwrap()
        .expect("a published table");
    wap::versions::resolve_files(&store, [&mut manifest])
        .await
        .unwrap();
    let objects: Vec<_> = manifest.files().map(wap::table::object_meta).collect();
    let schema = manifest.schema_ref();
    let ctx = session(&EngineOptions::default(), Arc::clone(&store), None).unwrap();
    let table = wap::table::files_table(Arc::clone(&schema), objects.clone()).unwrap();
    ctx.register_table("staged", Arc::new(table)).unwrap();
    let files = StagedFiles::new(store, schema, objects);
    let started = Instant::now();
    let footers = read_footers(&files).await.unwrap();
    println!(
        "{} files, {} rows; footers read in {:.0} ms",
        files.files.len(),
        manifest.rows(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let strategies = [Strategy::Bitmap, Strategy::Merge, Strategy::Sql];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); strategies.len()];
    let mut counts = vec![None; strategies.len()];
    for round in 0..rounds {
        // Alternate the order, so that no strategy always runs right after another.
        for k in 0..strategies.len() {
            let i = (k + round) % strategies.len();
            let t = Instant::now();
            let found = count_by(&ctx, strategies[i], &files, &columns, &footers)
                .await
                .unwrap();
            let Some(found) = found else {
                println!(
                    "{:?} declines these columns (RUST_LOG=debug says why)",
                    strategies[i]
                );
                continue;
            };
            times[i].push(t.elapsed());
            assert!(
                counts[i].is_none_or(|c| c == found),
                "{:?} counted differently between rounds",
                strategies[i]
            );
            counts[i] = Some(found);
        }
    }
    let answered: Vec<(u64, u64)> = counts.iter().flatten().copied().collect();
    assert!(
        answered.windows(2).all(|w| w[0] == w[1]),
        "the strategies disagree: {counts:?}"
    );
    for (i, s) in strategies.iter().enumerate() {
        if !times[i].is_empty() {
            println!(
                "{s:?}: {} over {} rounds; failing rows, duplicated keys: {:?}",
                spread(times[i].clone()),
                times[i].len(),
                counts[i].expect("counted")
            );
        }
    }
}
