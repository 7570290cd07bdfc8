//! The bucket sort's spill files: Arrow IPC streams in DataFusion's temporary files (its disk
//! manager: the configured folders, the disk limit and any other backend), written through one
//! large buffer and mapped back whole.
//!
//! DataFusion's own spill writer hands the file every piece of a batch as it is encoded (a
//! marker, the header, then each buffer and its padding: about a hundred writes for a batch of
//! lineitem), and its reader copies the file through an async stream of 128 KiB chunks into a
//! growing buffer. Here a spill is written in 1 MiB writes and mapped back whole, the batches then
//! slices of the mapped file. The format is the same IPC stream, so DataFusion's spilling sort
//! reads these files as its own.

use std::io::BufWriter;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SpillFile;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::StreamExt;

/// Bytes per write to a spill file.
const WRITE_BYTES: usize = 1 << 20;

/// Writes `batches` (of `schema`) to a new spill file; `what` names it in errors.
pub(super) fn write(
    env: &RuntimeEnv,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    what: &str,
) -> DfResult<Arc<dyn SpillFile>> {
    let file = env.disk_manager.create_tmp_file(what)?;
    let buffered = BufWriter::with_capacity(WRITE_BYTES, file.open_writer()?);
    let mut writer = StreamWriter::try_new(buffered, schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let mut inner = writer
        .into_inner()?
        .into_inner()
        .map_err(|e| DataFusionError::IoError(e.into_error()))?;
    inner.finish()?;
    Ok(file)
}

/// The batches of a spill file written by [`write`], in order.
pub(super) async fn read(file: Arc<dyn SpillFile>) -> DfResult<Vec<RecordBatch>> {
    let bytes = match file.path() {
        Some(path) => {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || map(&path))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??
        }
        None => {
            let mut bytes = Vec::with_capacity(file.size().unwrap_or(0) as usize);
            let mut chunks = file.read_stream()?;
            while let Some(chunk) = chunks.next().await {
                bytes.extend_from_slice(&chunk?);
            }
            Buffer::from_vec(bytes)
        }
    };
    // A stream cut at a batch's end would decode without error, its last batches missing.
    if !bytes.ends_with(&END) {
        return Err(DataFusionError::Execution(format!(
            "spill file {} ends before its end-of-stream marker ({} bytes): cut short; was the \
             temporary folder cleaned or the disk full while the job ran? Run the job again",
            file.path()
                .map_or("(no path)".into(), |p| p.display().to_string()),
            bytes.len()
        )));
    }
    decode(bytes)
}

/// The bytes of the spill file at `path`, mapped into memory rather than read: its pages are
/// in the page cache (it was just written), and a read copies them into fresh memory, whose
/// page faults and zeroing cost about three times the mapping (SF10 lineitem's 8.4 GB of spills:
/// 7.2 s read, 2.2 s mapped; see bench/HISTORY.md). The batches decoded from it are slices of the mapping, which lives until
/// the last of them is dropped; the file may be deleted meanwhile (the mapping keeps its pages).
fn map(path: &std::path::Path) -> std::io::Result<Buffer> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(Buffer::from_vec(Vec::<u8>::new()));
    }
    // SAFETY: a spill file is this process's own temporary file, written whole before it is
    // read and never written again: the mapped bytes do not change under the batches. (A file cut by someone else after the end marker is checked would fault on
    // access rather than read garbage.)
    let mapped = unsafe { memmap2::MmapOptions::new().populate().map(&f)? };
    Ok(Buffer::from(bytes::Bytes::from_owner(mapped)))
}

/// How an IPC stream ends: the continuation marker and a zero length.
const END: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// The batches of a whole IPC stream: slices of `buffer`, not copies.
fn decode(mut buffer: Buffer) -> DfResult<Vec<RecordBatch>> {
    // SAFETY: a spill file holds what [`write`] encoded of valid batches, in this process, and
    // ends with its end marker (checked): its arrays need no second validation (offsets one by
    // one, UTF-8), which would cost a pass over every byte spilled. DataFusion reads its own
    // spill files the same way.
    let mut decoder = unsafe { StreamDecoder::new().with_skip_validation(true) };
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer)? {
            batches.push(batch);
        }
    }
    decoder.finish()?;
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;

    fn batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batches = (0..5)
            .map(|b| {
                let n: usize = 1000 + 700 * b;
                let k: ArrayRef = Arc::new(Int64Array::from_iter(
                    (0..n).map(|i| (i % 13 != 0).then_some((i * b) as i64)),
                ));
                let s: ArrayRef = Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 7 != 0).then(|| "x".repeat(i % 50))),
                ));
                RecordBatch::try_new(Arc::clone(&schema), vec![k, s]).unwrap()
            })
            .collect();
        (schema, batches)
    }

    #[tokio::test]
    async fn a_spill_reads_back_as_written_by_this_reader_and_datafusions() {
        let env = Arc::new(RuntimeEnvBuilder::new().build().unwrap());
        let (schema, batches) = batches();
        let file = write(&env, &schema, &batches, "test").unwrap();
        assert!(file.size().unwrap() > 0);
        let got = read(Arc::clone(&file)).await.unwrap();
        assert_eq!(got, batches);
        // DataFusion's reader (its spilling sort reads these files).
        let metrics = datafusion::physical_plan::metrics::SpillMetrics::new(
            &datafusion::physical_plan::metrics::ExecutionPlanMetricsSet::new(),
            0,
        );
        let manager = datafusion::physical_plan::spill::SpillManager::new(
            Arc::clone(&env),
            metrics,
            Arc::clone(&schema),
        );
        let mut theirs = manager.read_spill_as_stream(file, None).unwrap();
        let mut read_by_them = Vec::new();
        while let Some(batch) = theirs.next().await {
            read_by_them.push(batch.unwrap());
        }
        assert_eq!(read_by_them, batches);
    }

    /// The test batches written to a new spill file, with the file's path.
    fn spilled() -> (Vec<RecordBatch>, Arc<dyn SpillFile>, std::path::PathBuf) {
        let env = Arc::new(RuntimeEnvBuilder::new().build().unwrap());
        let (schema, batches) = batches();
        let file = write(&env, &schema, &batches, "test").unwrap();
        let path = file.path().unwrap().to_owned();
        (batches, file, path)
    }

    #[tokio::test]
    async fn batches_read_back_outlive_their_deleted_file() {
        let (batches, file, path) = spilled();
        let got = read(Arc::clone(&file)).await.unwrap();
        // The last reference to the temporary file: it is deleted, the mapping stays.
        drop(file);
        assert!(!path.exists());
        assert_eq!(got, batches);
    }

    #[tokio::test]
    async fn a_cut_spill_file_is_an_error() {
        let (_, file, path) = spilled();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Without its end marker only (the end of the last batch: the IPC reader would take
        // that for a whole stream), then in the middle.
        for cut in [len - 8, len / 2] {
            f.set_len(cut).unwrap();
            let err = read(Arc::clone(&file)).await.unwrap_err();
            assert!(err.to_string().contains("cut short"), "{err}");
        }
    }
}
