"""What the reader scripts share: a DuckDB connection with extensions loaded from their installed
packages (and S3 credentials from the environment), and the Parquet file each read is written to.
"""
import glob
import importlib
import os

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def duckdb_connection(uri, extensions):
    """DuckDB with `extensions` installed from the duckdb-extension-* packages, and an S3
    secret for WAP_TEST_S3_ENDPOINT when `uri` is on S3."""
    con = duckdb.connect()
    anchor = importlib.import_module(f"duckdb_extension_{extensions[-1]}")
    site = os.path.dirname(os.path.dirname(anchor.__file__))
    for name in extensions:
        found = glob.glob(f"{site}/duckdb_extension_{name}/**/{name}.duckdb_extension", recursive=True)
        if found:
            con.execute(f"INSTALL '{found[0]}'")
        con.execute(f"LOAD {name}")
    if uri.startswith("s3://"):
        host = os.environ["WAP_TEST_S3_ENDPOINT"].split("://", 1)[1]
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


def arrow(rel):
    return rel.fetch_arrow_table() if hasattr(rel, "fetch_arrow_table") else rel.arrow()


def write_table(table, path):
    """`table` as Parquet at `path`, large and view layouts as plain ones: the tests compare
    values, not layouts."""
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        fields.append(pa.field(f.name, t))
    pq.write_table(table.cast(pa.schema(fields)), path)
