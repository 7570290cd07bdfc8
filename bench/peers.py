"""One peer of the benchmark, run in its own process by bench/compare.py.

    python bench/peers.py TOOL SOURCE_GLOB OUT_DIR

TOOL is one of:
  duckdb_copy    DuckDB COPY ... (FORMAT parquet, PARTITION_BY (ship_month)), nothing else
  duckdb_audit   the same write, then the benchmark's audits in DuckDB SQL
  delta_audit    delta-rs write_deltalake(..., partition_by=["ship_month"]), then DuckDB audits
  polars_sink    polars scan_parquet(...).sink_parquet(PartitionBy(..., key="ship_month"))

Every tool derives ship_month = 'YYYY-MM' of l_shipdate, as bench/lineitem.yaml does. The audits
are bench/lineitem-audits.yaml's rules: the column rules in one aggregate query, uniqueness in a
second. Exit 3 if an audit fails (it never should on TPC-H data).
"""

import json
import sys

SHIP_MODES = ["AIR", "FOB", "MAIL", "RAIL", "REG AIR", "SHIP", "TRUCK"]


def audits(con, files_sql):
    """The benchmark's rules over `files_sql` (a DuckDB table expression); returns failures."""
    modes = ", ".join(f"'{m}'" for m in SHIP_MODES)
    row = con.execute(
        f"""
        SELECT
          count(*) FILTER (WHERE l_orderkey IS NULL OR l_linenumber IS NULL),
          count(*) FILTER (WHERE l_shipdate IS NULL OR l_commitdate IS NULL
                                 OR l_receiptdate IS NULL),
          count(*) FILTER (WHERE l_quantity < 1 OR l_quantity > 50),
          count(*) FILTER (WHERE l_discount < 0 OR l_discount > 0.1),
          count(*) FILTER (WHERE l_tax < 0 OR l_tax > 0.08),
          count(*) FILTER (WHERE l_returnflag NOT IN ('A', 'N', 'R')),
          count(*) FILTER (WHERE l_linestatus NOT IN ('F', 'O')),
          count(*) FILTER (WHERE l_shipmode NOT IN ({modes})),
          count(*)
        FROM {files_sql}
        """
    ).fetchone()
    names = [
        "keys_present",
        "dates_present",
        "quantity_range",
        "discount_range",
        "tax_range",
        "returnflag_values",
        "linestatus_values",
        "shipmode_values",
    ]
    failed = {n: v for n, v in zip(names, row[:-1]) if v}
    if row[-1] < 1:
        failed["not_empty"] = 0
    dup = con.execute(
        f"""
        SELECT count(*) FROM (
          SELECT l_orderkey, l_linenumber FROM {files_sql}
          GROUP BY l_orderkey, l_linenumber HAVING count(*) > 1)
        """
    ).fetchone()[0]
    if dup:
        failed["one_row_per_line"] = dup
    return failed, row[-1]


def duckdb_write(src, out):
    import duckdb

    con = duckdb.connect()
    con.execute(
        f"""
        COPY (SELECT *, strftime(l_shipdate, '%Y-%m') AS ship_month
              FROM read_parquet('{src}'))
        TO '{out}' (FORMAT parquet, PARTITION_BY (ship_month))
        """
    )
    return con


def main():
    tool, src, out = sys.argv[1:4]
    result = {"tool": tool}
    if tool == "duckdb_copy":
        duckdb_write(src, out)
    elif tool == "duckdb_audit":
        con = duckdb_write(src, out)
        failed, rows = audits(
            con, f"read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
        )
        result.update(failed=failed, rows=rows)
    elif tool == "delta_audit":
        import duckdb
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
        from deltalake import DeltaTable, write_deltalake

        import glob

        table = ds.dataset(sorted(glob.glob(src)), format="parquet").to_table()
        table = table.append_column(
            "ship_month", pc.strftime(table["l_shipdate"], format="%Y-%m")
        )
        write_deltalake(out, table, partition_by=["ship_month"])
        del table
        files = DeltaTable(out).file_uris()
        con = duckdb.connect()
        listed = ", ".join(f"'{f}'" for f in files)
        failed, rows = audits(
            con, f"read_parquet([{listed}], hive_partitioning = true)"
        )
        result.update(failed=failed, rows=rows)
    elif tool == "polars_sink":
        import polars as pl

        (
            pl.scan_parquet(src)
            .with_columns(ship_month=pl.col("l_shipdate").dt.strftime("%Y-%m"))
            .sink_parquet(pl.PartitionBy(out, key="ship_month"), mkdir=True)
        )
    else:
        sys.exit(f"unknown tool {tool}")
    print(json.dumps(result))
    if result.get("failed"):
        sys.exit(3)


if __name__ == "__main__":
    main()
