//! Merge mode (upsert by natural key), incremental watermarks and `wap_key`, through the
//! library: a customers dimension loaded from CSV batches.

use std::path::PathBuf;

use arrow::array::Array;
use tempfile::TempDir;
use wap::conf::JobConf;
use wap::job::{Job, JobOptions, Mode, RunOutcome, Status};

/// A merge job over `data/<date>/batch.csv` with the columns
/// `customer_id,country,email,tier,status,updated_at,op`.
pub struct MergeFixture {
    pub dir: TempDir,
    pub conf: PathBuf,
}

pub const HEADER: &str = "customer_id,country,email,tier,status,updated_at,op";

/// The job file: `extra` goes into `merge:`; `top` after it at the top level.
pub fn job_text(extra: &str, top: &str) -> String {
    format!(
        "name: customers\n\
         table: ../lake/customers\n\
         mode: merge\n\
         partition_by: [country]\n\
         key: [customer_id]\n\
         source:\n  format: csv\n  path: ../data/{{date}}/\n\
         transform: |\n  SELECT customer_id, country, email, tier, status, \
         CAST(updated_at AS TIMESTAMP) AS updated_at, op FROM source\n\
         merge:\n  control_columns: [op]\n  delete_when: \"op = 'D'\"\n{extra}{top}"
    )
}

impl MergeFixture {
    pub fn new(extra: &str, top: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        let conf = dir.path().join("conf/customers.yaml");
        std::fs::write(&conf, job_text(extra, top)).unwrap();
        MergeFixture { dir, conf }
    }

    /// Writes the batch of `date`: one CSV line per row (without the header).
    pub fn batch(&self, date: &str, rows: &[&str]) {
        let p = self.dir.path().join("data").join(date).join("batch.csv");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut text = format!("{HEADER}\n");
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(p, text).unwrap();
    }

    pub fn job(&self) -> Job {
        Job::open(JobConf::load(&self.conf).unwrap(), JobOptions::default()).unwrap()
    }

    pub async fn run(&self, date: &str) -> RunOutcome {
        self.job().run(date, Mode::Publish).await.unwrap()
    }
}

/// Every row of a version as `id|country|email|tier|status|updated_at`, sorted by id.
pub async fn table(job: &Job, version: Option<u64>) -> Vec<String> {
    let df = job
        .query(
            version,
            "SELECT concat_ws('|', CAST(customer_id AS VARCHAR), country, coalesce(email, '-'), \
             coalesce(tier, '-'), coalesce(status, '-'), CAST(updated_at AS VARCHAR)) AS r \
             FROM customers ORDER BY customer_id",
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in df.collect().await.unwrap() {
        let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let c = c
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for i in 0..c.len() {
            out.push(c.value(i).to_string());
        }
    }
    out
}

const DAY1: &[&str] = &[
    "1,DE,a@x,gold,pending,2024-01-01T10:00:00,I",
    "2,DE,b@x,silver,pending,2024-01-01T10:00:00,I",
    "3,FR,c@x,gold,pending,2024-01-01T10:00:00,I",
    "4,US,d@x,bronze,pending,2024-01-01T10:00:00,I",
];

fn counts(o: &RunOutcome) -> [u64; 5] {
    let m = o.merge.expect("a merge run reports counts");
    [m.inserted, m.updated, m.deleted, m.unchanged, m.stale]
}

#[tokio::test]
async fn upserts_deletes_and_a_rerun_is_unchanged() {
    let f = MergeFixture::new("", "");
    f.batch("2024-01-01", DAY1);
    let first = f.run("2024-01-01").await;
    assert_eq!(first.status, Status::Published, "{:?}", first.message);
    assert_eq!(counts(&first), [4, 0, 0, 0, 0]);
    let job = f.job();
    let v1 = job.show(None).await.unwrap();
    assert_eq!(
        v1.partitions.keys().collect::<Vec<_>>(),
        ["country=DE", "country=FR", "country=US"]
    );
    assert!(
        v1.schema.field_with_name("op").is_err(),
        "control columns are not stored"
    );

    // Update 1 (DE), delete 3 (FR, its partition empties), insert 5 (DE), delete a missing key.
    f.batch(
        "2024-01-02",
        &[
            "1,DE,a@new,gold,pending,2024-01-02T10:00:00,U",
            "3,FR,c@x,gold,pending,2024-01-02T10:00:00,D",
            "5,DE,e@x,gold,pending,2024-01-02T10:00:00,I",
            "9,DE,z@x,gold,pending,2024-01-02T10:00:00,D",
        ],
    );
    let second = f.run("2024-01-02").await;
    assert_eq!(second.status, Status::Published, "{:?}", second.message);
    assert_eq!(counts(&second), [1, 1, 1, 1, 0]);
    let v2 = job.show(None).await.unwrap();
    assert_eq!(
        v2.partitions.keys().collect::<Vec<_>>(),
        ["country=DE", "country=US"],
        "the emptied partition leaves the table"
    );
    assert_eq!(
        v2.partitions["country=US"], v1.partitions["country=US"],
        "a partition no row of the batch touches keeps its files"
    );
    let mut changed = v2.change.partitions.clone();
    changed.sort();
    assert_eq!(changed, ["country=DE", "country=FR"]);
    assert_eq!(
        table(&job, None).await,
        [
            "1|DE|a@new|gold|pending|2024-01-02T10:00:00",
            "2|DE|b@x|silver|pending|2024-01-01T10:00:00",
            "4|US|d@x|bronze|pending|2024-01-01T10:00:00",
            "5|DE|e@x|gold|pending|2024-01-02T10:00:00",
        ]
    );

    // The same run again: nothing read, nothing written, no version.
    let listing = listing(f.dir.path());
    let again = f.run("2024-01-02").await;
    assert_eq!(again.status, Status::Unchanged);
    assert_eq!(again.version, 2);
    assert_eq!(again.run_id, second.run_id);
    assert_eq!(listing, self::listing(f.dir.path()));

    // The same batch under another date (another run id): every row unchanged or a no-op.
    std::fs::create_dir_all(f.dir.path().join("data/2024-01-03")).unwrap();
    std::fs::copy(
        f.dir.path().join("data/2024-01-02/batch.csv"),
        f.dir.path().join("data/2024-01-03/batch.csv"),
    )
    .unwrap();
    let replay = f.run("2024-01-03").await;
    assert_eq!(replay.status, Status::Unchanged, "{:?}", replay.message);
    assert_eq!(counts(&replay), [0, 0, 0, 4, 0]);
    assert_eq!(job.show(None).await.unwrap().version, 2);
}

fn listing(root: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("lake")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}
