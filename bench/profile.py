"""Where a `wap run` spends its CPU time, by function family.

    python3 bench/profile.py --wap target/release/wap --conf target/bench/conf/lineitem-date_trunc-parquet.yaml
        [--freq 400] [--keep perf.data]

Runs the job once under `perf record -e cpu-clock --call-graph dwarf` (a software clock: this
machine has no hardware counters; the release build's `.eh_frame` is enough to unwind), into a
fresh table, then classifies every sample by the first frame, from the leaf up, that belongs
to a family of FAMILIES: a `memcpy` under the Parquet reader counts as decoding, under the
bucket builder as bucketing; allocator and runtime frames are charged to the family above
them (and shown as "of which"). Prints each family's share of the samples and of the CPU seconds,
the top functions of each family, the run's own phase timings (plan, write, audit, publish),
and the samples of each thread group (tokio workers, the blocking pool, the main thread).
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# (family, regex over a demangled frame), first match from the leaf up wins.
FAMILIES = [
    ("hashing (sha256 of written bytes)", r"sha2::|Sha256|sha256"),
    ("compression (snappy, writing)", r"snap::compress|snap::encode|snappy.*compress|lz4_flex::block::compress|zstd.*compress"),
    ("decompression (snappy, reading)", r"snap::decompress|snap::decode|lz4_flex::block::decompress|zstd.*decompress"),
    ("audit", r"wap::audit::"),
    ("sorting", r"arrow_row::|RowConverter|lexsort|sort_unstable|sort_by|slice::sort|merge_sort|quicksort|SortExec|sorts::|bucket::sort|Emitter|sort_bucket|wap::write::bucket::sorted"),
    ("bucketing (copy rows into partition buckets)", r"wap::write::builder|BatchBuilder|wap::write::bucket|interleave|arrow_select::take|row_hash|RowHash"),
    ("expression evaluation", r"datafusion_functions::|datafusion_physical_expr::|wap::engine::date|ToChar|DateCast|arrow_cast::(?!parse)|ProjectionExec|arrow_arith::|arrow_string::|chrono::format"),
    ("encoding (Parquet writer)", r"parquet::arrow::arrow_writer|parquet::column::writer|parquet::encodings::encoding|parquet::file::writer|parquet::file::metadata::writer|parquet::arrow::async_writer|parquet::data_type::private::.*put|parquet::file::statistics|parquet::util::bit_util::BitWriter|parquet::encodings::rle::RleEncoder|wap::write::stats|plain_columns|distinct_hashes|writer_properties|thrift.*write|KeyStorage|Interner|DictEncoder|parquet::arrow::arrow_writer::byte_array"),
    ("decoding (source reader)", r"parquet::arrow::array_reader|parquet::arrow::arrow_reader|parquet::arrow::async_reader|parquet::column::reader|parquet::encodings::decoding|parquet::arrow::buffer|parquet::arrow::record_reader|parquet::encodings::rle::RleDecoder|parquet::util::bit_util::BitReader|parquet::file::serialized_reader|parquet::arrow::decoder|arrow_csv::|arrow_cast::parse|csv_core::|csv::|lexical|datafusion_datasource|datafusion_datasource_parquet|datafusion_datasource_csv|arrow_json::"),
    ("I/O (files, object store, syscalls)", r"object_store::|tokio::fs|std::fs|__libc_write|__libc_read|pwrite|pread|sys_write|sys_read|vfs_write|vfs_read|ksys_|ext4_|filemap_|copy_page_to_iter|copy_page_from_iter|generic_perform_write|do_iter_write|xfs_"),
    ("memory (allocator, page faults, zeroing)", r"malloc|free|realloc|calloc|_int_|mmap|munmap|page_fault|do_anonymous_page|clear_page|alloc_pages|__memset|memset|MutableBuffer::reallocate|MutableBuffer::with_capacity|arrow_buffer::buffer::mutable::MutableBuffer::extend_zeros"),
    ("runtime (tokio, scheduling, channels)", r"tokio::|futures_util::|crossbeam|parking_lot|std::sync::|__schedule|schedule|futex|entry_SYSCALL|syscall_exit|finish_task_switch"),
]
COMPILED = [(name, re.compile(pat)) for name, pat in FAMILIES]
OTHER = "other (unclassified)"
# Families that say how, not what: a sample in one is charged to the first family above it
# (an allocation while bucketing is bucketing), and only kept as its own without one.
GENERIC = {"memory (allocator, page faults, zeroing)", "runtime (tokio, scheduling, channels)"}


def family_of(frame):
    for name, pat in COMPILED:
        if pat.search(frame):
            return name
    return None


def classify(frames):
    """(family, generic family on the way or None, the frame that decided the family) of a
    sample whose frames go from the leaf up."""
    generic, first = None, None
    for frame in frames:
        name = family_of(frame)
        if name is None:
            continue
        if name in GENERIC:
            if generic is None:
                generic, first = name, frame
            continue
        return name, generic, frame
    if generic is not None:
        return generic, None, first
    return OTHER, None, frames[0] if frames else "?"


def short(frame):
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    frame = re.sub(r"<[^<>]*>", "<>", frame)
    return frame[:110]


def parse(script):
    """Yields (comm, frames from the leaf up) of every sample in `perf script` output."""
    comm, frames = None, []
    for line in script.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
            continue
        if comm is None:
            comm = line.split()[0]
            continue
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            sym = re.sub(r"\s+\([^)]*\)$", "", parts[1])
            frames.append(sym)
    if comm is not None:
        yield comm, frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wap", default="target/release/wap")
    ap.add_argument("--conf", required=True)
    ap.add_argument("--date", default="1998-12-31")
    ap.add_argument("--table", help="the conf's table folder, emptied first")
    ap.add_argument("--freq", type=int, default=400)
    ap.add_argument("--keep", help="keep perf.data here")
    ap.add_argument("--top", type=int, default=4)
    args = ap.parse_args()
    if args.table:
        shutil.rmtree(args.table, ignore_errors=True)
    tmp = tempfile.mkdtemp()
    data = args.keep or os.path.join(tmp, "perf.data")
    rec = subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.freq), "--call-graph",
         "dwarf,16384", "-o", data, "--", args.wap, "run", "--conf", args.conf, "--date",
         args.date, "--json"], capture_output=True, text=True)
    if rec.returncode != 0:
        sys.exit(f"perf record / wap run failed ({rec.returncode}):\n{rec.stdout}\n{rec.stderr}")
    out = json.loads(rec.stdout)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym",
                             "--no-inline"], capture_output=True, text=True, check=True).stdout
    families = collections.Counter()
    overlay = collections.defaultdict(collections.Counter)
    tops = collections.defaultdict(collections.Counter)
    threads = collections.Counter()
    total = 0
    for comm, frames in parse(script):
        total += 1
        fam, generic, frame = classify(frames)
        families[fam] += 1
        if generic:
            overlay[fam][generic] += 1
        tops[fam][short(frame)] += 1
        threads[re.sub(r"[-_]?\d+$", "", comm)] += 1
    if total == 0:
        sys.exit("no samples")
    seconds = total / args.freq
    print(f"status {out['status']}, rows {out['rows']}, timings (ms) {out['timings']}")
    print(f"{total} samples at {args.freq} Hz: {seconds:.2f} CPU s")
    for fam, n in families.most_common():
        print(f"{100 * n / total:5.1f}%  {n / args.freq:6.2f} s  {fam}")
        for g, m in overlay[fam].most_common():
            print(f"          {100 * m / total:5.1f}%  of which {g.split(' (')[0]}")
        for frame, m in tops[fam].most_common(args.top):
            print(f"          {100 * m / total:5.1f}%  {frame}")
    print("threads: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.most_common()))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
