#!/usr/bin/env bash
# The performance benchmark: wap against DuckDB, delta-rs and polars on TPC-H lineitem.
#
#   bench/run.sh [SF] [--transform all|NAME[,NAME]] [--source parquet|csv|all] [--runs N]
#                [--tools wap,duckdb_copy,polars_sink,duckdb_audit,delta_audit]
#
# (default SF 1: about 6 million rows, 84 ship-month partitions; every variant of
# bench/variants.py, Parquet source, 5 rounds, wap against the bare partitioned writes)
#
# 1. generates lineitem at scale factor SF as Parquet with tpchgen-cli (installed with
#    `cargo install tpchgen-cli` if missing), cached under $WAP_BENCH_CACHE (default
#    ~/.cache/wap-bench);
# 2. creates a Python virtualenv there with duckdb, deltalake, polars and pyarrow (pinned);
# 3. builds wap in release mode;
# 4. runs bench/compare.py: for each variant, wap and each peer once per round, alternating,
#    each in a fresh process under /usr/bin/time -v, then the nightly scenario; prints per
#    variant the walls, peak RSS and wap's ratio to each peer (min, median, max over rounds).
# The publish micro-benchmark is separate: `cargo bench --bench publish`.
set -euo pipefail
cd "$(dirname "$0")/.."
sf="${1:-1}"
shift || true
. bench/setup.sh
mkdir -p target/bench
bench_data "$sf"
ln -sfn "$cache/tpch-sf$sf" target/bench/tpch
bench_venv
source_format=parquet prev=""
for a in "$@"; do
  [ "$prev" = "--source" ] && source_format="$a"
  prev="$a"
done
case "$source_format" in
  *csv*|all)
    bench_csv "$sf"
    ln -sfn "$cache/tpch-sf$sf-csv" target/bench/tpch-csv
    ;;
esac

# WAP=path measures that binary instead (another build, an older commit).
[ -n "${WAP:-}" ] || cargo build --release --bin wap
"$venv/bin/python" bench/compare.py --sf "$sf" --wap "${WAP:-target/release/wap}" \
  --python "$venv/bin/python" --runs "${WAP_BENCH_RUNS:-5}" "$@"
