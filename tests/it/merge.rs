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
    job_text_where(extra, top, "")
}

/// [`job_text`] with a `WHERE` clause (`filter`) in the transform.
pub fn job_text_where(extra: &str, top: &str, filter: &str) -> String {
    format!(
        "name: customers\n\
         table: ../lake/customers\n\
         mode: merge\n\
         partition_by: [country]\n\
         key: [customer_id]\n\
         source:\n  format: csv\n  path: ../data/{{date}}/\n\
         transform: |\n  SELECT customer_id, country, email, tier, status, \
         CAST(updated_at AS TIMESTAMP) AS updated_at, op FROM source {filter}\n\
         merge:\n  control_columns: [op]\n  delete_when: \"op = 'D'\"\n{extra}{top}"
    )
}

impl MergeFixture {
    pub fn new(extra: &str, top: &str) -> Self {
        Self::from_text(&job_text(extra, top))
    }

    pub fn from_text(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["conf", "audits"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let conf = dir.path().join("conf/customers.yaml");
        std::fs::write(&conf, text).unwrap();
        MergeFixture { dir, conf }
    }

    /// Writes a rule file under `audits/`.
    pub fn rules(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join("audits").join(name), text).unwrap();
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

    /// A job whose table store is `store`.
    pub fn job_on(&self, store: std::sync::Arc<dyn object_store::ObjectStore>) -> Job {
        Job::with_store(
            JobConf::load(&self.conf).unwrap(),
            store,
            JobOptions::default(),
        )
    }

    /// The table's store on the local filesystem, unwrapped.
    pub fn table_store(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        let dir = self.dir.path().join("lake/customers");
        std::fs::create_dir_all(&dir).unwrap();
        wap::store::Location::parse(&dir.display().to_string(), &Default::default())
            .unwrap()
            .scoped()
            .unwrap()
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

#[tokio::test]
async fn sequence_by_makes_older_and_equal_changes_stale() {
    let f = MergeFixture::new("  sequence_by: updated_at\n", "");
    f.batch(
        "2024-01-01",
        &["1,DE,a@x,gold,pending,2024-01-01T10:00:00,I"],
    );
    assert_eq!(counts(&f.run("2024-01-01").await), [1, 0, 0, 0, 0]);
    // pending -> processing -> done, each later.
    f.batch(
        "2024-01-02",
        &["1,DE,a@x,gold,processing,2024-01-02T10:00:00,U"],
    );
    assert_eq!(counts(&f.run("2024-01-02").await), [0, 1, 0, 0, 0]);
    f.batch("2024-01-03", &["1,DE,a@x,gold,done,2024-01-03T10:00:00,U"]);
    assert_eq!(counts(&f.run("2024-01-03").await), [0, 1, 0, 0, 0]);
    let job = f.job();
    let v3 = job.show(None).await.unwrap().version;
    // Replayed older statuses, an equal one, and an older delete: all stale, nothing moves back.
    f.batch(
        "2024-01-04",
        &["1,DE,a@x,gold,processing,2024-01-02T10:00:00,U"],
    );
    let replay = f.run("2024-01-04").await;
    assert_eq!(counts(&replay), [0, 0, 0, 0, 1]);
    assert_eq!(replay.status, Status::Unchanged);
    f.batch(
        "2024-01-05",
        &["1,DE,a@x,gold,pending,2024-01-03T10:00:00,U"],
    );
    assert_eq!(counts(&f.run("2024-01-05").await), [0, 0, 0, 0, 1]);
    f.batch("2024-01-06", &["1,DE,a@x,gold,done,2024-01-01T00:00:00,D"]);
    assert_eq!(counts(&f.run("2024-01-06").await), [0, 0, 0, 0, 1]);
    assert_eq!(job.show(None).await.unwrap().version, v3);
    assert_eq!(
        table(&job, None).await,
        ["1|DE|a@x|gold|done|2024-01-03T10:00:00"]
    );
    // A later delete applies.
    f.batch("2024-01-07", &["1,DE,a@x,gold,done,2024-01-07T00:00:00,D"]);
    assert_eq!(counts(&f.run("2024-01-07").await), [0, 0, 1, 0, 0]);
    assert!(table(&job, None).await.is_empty());
}

#[tokio::test]
async fn duplicate_keys_fail_under_dedupe_error_and_settle_under_latest() {
    let f = MergeFixture::new("", "");
    f.batch(
        "2024-01-01",
        &[
            "1,DE,a@x,gold,pending,2024-01-01T10:00:00,I",
            "1,DE,a@y,gold,pending,2024-01-01T11:00:00,I",
            "2,DE,b@x,gold,pending,2024-01-01T11:00:00,I",
        ],
    );
    let failed = f.run("2024-01-01").await;
    assert_eq!(failed.status, Status::AuditFailed);
    assert_eq!(failed.status.exit_code(), 3);
    let report = failed.audit_report.as_ref().unwrap();
    let rule = report
        .rules
        .iter()
        .find(|r| r.name == "merge_key_unique")
        .unwrap();
    assert!(!rule.passed);
    assert_eq!(rule.failing_rows, 2, "both rows of the repeated key");
    assert!(rule.sample_table.contains("a@y"), "{}", rule.sample_table);
    assert!(f.job().show(None).await.is_err(), "nothing published");

    let f = MergeFixture::new("  sequence_by: updated_at\n  dedupe: latest\n", "");
    f.batch(
        "2024-01-01",
        &[
            "1,DE,a@x,gold,pending,2024-01-01T10:00:00,I",
            "1,DE,a@y,gold,pending,2024-01-01T11:00:00,I",
            "1,DE,a@y,gold,pending,2024-01-01T11:00:00,I",
            "2,DE,b@x,gold,pending,,I",
            "2,DE,b@y,gold,pending,2024-01-01T09:00:00,I",
        ],
    );
    let latest = f.run("2024-01-01").await;
    assert_eq!(latest.status, Status::Published, "{:?}", latest.audits);
    assert_eq!(counts(&latest), [2, 0, 0, 0, 0]);
    assert_eq!(
        table(&f.job(), None).await,
        [
            "1|DE|a@y|gold|pending|2024-01-01T11:00:00",
            "2|DE|b@y|gold|pending|2024-01-01T09:00:00"
        ],
        "the greatest sequence wins (NULL lowest), identical rows collapse"
    );
    // Two different rows with the same greatest value: the run fails.
    f.batch(
        "2024-01-02",
        &[
            "1,DE,a@1,gold,pending,2024-01-02T10:00:00,U",
            "1,DE,a@2,gold,pending,2024-01-02T10:00:00,U",
        ],
    );
    let tie = f.run("2024-01-02").await;
    assert_eq!(tie.status, Status::AuditFailed);
    assert!(
        tie.audits
            .iter()
            .any(|a| a.name == "merge_latest_unique" && !a.passed)
    );
}

#[tokio::test]
async fn a_null_key_fails_the_run() {
    let f = MergeFixture::new("", "");
    f.batch(
        "2024-01-01",
        &[
            ",DE,a@x,gold,pending,2024-01-01T10:00:00,I",
            "2,DE,b@x,gold,pending,2024-01-01T10:00:00,I",
        ],
    );
    let out = f.run("2024-01-01").await;
    assert_eq!(out.status, Status::AuditFailed);
    let rule = out
        .audits
        .iter()
        .find(|a| a.name == "merge_key_not_null")
        .unwrap();
    assert_eq!(rule.failing_rows, 1);
    assert!(f.job().show(None).await.is_err());
}

#[tokio::test]
async fn a_key_that_moves_partition_ends_with_one_row() {
    let f = MergeFixture::new("", "");
    f.batch("2024-01-01", DAY1);
    f.run("2024-01-01").await;
    let job = f.job();
    let v1 = job.show(None).await.unwrap();
    // Customer 2 moves from DE to FR; customer 4 (US) is not in the batch.
    f.batch(
        "2024-01-02",
        &["2,FR,b@x,silver,pending,2024-01-02T10:00:00,U"],
    );
    let moved = f.run("2024-01-02").await;
    assert_eq!(counts(&moved), [0, 1, 0, 0, 0]);
    let v2 = job.show(None).await.unwrap();
    let mut changed = v2.change.partitions.clone();
    changed.sort();
    assert_eq!(changed, ["country=DE", "country=FR"]);
    assert_eq!(v2.partitions["country=US"], v1.partitions["country=US"]);
    assert_eq!(
        table(&job, None).await,
        [
            "1|DE|a@x|gold|pending|2024-01-01T10:00:00",
            "2|FR|b@x|silver|pending|2024-01-02T10:00:00",
            "3|FR|c@x|gold|pending|2024-01-01T10:00:00",
            "4|US|d@x|bronze|pending|2024-01-01T10:00:00",
        ]
    );
}

#[tokio::test]
async fn update_columns_change_only_those_columns() {
    let f = MergeFixture::new("  update_columns: [email, updated_at]\n", "");
    f.batch("2024-01-01", DAY1);
    f.run("2024-01-01").await;
    f.batch(
        "2024-01-02",
        &[
            "1,DE,new@x,platinum,done,2024-01-02T10:00:00,U",
            // Only columns outside update_columns differ: unchanged.
            "2,DE,b@x,platinum,done,2024-01-01T10:00:00,U",
        ],
    );
    let out = f.run("2024-01-02").await;
    assert_eq!(counts(&out), [0, 1, 0, 1, 0]);
    assert_eq!(
        table(&f.job(), None).await[..2],
        [
            "1|DE|new@x|gold|pending|2024-01-02T10:00:00",
            "2|DE|b@x|silver|pending|2024-01-01T10:00:00",
        ]
    );
}

const INCREMENTAL: &str =
    "incremental:\n  cursor: updated_at\n  lookback: 1h\n  initial: \"2024-01-01T00:00:00\"\n";

pub fn incremental_fixture(audits: &str) -> MergeFixture {
    let text = job_text_where(
        "  sequence_by: updated_at\n",
        &format!("{INCREMENTAL}{audits}"),
        "WHERE CAST(updated_at AS TIMESTAMP) >= TIMESTAMP '{watermark}'",
    );
    MergeFixture::from_text(&text)
}

#[tokio::test]
async fn the_watermark_moves_with_the_data_and_lookback_rereads_without_doubling() {
    let f = incremental_fixture("");
    let day = "2024-01-01";
    f.batch(
        day,
        &[
            "1,DE,a@x,gold,pending,2023-12-31T10:00:00,I",
            "2,DE,b@x,gold,pending,2024-01-01T10:00:00,I",
        ],
    );
    let first = f.run(day).await;
    assert_eq!(
        counts(&first),
        [1, 0, 0, 0, 0],
        "the row before `initial` is not read"
    );
    let w = first.watermark.clone().unwrap();
    assert_eq!(
        (w.before.as_str(), w.after.as_str()),
        ("2024-01-01T00:00:00", "2024-01-01T10:00:00")
    );
    let job = f.job();
    let v1 = job.show(None).await.unwrap();
    assert_eq!(
        v1.watermarks["incremental.updated_at"],
        "2024-01-01T10:00:00"
    );

    // The same extract, grown: the row at the watermark is read again (lookback), not doubled.
    f.batch(
        day,
        &[
            "1,DE,a@x,gold,pending,2023-12-31T10:00:00,I",
            "2,DE,b@x,gold,pending,2024-01-01T10:00:00,I",
            "3,DE,c@x,gold,pending,2024-01-01T12:00:00,I",
        ],
    );
    let second = f.run(day).await;
    assert_eq!(second.status, Status::Published);
    assert_eq!(
        counts(&second),
        [1, 0, 0, 0, 1],
        "row 2 again is stale (equal sequence)"
    );
    assert_eq!(
        second.watermark.as_ref().unwrap().after,
        "2024-01-01T12:00:00"
    );
    assert_eq!(table(&job, None).await.len(), 2);

    // Nothing new: unchanged, no version, same watermark.
    let again = f.run(day).await;
    assert_eq!(again.status, Status::Unchanged, "{:?}", again.message);
    assert_eq!(job.show(None).await.unwrap().version, 2);

    // Rows that change nothing but move the cursor: a version that moves only the watermark.
    f.batch(
        day,
        &[
            "3,DE,c@x,gold,pending,2024-01-01T12:00:00,I",
            "9,DE,z@x,gold,pending,2024-01-01T13:00:00,D",
        ],
    );
    let only_mark = f.run(day).await;
    assert_eq!(
        only_mark.status,
        Status::Published,
        "{:?}",
        only_mark.message
    );
    let v3 = job.show(None).await.unwrap();
    assert_eq!(
        v3.watermarks["incremental.updated_at"],
        "2024-01-01T13:00:00"
    );
    assert_eq!(v3.partitions, job.show(Some(2)).await.unwrap().partitions);

    // An empty batch (every row before the window) does not move it.
    f.batch(day, &["2,DE,b@x,gold,pending,2024-01-01T10:00:00,I"]);
    let empty = f.run(day).await;
    assert_eq!(empty.status, Status::Unchanged);
    assert_eq!(job.show(None).await.unwrap().version, 3);

    // Rollback restores the watermark with the data.
    let back = job.rollback(1).await.unwrap();
    assert_eq!(back.status, Status::Published);
    assert_eq!(
        job.show(None).await.unwrap().watermarks["incremental.updated_at"],
        "2024-01-01T10:00:00"
    );
}

#[tokio::test]
async fn a_failed_audit_leaves_data_and_watermark_as_they_were() {
    let f = incremental_fixture("audits: [../audits/customers.yaml]\n");
    f.rules(
        "customers.yaml",
        "rules:\n  - name: email_present\n    not_null: [email]\n",
    );
    let day = "2024-01-01";
    f.batch(day, &["1,DE,a@x,gold,pending,2024-01-01T10:00:00,I"]);
    assert_eq!(f.run(day).await.status, Status::Published);
    f.batch(
        day,
        &[
            "1,DE,a@x,gold,pending,2024-01-01T10:00:00,I",
            "2,DE,,gold,pending,2024-01-01T11:00:00,I",
        ],
    );
    let failed = f.run(day).await;
    assert_eq!(failed.status, Status::AuditFailed);
    let w = failed.watermark.unwrap();
    assert_eq!(w.after, w.before);
    let job = f.job();
    let current = job.show(None).await.unwrap();
    assert_eq!(current.version, 1);
    assert_eq!(
        current.watermarks["incremental.updated_at"],
        "2024-01-01T10:00:00"
    );
    // Fixed at the source, the next run reads the same window again.
    f.batch(
        day,
        &[
            "1,DE,a@x,gold,pending,2024-01-01T10:00:00,I",
            "2,DE,b@x,gold,pending,2024-01-01T11:00:00,I",
        ],
    );
    let fixed = f.run(day).await;
    assert_eq!(counts(&fixed), [1, 0, 0, 0, 1]);
    assert_eq!(fixed.watermark.unwrap().after, "2024-01-01T11:00:00");
}

#[tokio::test]
async fn a_changes_rule_bounds_what_the_batch_does() {
    let top = "audits: [../audits/customers.yaml]\n";
    let f = MergeFixture::new("", top);
    f.rules(
        "customers.yaml",
        "rules:\n  - name: few_deletes\n    changes: {delete: {max_pct: 30}, insert: {max: 10}}\n",
    );
    f.batch("2024-01-01", DAY1);
    assert_eq!(f.run("2024-01-01").await.status, Status::Published);
    // Two of four published rows deleted: 50% > 30%.
    f.batch(
        "2024-01-02",
        &[
            "1,DE,a@x,gold,pending,2024-01-01T10:00:00,D",
            "2,DE,b@x,gold,pending,2024-01-01T10:00:00,D",
        ],
    );
    let out = f.run("2024-01-02").await;
    assert_eq!(out.status, Status::AuditFailed);
    let rule = out
        .audit_report
        .as_ref()
        .unwrap()
        .rules
        .iter()
        .find(|r| r.name == "few_deletes")
        .unwrap()
        .clone();
    assert!(!rule.passed);
    assert!(
        rule.sample_table.contains("delete") && rule.sample_table.contains("at most 30%"),
        "{}",
        rule.sample_table
    );
    assert_eq!(table(&f.job(), None).await.len(), 4, "nothing published");
    // One delete of four is within the bound.
    f.batch(
        "2024-01-03",
        &["1,DE,a@x,gold,pending,2024-01-01T10:00:00,D"],
    );
    assert_eq!(f.run("2024-01-03").await.status, Status::Published);
}

#[tokio::test]
async fn check_names_every_merge_and_incremental_problem_with_its_line() {
    // Problems of the job file alone.
    let text =
        job_text("  dedupe: latest\n  sequnce_by: updated_at\n", "").replace("mode: merge\n", "");
    let text =
        format!("{text}incremental:\n  cursor: updated_at\n  lookback: soon\n  initial: 0\n");
    let f = MergeFixture::from_text(&text);
    let checked = JobConf::check(&f.conf);
    let all: Vec<String> = checked.problems.iter().map(|p| p.to_string()).collect();
    let joined = all.join("\n");
    assert!(
        joined.contains("sequnce_by") && joined.contains("sequence_by"),
        "{joined}"
    );
    let f = MergeFixture::from_text(
        &job_text(
            "  dedupe: latest\n",
            "incremental:\n  cursor: updated_at\n  lookback: soon\n  initial: 0\n",
        )
        .replace("mode: merge\n", ""),
    );
    let joined: String = JobConf::check(&f.conf)
        .problems
        .iter()
        .map(|p| p.to_string() + "\n")
        .collect();
    for wanted in [
        "merge: only read by `mode: merge`",
        "incremental: needs `mode: merge`",
        "incremental.lookback",
    ] {
        assert!(joined.contains(wanted), "missing `{wanted}` in:\n{joined}");
    }
    assert!(joined.contains("customers.yaml:"), "{joined}");

    // Problems found against the transform's schema: exit 2, with the option's line.
    let f = MergeFixture::new(
        "  dedupe: latest\n  sequence_by: email\n",
        "incremental:\n  cursor: updated_at\n  initial: 7\n",
    );
    f.batch("2024-01-01", DAY1);
    let err = wap::job::check(&f.conf, Some("2024-01-01"), JobOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("incremental.cursor") || text.contains("sequence_by"),
        "{text}"
    );
    let f = MergeFixture::new("  sequence_by: nope\n", "");
    f.batch("2024-01-01", DAY1);
    let err = wap::job::check(&f.conf, Some("2024-01-01"), JobOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let line = job_text("  sequence_by: nope\n", "")
        .lines()
        .position(|l| l.contains("sequence_by"))
        .unwrap()
        + 1;
    assert!(
        err.to_string()
            .contains(&format!("customers.yaml:{line}: merge.sequence_by: `nope`")),
        "{err}"
    );
}

/// The README's Python `wap_key`, extracted from the README itself.
fn readme_python_wap_key() -> String {
    let readme = std::fs::read_to_string(format!("{}/README.md", crate::fixture::REPO)).unwrap();
    let start = readme
        .find("```python\nimport hashlib")
        .expect("README has the Python wap_key");
    let body = &readme[start + "```python\n".len()..];
    body[..body.find("```").unwrap()].to_string()
}

#[tokio::test]
async fn wap_key_equals_the_readme_python_function() {
    // Generated rows with separators, NULLs, empty strings, unicode and numbers.
    let pieces = ["a", "-", "b-c", "", "|", "ü", "a\u{0}b", "1", "x y"];
    let mut rows: Vec<(Option<String>, Option<String>, Option<i64>)> = Vec::new();
    let mut seed: u64 = 7;
    for _ in 0..300 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = |s: u64| -> Option<String> {
            match s % 11 {
                0 => None,
                n => Some(
                    (0..(n % 3 + 1))
                        .map(|i| pieces[((s >> (8 + i * 4)) % pieces.len() as u64) as usize])
                        .collect(),
                ),
            }
        };
        let n = if seed.is_multiple_of(5) {
            None
        } else {
            Some((seed >> 20) as i64 % 2000 - 1000)
        };
        rows.push((pick(seed >> 3), pick(seed >> 17), n));
    }
    let lit = |v: &Option<String>| match v {
        None => "CAST(NULL AS VARCHAR)".to_string(),
        Some(s) => format!("'{}'", s.replace('\'', "''")),
    };
    let values: Vec<String> = rows
        .iter()
        .map(|(a, b, n)| {
            let n = n.map_or("CAST(NULL AS BIGINT)".into(), |n| {
                format!("CAST({n} AS BIGINT)")
            });
            format!("({}, {}, {n})", lit(a), lit(b))
        })
        .collect();
    let ctx = wap::engine::session(
        &wap::engine::EngineOptions::default(),
        std::sync::Arc::new(object_store::memory::InMemory::new()),
        None,
    )
    .unwrap();
    let sql = format!(
        "SELECT wap_key(a, b, n) AS k, row_number() OVER () AS i FROM (VALUES {}) AS t(a, b, n)",
        values.join(", ")
    );
    let mut ours = Vec::new();
    let df = ctx
        .sql(&format!("SELECT k FROM ({sql}) ORDER BY i"))
        .await
        .unwrap();
    for b in df.collect().await.unwrap() {
        let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let c = c
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        ours.extend((0..c.len()).map(|i| c.value(i).to_string()));
    }
    let input: Vec<serde_json::Value> = rows
        .iter()
        .map(|(a, b, n)| serde_json::json!([a, b, n]))
        .collect();
    let script = format!(
        "{}\nimport json, sys\nfor row in json.load(sys.stdin):\n    print(wap_key(*row))\n",
        readme_python_wap_key()
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let theirs: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ours.len(), rows.len());
    assert_eq!(ours, theirs);
    let distinct: std::collections::BTreeSet<_> = ours.iter().collect();
    let distinct_rows: std::collections::BTreeSet<_> = rows.iter().collect();
    assert_eq!(
        distinct.len(),
        distinct_rows.len(),
        "distinct values, distinct keys"
    );
}

#[tokio::test]
async fn transforms_hash_with_sha256_md5_digest_and_wap_key() {
    let text = job_text("", "").replace(
        "SELECT customer_id,",
        "SELECT customer_id, wap_key(customer_id, country) AS customer_sk, \
         encode(sha256(email), 'hex') AS email_sha, md5(email) AS email_md5, \
         encode(digest(email, 'sha512'), 'hex') AS email_sha512,",
    );
    let f = MergeFixture::from_text(&text);
    f.batch("2024-01-01", DAY1);
    let out = f.run("2024-01-01").await;
    assert_eq!(out.status, Status::Published, "{:?}", out.message);
    let job = f.job();
    let df = job
        .query(
            None,
            "SELECT customer_sk, email_sha, email_md5 FROM customers WHERE customer_id = 1",
        )
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
        .unwrap()
        .to_string();
    // sha256("a@x") and md5("a@x"), computed independently (Python's hashlib).
    assert!(
        text.contains("bd39e6feafd837011c64e8a29c3fdffe59f41e1a071b936bbd66b7c31fb390d4"),
        "{text}"
    );
    assert!(text.contains("4895b1d4ed83c6da448e89f72e1103a0"), "{text}");
}

/// Batch rows failing a quarantining rule never reach the table: the rest merges, the held
/// rows are kept under the run's quarantine folder and counted in the report, and the
/// watermark moves past them (they were read). A re-run is unchanged.
#[tokio::test]
async fn quarantined_batch_rows_are_left_out_of_the_merge() {
    let f = incremental_fixture("audits: [../audits/customers.yaml]\n");
    f.rules(
        "customers.yaml",
        "rules:\n  - name: email_present\n    not_null: [email]\n    on_fail: quarantine\n    \
         max_failing_rows: 2\n  - name: tier_known\n    accepted_values: {column: tier, values: \
         [gold, silver, bronze]}\n",
    );
    f.batch("2024-01-01", DAY1);
    assert_eq!(f.run("2024-01-01").await.status, Status::Published);
    // An update without email (held, though it would have deleted nothing), an update of 2, a
    // new key without email (held: never inserted) carrying the greatest cursor.
    f.batch(
        "2024-01-02",
        &[
            "1,DE,,gold,done,2024-01-02T10:00:00,U",
            "2,DE,b@new,silver,done,2024-01-02T10:00:00,U",
            "7,FR,,gold,pending,2024-01-02T12:00:00,I",
        ],
    );
    let out = f.run("2024-01-02").await;
    assert_eq!(out.status, Status::Published, "{:?}", out.message);
    assert_eq!(counts(&out), [0, 1, 0, 0, 0], "only the clean row merged");
    let report = out.audit_report.as_ref().unwrap();
    let held = report.quarantine.as_ref().expect("rows were quarantined");
    assert_eq!(held.rows, 2);
    let rule = report
        .rules
        .iter()
        .find(|r| r.name == "email_present")
        .unwrap();
    assert_eq!(rule.failing_rows, 2);
    assert!(
        rule.sample_table.contains("2024-01-02T12:00:00"),
        "{}",
        rule.sample_table
    );
    assert_eq!(
        out.watermark.as_ref().unwrap().after,
        "2024-01-02T12:00:00",
        "held rows were read: the watermark moves past them"
    );
    let job = f.job();
    let rows = table(&job, None).await;
    assert_eq!(
        rows,
        [
            "1|DE|a@x|gold|pending|2024-01-01T10:00:00",
            "2|DE|b@new|silver|done|2024-01-02T10:00:00",
            "3|FR|c@x|gold|pending|2024-01-01T10:00:00",
            "4|US|d@x|bronze|pending|2024-01-01T10:00:00",
        ]
    );
    // The held rows are there to read, with their control column.
    let folder = f.dir.path().join("lake/customers").join(&held.path);
    let files: Vec<_> = walk_parquet(&folder);
    assert!(!files.is_empty(), "no quarantine files under {folder:?}");
    let mut n = 0;
    for p in files {
        let file = std::fs::File::open(p).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert!(reader.schema().field_with_name("op").is_ok());
        for b in reader.build().unwrap() {
            n += b.unwrap().num_rows();
        }
    }
    assert_eq!(n, 2);

    // Re-read from the new watermark minus the lookback: row 7 is held again, nothing changes.
    let again = f.run("2024-01-02").await;
    assert_eq!(again.status, Status::Unchanged, "{:?}", again.message);

    // Above the threshold the run fails and nothing moves.
    f.batch(
        "2024-01-03",
        &[
            "3,FR,,gold,done,2024-01-03T10:00:00,U",
            "4,US,,gold,done,2024-01-03T10:00:00,U",
            "8,US,,gold,done,2024-01-03T10:00:00,U",
        ],
    );
    let failed = f.run("2024-01-03").await;
    assert_eq!(failed.status, Status::AuditFailed);
    assert_eq!(table(&job, None).await, rows);
    assert_eq!(
        job.show(None).await.unwrap().watermarks["incremental.updated_at"],
        "2024-01-02T12:00:00"
    );
}

fn walk_parquet(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk_parquet(&p));
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

/// gc after merges deletes the batches, the change sets and the replaced files, and keeps every
/// file the retained versions read.
#[tokio::test]
async fn gc_after_merges_keeps_what_retained_versions_read() {
    let f = MergeFixture::new("", "");
    f.batch("2024-01-01", DAY1);
    assert_eq!(f.run("2024-01-01").await.status, Status::Published);
    f.batch(
        "2024-01-02",
        &[
            "1,DE,a@new,gold,pending,2024-01-02T10:00:00,U",
            "3,FR,c@x,gold,pending,2024-01-02T10:00:00,D",
        ],
    );
    assert_eq!(f.run("2024-01-02").await.status, Status::Published);
    let job = f.job();
    let want = table(&job, None).await;
    let staged = |f: &MergeFixture| -> Vec<String> {
        listing(f.dir.path())
            .into_iter()
            .filter_map(|(p, _)| p.strip_prefix("lake/customers/").map(str::to_string))
            .filter(|p| p.starts_with("staging/"))
            .collect()
    };
    assert!(staged(&f).iter().any(|p| p.contains("/_batch/")));
    assert!(staged(&f).iter().any(|p| p.contains("/_changes/")));
    let report = job
        .gc(&wap::gc::GcOptions {
            older_than_seconds: 0,
            keep_versions: Some(1),
            dry_run: false,
            now: chrono::Utc::now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    assert!(!report.deleted.is_empty());
    let left = staged(&f);
    assert!(
        !left
            .iter()
            .any(|p| p.contains("/_batch") || p.contains("/_changes/")),
        "{left:?}"
    );
    let current = job.show_files(None).await.unwrap();
    let referenced: std::collections::BTreeSet<String> =
        current.files().map(|x| x.path.clone()).collect();
    for p in &left {
        assert!(
            referenced.contains(p) || p.contains("_wap-files-"),
            "gc left {p}, which no retained version reads"
        );
    }
    assert_eq!(table(&job, None).await, want);
}

/// A table first built in overwrite mode with key `[customer_id]` has key ranges of one column;
/// a merge keyed `[country, customer_id]` cannot use them, but since the partition column is in
/// its key, a batch key can only sit in the batch's own partitions: the others are not read.
#[tokio::test]
async fn a_key_with_the_partition_columns_reads_only_the_batch_partitions() {
    let overwrite = "name: customers\n\
         table: ../lake/customers\n\
         partition_by: [country]\n\
         key: [customer_id]\n\
         source:\n  format: csv\n  path: ../data/{date}/\n\
         transform: |\n  SELECT customer_id, country, email, tier, status, \
         CAST(updated_at AS TIMESTAMP) AS updated_at FROM source\n";
    let f = MergeFixture::from_text(overwrite);
    f.batch("2024-01-01", DAY1);
    f.run("2024-01-01").await;
    let merge = job_text("", "").replace("key: [customer_id]", "key: [country, customer_id]");
    assert!(merge.contains("key: [country, customer_id]"));
    std::fs::write(&f.conf, merge).unwrap();
    f.batch(
        "2024-01-02",
        &[
            "2,DE,b@y,silver,pending,2024-01-02T10:00:00,U",
            "5,DE,e@x,gold,pending,2024-01-02T10:00:00,I",
        ],
    );
    let rec = crate::store::RecordingStore::new(f.table_store());
    let out = f
        .job_on(rec.clone())
        .run("2024-01-02", Mode::Publish)
        .await
        .unwrap();
    assert_eq!(out.status, Status::Published);
    assert_eq!(counts(&out), [1, 1, 0, 0, 0]);
    let data_reads: Vec<String> = rec
        .requests()
        .into_iter()
        .filter(|r| r.op.starts_with("get") && r.path.ends_with(".parquet"))
        .map(|r| r.path)
        .collect();
    assert!(
        data_reads.iter().any(|p| p.contains("country=DE")),
        "the batch's partition is read: {data_reads:?}"
    );
    assert!(
        data_reads
            .iter()
            .all(|p| !p.contains("country=FR") && !p.contains("country=US")),
        "partitions outside the batch are not read: {data_reads:?}"
    );
    assert_eq!(
        table(&f.job(), None).await,
        [
            "1|DE|a@x|gold|pending|2024-01-01T10:00:00",
            "2|DE|b@y|silver|pending|2024-01-02T10:00:00",
            "3|FR|c@x|gold|pending|2024-01-01T10:00:00",
            "4|US|d@x|bronze|pending|2024-01-01T10:00:00",
            "5|DE|e@x|gold|pending|2024-01-02T10:00:00",
        ]
    );
}
