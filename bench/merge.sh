#!/usr/bin/env bash
# The merge benchmark: `wap run` in merge mode against delta-rs merge on TPC-H lineitem.
#
#   bench/merge.sh [SF ...]     (default: 1 10; delta-rs runs at the smallest)
#
# Generates the data and the virtualenv as bench/run.sh does (bench/setup.sh), builds wap in
# release mode, then runs bench/merge.py: WAP_BENCH_RUNS rounds (default 3), tools and scale
# factors alternating, each run from a fresh copy of its base table in a fresh process.
set -euo pipefail
cd "$(dirname "$0")/.."
sfs=("$@")
[ ${#sfs[@]} -gt 0 ] || sfs=(1 10)
. bench/setup.sh
mkdir -p target/bench/merge
for sf in "${sfs[@]}"; do bench_data "$sf"; done
bench_venv
cargo build --release --bin wap
args=()
for sf in "${sfs[@]}"; do args+=(--sf "$sf"); done
"$venv/bin/python" bench/merge.py --wap target/release/wap --python "$venv/bin/python" \
  --cache "$cache" "${args[@]}" --runs "${WAP_BENCH_RUNS:-3}"
