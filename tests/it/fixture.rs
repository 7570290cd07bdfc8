//! A job in a temporary folder: the shipped `conf/orders.yaml` and `audits/orders.yaml`, with
//! source data written by each test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use object_store::ObjectStore;
use tempfile::TempDir;
use wap::conf::JobConf;
use wap::job::{Job, JobOptions};
use wap::store::Location;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub struct Fixture {
    pub dir: TempDir,
    pub conf: PathBuf,
}

/// One order row: (order_id, customer_id, amount, status).
pub type Order<'a> = (i64, i64, &'a str, &'a str);

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["conf", "audits", "data/orders"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        for f in ["conf/orders.yaml", "audits/orders.yaml"] {
            std::fs::copy(Path::new(REPO).join(f), dir.path().join(f)).unwrap();
        }
        let conf = dir.path().join("conf/orders.yaml");
        Fixture { dir, conf }
    }

    /// Writes the source CSV of `date`.
    pub fn orders(&self, date: &str, rows: &[Order]) {
        let mut csv = String::from("order_id,customer_id,amount,status,order_ts\n");
        for (i, (id, cust, amount, status)) in rows.iter().enumerate() {
            csv.push_str(&format!(
                "{id},{cust},{amount},{status},{date}T{:02}:00:00\n",
                i % 24
            ));
        }
        self.raw(date, "orders.csv", &csv);
    }

    /// Writes a raw source file for `date`.
    pub fn raw(&self, date: &str, name: &str, text: &str) {
        let p = self.dir.path().join("data/orders").join(date).join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Replaces text in the job file.
    pub fn edit_conf(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.conf).unwrap();
        assert!(text.contains(from), "conf has no `{from}`");
        std::fs::write(&self.conf, text.replace(from, to)).unwrap();
    }

    pub fn table_dir(&self) -> PathBuf {
        self.dir.path().join("lake/orders")
    }

    pub fn job(&self) -> Job {
        self.job_with(JobOptions::default())
    }

    pub fn job_with(&self, options: JobOptions) -> Job {
        Job::open(JobConf::load(&self.conf).unwrap(), options).unwrap()
    }

    /// The table's store, unwrapped.
    pub fn table_store(&self) -> Arc<dyn ObjectStore> {
        std::fs::create_dir_all(self.table_dir()).unwrap();
        Location::parse(&self.table_dir().display().to_string(), &Default::default())
            .unwrap()
            .scoped()
            .unwrap()
    }

    /// A job whose table store is `store`.
    pub fn job_on(&self, store: Arc<dyn ObjectStore>) -> Job {
        Job::with_store(
            JobConf::load(&self.conf).unwrap(),
            store,
            JobOptions::default(),
        )
    }

    /// Every file under the table folder with its bytes' length and modification time.
    pub fn listing(&self) -> BTreeMap<String, (u64, std::time::SystemTime)> {
        let mut out = BTreeMap::new();
        let root = self.table_dir();
        if root.exists() {
            walk(&root, &root, &mut out);
        }
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, std::time::SystemTime)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let m = e.metadata().unwrap();
            out.insert(
                p.strip_prefix(root).unwrap().display().to_string(),
                (m.len(), m.modified().unwrap()),
            );
        }
    }
}

/// Runs `sql` over a version of the job's table and renders the result as a text table.
pub async fn query(job: &Job, version: Option<u64>, sql: &str) -> String {
    let df = job.query(version, sql).await.unwrap();
    let batches = df.collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The rows of the table's current version, sorted, as `order_id|amount|status|order_date`.
pub async fn rows(job: &Job, version: Option<u64>) -> Vec<String> {
    let df = job
        .query(
            version,
            "SELECT CAST(order_id AS VARCHAR) || '|' || CAST(amount AS VARCHAR) || '|' || status || '|' || CAST(order_date AS VARCHAR) AS r FROM orders ORDER BY order_id",
        )
        .await
        .unwrap();
    let batches = df.collect().await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let col = b.column(0);
        for i in 0..b.num_rows() {
            out.push(arrow::util::display::array_value_to_string(col, i).unwrap());
        }
    }
    out
}
