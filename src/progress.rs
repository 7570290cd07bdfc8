//! How far a run has got: counters the phases bump ([`Progress`]), a source store that counts
//! the bytes read through it ([`CountingStore`]), and their display on stderr ([`Display`]).
//!
//! ```text
//!  write (rows, bytes, partitions) ─┐
//!  audit (rules)                    ├─► Progress (atomics) ─► Display, 10 times a second:
//!  source store (bytes read)       ─┘                          a terminal: indicatif bars
//!                                                              `--progress always` elsewhere:
//!                                                              a plain line now and then
//! ```
//!
//! The counters cost a relaxed atomic add per batch, and nothing when no one displays them
//! (the phases get `None`). Logs share the terminal with the bars through [`LogWriter`], which
//! prints them above the bars instead of through them.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// The phase a run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Plan = 0,
    Write = 1,
    Audit = 2,
    Publish = 3,
    Done = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Plan,
            1 => Phase::Write,
            2 => Phase::Audit,
            3 => Phase::Publish,
            _ => Phase::Done,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Write => "write",
            Phase::Audit => "audit",
            Phase::Publish => "publish",
            Phase::Done => "done",
        }
    }
}

/// Counters of one run (or, shared, of the runs of a backfill: they add up).
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    /// Bytes fetched from the source store.
    pub bytes_in: AtomicU64,
    /// Rows out of the transform (into the partition writers).
    pub rows_in: AtomicU64,
    /// Rows and bytes of Parquet written to staging.
    pub rows_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub partitions_done: AtomicU64,
    /// Known once the transform's rows are all bucketed (0 until then).
    pub partitions_total: AtomicU64,
    pub rules_done: AtomicU64,
    pub rules_total: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub phase: Phase,
    pub bytes_in: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    pub bytes_out: u64,
    pub partitions_done: u64,
    pub partitions_total: u64,
    pub rules_done: u64,
    pub rules_total: u64,
}

impl Progress {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Adds `n` to `counter` (one of this struct's).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            phase: self.phase(),
            bytes_in: get(&self.bytes_in),
            rows_in: get(&self.rows_in),
            rows_out: get(&self.rows_out),
            bytes_out: get(&self.bytes_out),
            partitions_done: get(&self.partitions_done),
            partitions_total: get(&self.partitions_total),
            rules_done: get(&self.rules_done),
            rules_total: get(&self.rules_total),
        }
    }
}

impl Snapshot {
    /// `read 1.2M rows 48.0 MiB · wrote 1.2M rows 20.1 MiB · partitions 3/12 · rules 4/9`:
    /// the parts known so far.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.bytes_in > 0 || self.rows_in > 0 {
            parts.push(format!(
                "read {} rows {}",
                count(self.rows_in),
                size(self.bytes_in)
            ));
        }
        if self.rows_out > 0 {
            parts.push(format!(
                "wrote {} rows {}",
                count(self.rows_out),
                size(self.bytes_out)
            ));
        }
        if self.partitions_total > 0 {
            parts.push(format!(
                "partitions {}/{}",
                self.partitions_done, self.partitions_total
            ));
        }
        if self.rules_total > 0 {
            parts.push(format!("rules {}/{}", self.rules_done, self.rules_total));
        }
        parts.join(" · ")
    }
}

fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}

fn size(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// A source store that adds the bytes of every read to [`Progress::bytes_in`].
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    progress: Arc<Progress>,
}

impl CountingStore {
    pub fn wrap(inner: Arc<dyn ObjectStore>, progress: Arc<Progress>) -> Arc<dyn ObjectStore> {
        Arc::new(CountingStore { inner, progress })
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if !head {
            Progress::add(
                &self.progress.bytes_in,
                result.range.end - result.range.start,
            );
        }
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let got = self.inner.get_ranges(location, ranges).await?;
        Progress::add(
            &self.progress.bytes_in,
            got.iter().map(|b| b.len() as u64).sum(),
        );
        Ok(got)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    /// On a terminal, unless the output is `--json`.
    #[default]
    Auto,
    /// On a terminal as bars; elsewhere as plain lines (no control characters).
    Always,
    Never,
}

/// How progress is shown, decided once from `--progress`, `--json` and stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// indicatif bars on a terminal.
    Bars,
    /// A plain line at each phase and every few seconds (`--progress always` off a terminal).
    Lines,
    Hidden,
}

