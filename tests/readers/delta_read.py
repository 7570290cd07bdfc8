"""Reads a Delta table with the real readers and writes what each one read as Parquet.

    python delta_read.py TABLE_URI OUT_DIR VERSION...

VERSION is a Delta version number or `latest`. For each reader (deltalake, polars, duckdb) and
version it writes OUT_DIR/<reader>-<version>.parquet; a reader that fails writes
OUT_DIR/<reader>-<version>.error with the message, so the test can say which one failed.
S3: WAP_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment.
"""
import glob
import json
import os
import sys
import traceback

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


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


def duckdb_connection(uri):
    import duckdb_extension_delta

    con = duckdb.connect()
    site = os.path.dirname(os.path.dirname(duckdb_extension_delta.__file__))
    for name in ["parquet", "httpfs", "delta"]:
        found = glob.glob(f"{site}/duckdb_extension_{name}/**/{name}.duckdb_extension", recursive=True)
        if found:
            con.execute(f"INSTALL '{found[0]}'")
        con.execute(f"LOAD {name}")
    endpoint = os.environ.get("WAP_TEST_S3_ENDPOINT")
    if uri.startswith("s3://"):
        host = endpoint.split("://", 1)[1]
        con.execute(
            "CREATE SECRET s3 (TYPE s3, KEY_ID ?, SECRET ?, ENDPOINT ?, URL_STYLE 'path', "
            "USE_SSL false, REGION ?)",
            [
                os.environ["AWS_ACCESS_KEY_ID"],
                os.environ["AWS_SECRET_ACCESS_KEY"],
                host,
                os.environ.get("AWS_REGION", "us-east-1"),
            ],
        )
    return con


def main():
    uri, out = sys.argv[1], sys.argv[2]
    versions = sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    con = duckdb_connection(uri)

    def read_duckdb(uri, version):
        arg = "" if version is None else f", version => {int(version)}"
        rel = con.sql(f"SELECT * FROM delta_scan('{uri}'{arg})")
        return rel.fetch_arrow_table() if hasattr(rel, "fetch_arrow_table") else rel.arrow()

    readers = {"deltalake": read_deltalake, "polars": read_polars, "duckdb": read_duckdb}
    for v in versions:
        version = None if v == "latest" else int(v)
        for name, read in readers.items():
            try:
                table = read(uri, version)
                # Large and view layouts as plain ones: the test compares values, not layouts.
                fields = []
                for f in table.schema:
                    t = f.type
                    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
                        t = pa.string()
                    fields.append(pa.field(f.name, t))
                pq.write_table(table.cast(pa.schema(fields)), f"{out}/{name}-{v}.parquet")
            except Exception:
                with open(f"{out}/{name}-{v}.error", "w") as fh:
                    fh.write(traceback.format_exc())


if __name__ == "__main__":
    main()
