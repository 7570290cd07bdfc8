//! Test support shared by the `unique` paths' tests: staged files and the SQL they must agree
//! with.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::prelude::SessionContext;
use object_store::memory::InMemory;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::file::properties::WriterProperties;

/// Each batch written as one Parquet file (row groups of 100 rows, so that keys cross row
/// groups and batches; `props` adjusts the rest) and registered as table `staged`, in a session
/// with `options`: the session, the store and the files.
pub(super) async fn staged_files(
    batches: &[RecordBatch],
    props: parquet::file::properties::WriterPropertiesBuilder,
    options: &crate::engine::EngineOptions,
) -> (SessionContext, Arc<dyn ObjectStore>, Vec<ObjectMeta>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let props: WriterProperties = props.set_max_row_group_row_count(Some(100)).build();
    let mut metas = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let mut buf = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.clone()))
                .unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        let path = object_store::path::Path::from(format!("staged/part-{i}.parquet"));
        store.put(&path, buf.into()).await.unwrap();
        metas.push(store.head(&path).await.unwrap());
    }
    let ctx = crate::engine::session(options, Arc::clone(&store), None).unwrap();
    let schema = batches.first().expect("at least one file").schema();
    let table = crate::engine::FilesTable::new(
        schema,
        Arc::new(ParquetFormat::default()),
        crate::engine::TABLE_URL,
        metas.clone(),
    )
    .unwrap();
    ctx.register_table("staged", Arc::new(table)).unwrap();
    (ctx, store, metas)
}

/// `(failing rows, duplicated values)` of a `unique` rule over `cols` of `staged`, by its SQL.
pub(super) async fn unique_by_sql(ctx: &SessionContext, cols: &[String]) -> (u64, u64) {
    let q = super::sql::unique_count_query(cols, "staged");
    let batches = ctx.sql(&q).await.unwrap().collect().await.unwrap();
    let b = &batches[0];
    let at = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0) as u64
    };
    (at(0), at(1))
}

/// A deterministic pseudo-random sequence (no clock, no global state).
pub(super) fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}
