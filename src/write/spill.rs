//! The bucket sort's spill files: Arrow IPC streams in DataFusion's temporary files (its disk
//! manager: the configured folders, the disk limit and any other backend), written through one
//! large buffer and mapped back whole.
//!
//! DataFusion's own spill writer hands the file every piece of a batch as it is encoded (a
//! marker, the header, then each buffer and its padding: about a hundred writes for a batch of
//! lineitem), and its reader copies the file through an async stream of 128 KiB chunks into a
//! growing buffer. Here a spill is written in 1 MiB writes and mapped back whole, the batches then
//! slices of the mapped file. One file takes all the spills of a bucket from one input, one after
//! another ([`Appending`]): creating and deleting a file costs the file system more than the
//! writes of a small spill. The format is the same IPC stream, so DataFusion's spilling sort
//! reads these files as its own.

use std::io::Write;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::FileDecoder;
use arrow::ipc::writer::StreamWriter;
use arrow::ipc::{Block, MessageHeader};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SpillFile, SpillWriter};
use futures::StreamExt;

/// Bytes per write to a spill file.
const WRITE_BYTES: usize = 1 << 20;

/// A spill file open for more batches: one IPC stream, appended to spill after spill and ended
/// by [`Appending::finish`]. Between spills it holds no buffer, only the stream's state.
pub(super) struct Appending {
    file: Arc<dyn SpillFile>,
    writer: StreamWriter<Chunked>,
}

impl Appending {
    /// A new spill file for batches of `schema`; `what` names it in errors.
    pub(super) fn new(env: &RuntimeEnv, schema: &SchemaRef, what: &str) -> DfResult<Self> {
        let file = env.disk_manager.create_tmp_file(what)?;
        let sink = Chunked {
            file: file.open_writer()?,
            buffer: Vec::new(),
        };
        let writer = StreamWriter::try_new(sink, schema)?;
        Ok(Appending { file, writer })
    }

    /// Writes `batches` to the file, then lets the write buffer go.
    pub(super) fn append(&mut self, batches: &[RecordBatch]) -> DfResult<()> {
        for batch in batches {
            self.writer.write(batch)?;
        }
        self.writer.flush()?;
        self.writer.get_mut().buffer = Vec::new();
        Ok(())
    }

    /// Ends the stream: the file, readable by [`read`].
    pub(super) fn finish(mut self) -> DfResult<Arc<dyn SpillFile>> {
        self.writer.finish()?;
        let mut sink = self.writer.into_inner()?;
        sink.flush()?;
        sink.file.finish()?;
        Ok(self.file)
    }
}

/// Writes to a spill file in writes of [`WRITE_BYTES`] (larger pieces go straight through).
struct Chunked {
    file: Box<dyn SpillWriter>,
    buffer: Vec<u8>,
}

impl Chunked {
    fn write_buffer(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.file.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }
}

impl Write for Chunked {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() + data.len() > WRITE_BYTES {
            self.write_buffer()?;
        }
        if data.len() >= WRITE_BYTES {
            self.file.write_all(data)?;
        } else {
            if self.buffer.capacity() == 0 {
                self.buffer.reserve_exact(WRITE_BYTES);
            }
            self.buffer.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_buffer()?;
        self.file.flush()
    }
}

/// Writes `batches` (of `schema`) to a new spill file; `what` names it in errors.
#[cfg(test)]
fn write(
    env: &RuntimeEnv,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    what: &str,
) -> DfResult<Arc<dyn SpillFile>> {
    let mut file = Appending::new(env, schema, what)?;
    file.append(batches)?;
    file.finish()
}

