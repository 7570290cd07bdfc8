#!/usr/bin/env bash
# Runs a command with a real S3 server: starts moto (single-threaded, on a free loopback port),
# exports WAP_TEST_S3_ENDPOINT / WAP_TEST_S3_BUCKET and test credentials, runs the command, and
# stops the server. Also installs the real table-format readers the tests compare against
# (pinned, from PyPI, into their own virtualenv: Delta and Iceberg) and exports WAP_TEST_PYTHON.
#
#   scripts/with-s3.sh COMMAND [ARGS...]
#
# To use MinIO instead (docker compose up), set WAP_TEST_S3_ENDPOINT (and AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY) before calling this script: no server is started.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${WAP_TEST_S3_ENDPOINT:-}" ]; then
  venv="${WAP_S3_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wap-s3-venv}"
  if ! "$venv/bin/python" -c "import moto, flask, flask_cors" 2>/dev/null; then
    echo "with-s3.sh: installing moto into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[s3]==5.2.5" flask flask-cors
  fi
  port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log=$(mktemp)
  "$venv/bin/python" scripts/s3_server.py "$port" wap-test >"$log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
  for _ in $(seq 1 100); do
    if grep -q "serving S3" "$log"; then
      break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
      echo "with-s3.sh: the S3 server did not start:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.2
  done
  export WAP_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  export AWS_ACCESS_KEY_ID=wap-test-key AWS_SECRET_ACCESS_KEY=wap-test-secret-0123456789
  echo "with-s3.sh: S3 server (moto) at $WAP_TEST_S3_ENDPOINT, pid $server" >&2
fi
if [ -z "${WAP_TEST_PYTHON:-}" ]; then
  readers="${WAP_READERS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wap-readers-venv}"
  if ! "$readers/bin/python" -c "import deltalake, polars, duckdb, duckdb_extension_delta, duckdb_extension_httpfs, duckdb_extension_iceberg, duckdb_extension_avro, pyiceberg.catalog.sql, sqlalchemy, pgserver, psycopg2" 2>/dev/null; then
    echo "with-s3.sh: installing the Delta and Iceberg readers (and PostgreSQL, for the catalog tests) into $readers" >&2
    python3 -m venv "$readers"
    "$readers/bin/pip" install --quiet --disable-pip-version-check \
      deltalake==1.6.6 polars==2.1.0 pyarrow==26.0.1 duckdb==1.5.5 \
      duckdb-extension-delta==1.5.5 duckdb-extension-httpfs==1.5.5 duckdb-extension-parquet==1.5.5 \
      duckdb-extension-iceberg==1.5.5 duckdb-extension-avro==1.5.5 \
      "pyiceberg[sql-sqlite]==0.12.0" SQLAlchemy==2.1.9 pgserver==0.1.4 psycopg2-binary==2.9.13
  fi
  export WAP_TEST_PYTHON="$readers/bin/python"
fi
export WAP_TEST_S3_BUCKET="${WAP_TEST_S3_BUCKET:-wap-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
"$@"
