#!/usr/bin/env bash
# The performance benchmark: wap against DuckDB, delta-rs and polars on TPC-H lineitem.
#
#   bench/run.sh [SF]          (default SF 1: about 6 million rows, 84 ship-month partitions)
#
# 1. generates lineitem at scale factor SF as Parquet with tpchgen-cli (installed with
#    `cargo install tpchgen-cli` if missing), cached under $WAP_BENCH_CACHE (default
#    ~/.cache/wap-bench);
# 2. creates a Python virtualenv there with duckdb, deltalake, polars and pyarrow (pinned);
# 3. builds wap in release mode;
# 4. runs bench/compare.py: wap (bench/lineitem.yaml) and each peer 3 times, alternating, each
#    in a fresh process under /usr/bin/time -v, then the nightly scenario; prints the table.
# The publish micro-benchmark is separate: `cargo bench --bench publish`.
set -euo pipefail
cd "$(dirname "$0")/.."
sf="${1:-1}"
. bench/setup.sh
mkdir -p target/bench
bench_data "$sf"
ln -sfn "$cache/tpch-sf$sf" target/bench/tpch
bench_venv

cargo build --release --bin wap
"$venv/bin/python" bench/compare.py --sf "$sf" --wap target/release/wap \
  --python "$venv/bin/python" --runs "${WAP_BENCH_RUNS:-3}"