/// The batches of a spill file written by [`write`] or [`Appending`], in order.
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
///
/// Walked message by message here and decoded by arrow's file decoder, not its stream decoder:
/// the stream decoder (arrow-ipc 59 and 60) validates every array it decodes whatever
/// `with_skip_validation` says (it passes the flag on for dictionaries only), a pass over every
/// byte spilled (offsets one by one, UTF-8) for arrays this process wrote.
fn decode(buffer: Buffer) -> DfResult<Vec<RecordBatch>> {
    let bad = |what: String| DataFusionError::Execution(format!("spill file: {what}"));
    let mut decoder: Option<FileDecoder> = None;
    let mut batches = Vec::new();
    let mut at = 0usize;
    loop {
        let prefix = buffer
            .get(at..at + 8)
            .ok_or_else(|| bad(format!("no message at byte {at}")))?;
        if prefix[..4] != END[..4] {
            return Err(bad(format!("no continuation marker at byte {at}")));
        }
        let meta = i32::from_le_bytes(prefix[4..8].try_into().expect("4 bytes"));
        let meta = usize::try_from(meta).map_err(|_| bad(format!("length {meta} at byte {at}")))?;
        if meta == 0 {
            if at + 8 != buffer.len() {
                return Err(bad(format!("end marker at byte {at}, before the end")));
            }
            break;
        }
        let header = buffer
            .get(at + 8..at + 8 + meta)
            .ok_or_else(|| bad(format!("message at byte {at} cut short")))?;
        let message = arrow::ipc::root_as_message(header)
            .map_err(|e| bad(format!("message at byte {at}: {e}")))?;
        let body = usize::try_from(message.bodyLength())
            .map_err(|_| bad(format!("body length at byte {at}")))?;
        let len = 8 + meta + body;
        if at + len > buffer.len() {
            return Err(bad(format!("message at byte {at} cut short")));
        }
        let block = Block::new(at as i64, (8 + meta) as i32, body as i64);
        let data = buffer.slice_with_length(at, len);
        match (message.header_type(), &mut decoder) {
            (MessageHeader::Schema, None) => {
                let schema = message
                    .header_as_schema()
                    .ok_or_else(|| bad(format!("schema at byte {at}")))?;
                let schema = Arc::new(arrow::ipc::convert::fb_to_schema(schema));
                // SAFETY: a spill file holds what [`Appending`] encoded of valid batches, in
                // this process, and ends with its end marker (checked): its arrays need no
                // second validation. DataFusion reads its own spill files the same way.
                decoder = Some(unsafe {
                    FileDecoder::new(schema, message.version()).with_skip_validation(true)
                });
            }
            (MessageHeader::RecordBatch, Some(decoder)) => {
                if let Some(batch) = decoder.read_record_batch(&block, &data)? {
                    batches.push(batch);
                }
            }
            (MessageHeader::DictionaryBatch, Some(decoder)) => {
                decoder.read_dictionary(&block, &data)?;
            }
            (header, _) => {
                return Err(bad(format!("unexpected {header:?} message at byte {at}")));
            }
        }
        at += len;
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::reader::StreamDecoder;
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

    #[tokio::test]
    async fn spills_appended_to_one_file_read_back_in_order_by_both_readers() {
        let env = Arc::new(RuntimeEnvBuilder::new().build().unwrap());
        let (schema, batches) = batches();
        let mut file = Appending::new(&env, &schema, "test").unwrap();
        // Three spills: two batches, none, the rest (one larger than a write).
        let big = arrow::compute::concat_batches(&schema, &batches).unwrap();
        let big = arrow::compute::concat_batches(&schema, [&big, &big, &big, &big]).unwrap();
        assert!(big.get_array_memory_size() > WRITE_BYTES);
        file.append(&batches[..2]).unwrap();
        file.append(&[]).unwrap();
        file.append(&batches[2..]).unwrap();
        file.append(std::slice::from_ref(&big)).unwrap();
        let file = file.finish().unwrap();
        let mut expected = batches.clone();
        expected.push(big);
        assert_eq!(read(Arc::clone(&file)).await.unwrap(), expected);
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
        assert_eq!(read_by_them, expected);
    }

    /// Decoding takes a spill's arrays as written: a string that is not UTF-8 (which no spill
    /// holds: a stand-in for any check) comes back as it went in, where a validating decoder
    /// (arrow's stream decoder, flag or not) refuses it.
    #[tokio::test]
    async fn spilled_arrays_are_not_validated_again() {
        let env = Arc::new(RuntimeEnvBuilder::new().build().unwrap());
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        // SAFETY: the test's point is an array the decoder would refuse; it is only compared
        // by its bytes.
        let invalid = unsafe {
            StringArray::new_unchecked(
                arrow::buffer::OffsetBuffer::new(vec![0i32, 2, 3].into()),
                Buffer::from(vec![0xffu8, 0xfe, b'a']),
                None,
            )
        };
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(invalid)]).unwrap();
        let file = write(&env, &schema, std::slice::from_ref(&batch), "test").unwrap();
        let got = read(Arc::clone(&file)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].column(0).to_data(), batch.column(0).to_data());
        let bytes = std::fs::read(file.path().unwrap()).unwrap();
        let mut buffer = Buffer::from_vec(bytes);
        let mut validating = unsafe { StreamDecoder::new().with_skip_validation(true) };
        let refused =
            std::iter::from_fn(|| (!buffer.is_empty()).then(|| validating.decode(&mut buffer)))
                .find_map(Result::err);
        assert!(refused.is_some(), "the stream decoder validates");
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
