"""Reads a Delta table with the real readers and writes what each one read as Parquet.

    python delta_read.py TABLE_URI OUT_DIR VERSION...

VERSION is a Delta version number or `latest`. For each reader (deltalake, polars, duckdb) and
version it writes OUT_DIR/<reader>-<version>.parquet; a reader that fails writes
OUT_DIR/<reader>-<version>.error with the message, so the test can say which one failed.
S3: WAP_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment.
"""
import os
import sys
import traceback

import pyarrow as pa

from common import arrow, duckdb_connection, write_table



def storage_options(uri):
    endpoint = os.environ.get("WAP_TEST_S3_ENDPOINT")
    if not uri.startswith("s3://"):
        return None
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }


def read_deltalake(uri, version):
    import deltalake

    opts = storage_options(uri)
    t = deltalake.DeltaTable(uri, version=version, storage_options=opts)
    return pa.table(t.to_pyarrow_table())


def read_polars(uri, version):
    import polars as pl

    return pl.scan_delta(uri, version=version, storage_options=storage_options(uri)).collect().to_arrow()


def main():
    uri, out = sys.argv[1], sys.argv[2]
    versions = sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    con = duckdb_connection(uri, ["parquet", "httpfs", "delta"])

    def read_duckdb(uri, version):
        arg = "" if version is None else f", version => {int(version)}"
        rel = con.sql(f"SELECT * FROM delta_scan('{uri}'{arg})")
        return arrow(rel)

    readers = {"deltalake": read_deltalake, "polars": read_polars, "duckdb": read_duckdb}
    for v in versions:
        version = None if v == "latest" else int(v)
        for name, read in readers.items():
            try:
                table = read(uri, version)
                write_table(table, f"{out}/{name}-{v}.parquet")
            except Exception:
                with open(f"{out}/{name}-{v}.error", "w") as fh:
                    fh.write(traceback.format_exc())


if __name__ == "__main__":
    main()