impl Style {
    pub fn choose(when: When, json: bool, terminal: bool) -> Style {
        match (when, terminal) {
            (When::Never, _) => Style::Hidden,
            (When::Always, true) => Style::Bars,
            (When::Always, false) => Style::Lines,
            (When::Auto, true) if !json => Style::Bars,
            (When::Auto, _) => Style::Hidden,
        }
    }

    /// For stderr as it is now.
    pub fn for_stderr(when: When, json: bool) -> Style {
        // `TERM=dumb` terminals cannot move the cursor: plain lines there.
        let terminal = std::io::stderr().is_terminal();
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        match Style::choose(when, json, terminal) {
            Style::Bars if dumb => Style::Lines,
            s => s,
        }
    }
}

/// The bars on screen, where [`LogWriter`] and [`eprintln_above`] find them.
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Runs `f` (which prints) with the bars taken off the screen, then draws them again below
/// what it printed; just runs it when there are none.
pub fn above<R>(f: impl FnOnce() -> R) -> R {
    let active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match active {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// Writes `line` to stderr above the bars.
pub fn eprintln_above(line: &str) {
    above(|| eprintln!("{line}"));
}

/// Writes `bytes` (another program's output) to stderr above the bars.
pub fn write_above(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    above(|| {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
    });
}

/// A `tracing_subscriber` writer for stderr that suspends the bars while it writes, so a log
/// line never lands in the middle of a bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        above(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// What the display shows of a backfill besides the counters.
#[derive(Debug, Default)]
struct Dates {
    total: u64,
    done: u64,
    running: Vec<String>,
}

/// Progress on stderr while a command runs: [`Display::start`], then [`Display::finish`]
/// before printing the result (the bars leave nothing on screen).
pub struct Display {
    dates: Arc<Mutex<Dates>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    /// Starts showing `progress` for a command (`run`, `audit`, `backfill`); for a backfill,
    /// [`Display::dates`] adds the dates bar. Needs a tokio runtime.
    pub fn start(style: Style, command: &'static str, progress: Arc<Progress>) -> Display {
        let dates = Arc::new(Mutex::new(Dates::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let ticker = match style {
            Style::Hidden => None,
            Style::Bars => Some(tokio::spawn(bars(
                command,
                Arc::clone(&progress),
                Arc::clone(&dates),
                stopped,
            ))),
            Style::Lines => Some(tokio::spawn(lines(
                command,
                progress,
                Arc::clone(&dates),
                stopped,
            ))),
        };
        Display {
            dates,
            stop: Some(stop),
            ticker,
        }
    }

    /// A backfill of `total` dates.
    pub fn dates(&self, total: usize) {
        self.lock().total = total as u64;
    }

    pub fn date_started(&self, date: &str) {
        self.lock().running.push(date.to_string());
    }

    /// A running date is done (staged, for `--atomic`); other dates change nothing.
    pub fn date_done(&self, date: &str) {
        let mut d = self.lock();
        if let Some(i) = d.running.iter().position(|r| r == date) {
            d.running.remove(i);
            d.done += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dates> {
        self.dates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops and clears the display (the last plain line says where it ended).
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        // Dropped without `finish` (an error path): the ticker stops at its next tick and
        // clears its bars.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

const TICK: Duration = Duration::from_millis(100);
/// Between two plain lines when nothing changes phase.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// A display's clock: a tick every [`TICK`] until [`Display::finish`] (or a drop) stops it.
struct Ticks {
    interval: tokio::time::Interval,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Ticks {
    fn new(stopped: tokio::sync::oneshot::Receiver<()>) -> Self {
        Ticks {
            interval: tokio::time::interval(TICK),
            stopped,
        }
    }

    /// Waits for the next tick; true when it is the last (draw once more, then stop).
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => false,
            _ = &mut self.stopped => true,
        }
    }
}

/// The bars: one for the run (phase, a bar over partitions or rules, the counters) and, for a
/// backfill, one above it over dates with the time left.
async fn bars(
    command: &'static str,
    progress: Arc<Progress>,
    dates: Arc<Mutex<Dates>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(multi.clone());
    // `wide_msg`: the message is cut to the terminal's width, so a line never wraps (a wrapped
    // line would leave its first half behind when the bar redraws).
    let run_style = ProgressStyle::with_template(
        "{spinner:.green} {prefix:.bold} {elapsed:>4} [{bar:20.cyan/blue}] {wide_msg}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    // Until the total is known (partitions are counted once the rows are bucketed): no bar.
    let spinner_style =
        ProgressStyle::with_template("{spinner:.green} {prefix:.bold} {elapsed:>4} {wide_msg}")
            .expect("a valid template");
    let dates_style = ProgressStyle::with_template(
        "{prefix:.bold} dates [{bar:20.green/blue}] {pos}/{len}  {elapsed} elapsed, ~{eta} left  {wide_msg}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let mut date_bar: Option<ProgressBar> = None;
    let run_bar = multi.add(
        ProgressBar::new(0)
            .with_style(spinner_style.clone())
            .with_prefix(format!("wap {command}")),
    );
    let mut with_bar = false;
    let mut ticks = Ticks::new(stopped);
    loop {
        let stop = ticks.next().await;
        let s = progress.snapshot();
        let (pos, len) = match s.phase {
            Phase::Audit | Phase::Publish | Phase::Done if s.rules_total > 0 => {
                (s.rules_done, s.rules_total)
            }
            _ => (s.partitions_done, s.partitions_total),
        };
        if (len > 0) != with_bar {
            with_bar = len > 0;
            run_bar.set_style(if with_bar {
                run_style.clone()
            } else {
                spinner_style.clone()
            });
        }
        run_bar.set_length(len.max(pos));
        run_bar.set_position(pos);
        let d = dates.lock().unwrap_or_else(|e| e.into_inner());
        if date_bar.is_none() && d.total > 0 {
            // Known once the backfill has planned its dates: above the counters.
            date_bar = Some(
                multi.insert(
                    0,
                    ProgressBar::new(d.total)
                        .with_style(dates_style.clone())
                        .with_prefix(format!("wap {command}")),
                ),
            );
            run_bar.set_prefix("");
        }
        if let Some(bar) = &date_bar {
            bar.set_length(d.total);
            bar.set_position(d.done);
            bar.set_message(if d.running.is_empty() {
                String::new()
            } else {
                format!("running {}", d.running.join(" "))
            });
            run_bar.set_message(s.describe());
        } else {
            run_bar.set_message(format!("{:<7} {}", s.phase.name(), s.describe()));
        }
        drop(d);
        run_bar.tick();
        if stop {
            break;
        }
    }
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Some(bar) = date_bar {
        bar.finish_and_clear();
    }
    run_bar.finish_and_clear();
    let _ = multi.clear();
}

/// Plain lines for logs: one at each change of phase (or of dates done) and every
/// [`LINE_EVERY`], then one at the end.
async fn lines(
    command: &'static str,
    progress: Arc<Progress>,
    dates: Arc<Mutex<Dates>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let mut last: Option<(Phase, u64)> = None;
    let mut printed = Instant::now();
    let mut ticks = Ticks::new(stopped);
    loop {
        let stop = ticks.next().await;
        let s = progress.snapshot();
        let (total, done) = {
            let d = dates.lock().unwrap_or_else(|e| e.into_inner());
            (d.total, d.done)
        };
        let now = (s.phase, done);
        if stop || last != Some(now) || printed.elapsed() >= LINE_EVERY {
            let what = if total > 0 {
                format!("dates {done}/{total}")
            } else {
                s.phase.name().to_string()
            };
            let mut line = format!(
                "wap {command}: {what} after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let counters = s.describe();
            if !counters.is_empty() {
                line.push_str(&format!("; {counters}"));
            }
            eprintln!("{line}");
            last = Some(now);
            printed = Instant::now();
        }
        if stop {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_shows_bars_only_on_a_terminal_and_never_over_json() {
        assert_eq!(Style::choose(When::Auto, false, true), Style::Bars);
        assert_eq!(Style::choose(When::Auto, true, true), Style::Hidden);
        assert_eq!(Style::choose(When::Auto, false, false), Style::Hidden);
        assert_eq!(Style::choose(When::Always, true, true), Style::Bars);
        assert_eq!(Style::choose(When::Always, false, false), Style::Lines);
        assert_eq!(Style::choose(When::Never, false, true), Style::Hidden);
    }

    #[test]
    fn describe_shows_what_is_known() {
        let p = Progress::default();
        assert_eq!(p.snapshot().describe(), "");
        Progress::add(&p.rows_in, 1_234_567);
        Progress::add(&p.bytes_in, 3 << 20);
        Progress::add(&p.partitions_total, 12);
        Progress::add(&p.partitions_done, 3);
        assert_eq!(
            p.snapshot().describe(),
            "read 1.2M rows 3.00 MiB · partitions 3/12"
        );
        p.set_phase(Phase::Audit);
        Progress::add(&p.rules_total, 9);
        Progress::add(&p.rules_done, 4);
        assert!(p.snapshot().describe().ends_with("rules 4/9"));
        assert_eq!(p.phase(), Phase::Audit);
    }
}
