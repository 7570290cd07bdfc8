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
cache="${WAP_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wap-bench}"
mkdir -p "$cache" target/bench

if ! command -v tpchgen-cli >/dev/null 2>&1; then
  echo "bench: installing tpchgen-cli (cargo install)" >&2
  cargo install tpchgen-cli --locked --version 4.0.0
fi
data="$cache/tpch-sf$sf"
if [ ! -f "$data/.done" ]; then
  echo "bench: generating lineitem SF$sf into $data" >&2
  rm -rf "$data" && mkdir -p "$data"
  tpchgen-cli parquet --scale-factor "$sf" --tables lineitem --output-dir "$data"
  touch "$data/.done"
fi
ln -sfn "$data" target/bench/tpch

venv="$cache/venv"
if ! "$venv/bin/python" -c "import duckdb, deltalake, polars, pyarrow" 2>/dev/null; then
  echo "bench: creating $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    duckdb==2.0.0 deltalake==1.6.6 polars==2.1.0 pyarrow==26.0.1
fi

cargo build --release --bin wap
"$venv/bin/python" bench/compare.py --sf "$sf" --wap target/release/wap \
  --python "$venv/bin/python" --runs "${WAP_BENCH_RUNS:-3}"
