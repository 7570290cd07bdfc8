"""Reads an Iceberg table with the real readers and writes what each one read as Parquet.

    python iceberg_read.py TABLE_URI OUT_DIR [--catalog URI NAME IDENTIFIER] VERSION...

VERSION is a wap version N (read from metadata/vN.metadata.json) or `latest`. For each reader
and version it writes OUT_DIR/<reader>-<version>.parquet; a reader that fails writes
OUT_DIR/<reader>-<version>.error with the message, so the test can say which one failed.

Readers of version N: pyiceberg (StaticTable of vN), history (pyiceberg, the snapshot of N in the
newest metadata: time travel), duckdb (iceberg_scan of vN), polars (scan_iceberg of vN).
Readers of `latest`: duckdb-hint (iceberg_scan of the table folder, through version-hint.text),
and with --catalog: catalog (pyiceberg SqlCatalog) and polars-catalog.
S3: WAP_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment.
"""
import os
import sys
import traceback

from common import arrow, duckdb_connection, write_table



def s3():
    return os.environ.get("WAP_TEST_S3_ENDPOINT")


def pyiceberg_props(uri):
    if not uri.startswith("s3://"):
        return {}
    return {
        "s3.endpoint": s3(),
        "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
        "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
        "s3.force-virtual-addressing": "false",
    }


def polars_options(uri):
    if not uri.startswith("s3://"):
        return None
    return {
        "aws_endpoint_url": s3(),
        "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        "aws_region": os.environ.get("AWS_REGION", "us-east-1"),
        "aws_allow_http": "true",
    }


def main():
    args = sys.argv[1:]
    uri, out = args[0], args[1]
    rest = args[2:]
    catalog = None
    if rest and rest[0] == "--catalog":
        catalog = rest[1:4]
        rest = rest[4:]
    os.makedirs(out, exist_ok=True)
    con = duckdb_connection(uri, ["parquet", "avro", "httpfs", "iceberg"])
    props = pyiceberg_props(uri)

    def meta(v):
        return f"{uri}/metadata/v{int(v)}.metadata.json"

    def read_pyiceberg(v):
        from pyiceberg.table import StaticTable

        return StaticTable.from_metadata(meta(v), properties=props).scan().to_arrow()

    def newest():
        from pyiceberg.table import StaticTable

        with open_text(f"{uri}/metadata/version-hint.text") as fh:
            hint = fh.read()
        return StaticTable.from_metadata(meta(hint), properties=props)

    def open_text(path):
        if path.startswith("s3://"):
            import pyarrow.fs as pafs

            fs = pafs.S3FileSystem(
                access_key=os.environ["AWS_ACCESS_KEY_ID"],
                secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                endpoint_override=s3(),
                scheme="http",
                region=os.environ.get("AWS_REGION", "us-east-1"),
            )
            import io

            with fs.open_input_stream(path[len("s3://"):]) as f:
                return io.StringIO(f.read().decode())
        return open(path)

    def read_history(v):
        t = newest()
        ids = [
            s.snapshot_id
            for s in t.metadata.snapshots
            if s.summary is not None and s.summary.additional_properties.get("wap.table-version") == str(v)
        ]
        if len(ids) != 1:
            raise RuntimeError(f"{len(ids)} snapshots for wap version {v} in the newest metadata")
        return t.scan(snapshot_id=ids[0]).to_arrow()

    def read_duckdb(v):
        return arrow(con.sql(f"SELECT * FROM iceberg_scan('{meta(v)}')"))

    def read_polars(v):
        import polars as pl

        source = meta(v)
        if uri.startswith("s3://"):
            # polars opens a metadata path through pyiceberg without the endpoint: hand it the
            # table opened with the S3 settings instead.
            from pyiceberg.table import StaticTable

            source = StaticTable.from_metadata(source, properties=props)
        return pl.scan_iceberg(source, storage_options=polars_options(uri)).collect().to_arrow()

    def read_duckdb_hint(_):
        return arrow(con.sql(f"SELECT * FROM iceberg_scan('{uri}')"))

    def catalog_table():
        from pyiceberg.catalog.sql import SqlCatalog

        c = SqlCatalog(catalog[1], uri=catalog[0], **props)
        return c.load_table(catalog[2])

    def read_catalog(_):
        return catalog_table().scan().to_arrow()

    def read_polars_catalog(_):
        import polars as pl

        return pl.scan_iceberg(catalog_table(), storage_options=polars_options(uri)).collect().to_arrow()

    per_version = {
        "pyiceberg": read_pyiceberg,
        "history": read_history,
        "duckdb": read_duckdb,
        "polars": read_polars,
    }
    latest = {"duckdb-hint": read_duckdb_hint}
    if catalog:
        latest["catalog"] = read_catalog
        latest["polars-catalog"] = read_polars_catalog
    for v in rest:
        readers = latest if v == "latest" else per_version
        for name, read in readers.items():
            try:
                table = read(v)
                write_table(table, f"{out}/{name}-{v}.parquet")
            except Exception:
                with open(f"{out}/{name}-{v}.error", "w") as fh:
                    fh.write(traceback.format_exc())


if __name__ == "__main__":
    main()
