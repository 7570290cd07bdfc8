# Shared by bench/run.sh and bench/merge.sh (sourced): the cache folder, the TPC-H data and the
# peers' virtualenv.
#
#   bench_data SF   generates lineitem at scale factor SF as Parquet with tpchgen-cli
#                   (installed with `cargo install` if missing) into $cache/tpch-sf<SF>
#   bench_venv      creates $cache/venv with duckdb, deltalake, polars and pyarrow (pinned)
#   bench_csv SF    the same lineitem rows as CSV (with a header) into $cache/tpch-sf<SF>-csv
cache="${WAP_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wap-bench}"
venv="$cache/venv"
mkdir -p "$cache"

bench_data() {
  local sf="$1" data="$cache/tpch-sf$1"
  if ! command -v tpchgen-cli >/dev/null 2>&1; then
    echo "bench: installing tpchgen-cli (cargo install)" >&2
    cargo install tpchgen-cli --locked --version 4.0.0
  fi
  if [ ! -f "$data/.done" ]; then
    echo "bench: generating lineitem SF$sf into $data" >&2
    rm -rf "$data" && mkdir -p "$data"
    tpchgen-cli parquet --scale-factor "$sf" --tables lineitem --output-dir "$data"
    touch "$data/.done"
  fi
}

bench_venv() {
  if ! "$venv/bin/python" -c "import duckdb, deltalake, polars, pyarrow" 2>/dev/null; then
    echo "bench: creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      duckdb==2.0.0 deltalake==1.6.6 polars==2.1.0 pyarrow==26.0.1
  fi
}

bench_csv() {
  local sf="$1" csv="$cache/tpch-sf$1-csv"
  if [ ! -f "$csv/.done" ]; then
    echo "bench: writing lineitem SF$sf as CSV into $csv" >&2
    rm -rf "$csv" && mkdir -p "$csv"
    "$venv/bin/python" -c "import duckdb, sys; duckdb.connect().execute(
        f\"COPY (SELECT * FROM read_parquet('{sys.argv[1]}/lineitem*.parquet')) TO '{sys.argv[2]}/lineitem.csv' (HEADER)\")" \
      "$cache/tpch-sf$sf" "$csv"
    touch "$csv/.done"
  fi
}
