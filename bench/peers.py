"""One peer of the benchmark, run in its own process by bench/compare.py.

    python bench/peers.py TOOL SOURCE_GLOB OUT_DIR [--transform NAME] [--format parquet|csv]

TOOL is one of:
  duckdb_copy    DuckDB COPY ... (FORMAT parquet, PARTITION_BY (ship_month)), nothing else
  duckdb_audit   the same write, then the benchmark's audits in DuckDB SQL
  delta_audit    delta-rs write_deltalake(..., partition_by=["ship_month"]), then DuckDB audits
  polars_sink    polars scan_parquet(...).sink_parquet(PartitionBy(..., key="ship_month"))

and, for the merge benchmark (bench/merge.py):
  merge_batch    the CDC batch from SOURCE_GLOB into OUT_DIR/batch.parquet (DuckDB, deterministic)
  delta_base     the base Delta table: write_deltalake(..., partition_by=["ship_month"])
  delta_merge    delta-rs merge of the batch file SOURCE_GLOB into the Delta table OUT_DIR

The write tools derive the partition columns of variant NAME of bench/variants.py (default
to_char: ship_month = 'YYYY-MM' of l_shipdate) from a Parquet or CSV source. The audits
are bench/lineitem-audits.yaml's rules: the column rules in one aggregate query, uniqueness in a
second. Exit 3 if an audit fails (it never should on TPC-H data).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from variants import VARIANTS  # noqa: E402

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


def duckdb_write(src, out, variant="to_char", fmt="parquet"):
    import duckdb

    v = VARIANTS[variant]
    read = f"read_csv('{src}', header = true)" if fmt == "csv" else f"read_parquet('{src}')"
    con = duckdb.connect()
    con.execute(
        f"""
        COPY (SELECT *, {v['duckdb']} FROM {read})
        TO '{out}' (FORMAT parquet, PARTITION_BY ({', '.join(v['partition_by'])}))
        """
    )
    return con


# The merge batch: 100,000 updates, 50,000 inserts and 10,000 deletes spread over the latest
# three full ship months. TPC-H orders end on 1998-08-02 and ship up to 121 days later, so the
# months after it hold only the thinning tail of shipments (1998-12 almost nothing); "full"
# means at least three quarters of the median month's rows.
UPDATES, INSERTS, DELETES = 100_000, 50_000, 10_000
KEY = ["ship_month", "l_orderkey", "l_linenumber"]


def merge_batch(src, out):
    import duckdb

    con = duckdb.connect()
    con.execute(
        f"""CREATE VIEW src AS SELECT *, strftime(l_shipdate, '%Y-%m') AS ship_month
            FROM read_parquet('{src}')"""
    )
    counts = con.execute(
        "SELECT ship_month, count(*) FROM src GROUP BY ALL ORDER BY ship_month"
    ).fetchall()
    median = sorted(n for _, n in counts)[len(counts) // 2]
    months = [m for m, n in counts if n >= 0.75 * median][-3:]
    listed = ", ".join(f"'{m}'" for m in months)
    cols = [r[0] for r in con.execute("DESCRIBE src").fetchall()]
    # A fixed pseudo-random order of the rows of those months (no seed, no clock).
    con.execute(
        f"""CREATE TABLE picked AS
            SELECT *, row_number() OVER (
              ORDER BY (l_orderkey * 7919 + l_linenumber * 104729) % 1000003,
                       l_orderkey, l_linenumber) AS rn
            FROM src WHERE ship_month IN ({listed})"""
    )
    (max_key,) = con.execute("SELECT max(l_orderkey) FROM src").fetchone()
    plain = ", ".join(cols)
    changed = ", ".join(
        "CASE WHEN l_quantity >= 50 THEN 1 ELSE l_quantity + 1 END AS l_quantity"
        if c == "l_quantity"
        else "'updated by the merge benchmark' AS l_comment"
        if c == "l_comment"
        else f"l_orderkey + {max_key} AS l_orderkey"
        if c == "l_orderkey"
        else c
        for c in cols
    )
    updated = ", ".join(
        "CASE WHEN l_quantity >= 50 THEN 1 ELSE l_quantity + 1 END AS l_quantity"
        if c == "l_quantity"
        else "'updated by the merge benchmark' AS l_comment"
        if c == "l_comment"
        else c
        for c in cols
    )
    a, b, c = UPDATES, UPDATES + DELETES, UPDATES + DELETES + INSERTS
    con.execute(
        f"""COPY (
              SELECT {updated}, 'U' AS op FROM picked WHERE rn <= {a}
              UNION ALL SELECT {plain}, 'D' AS op FROM picked WHERE rn > {a} AND rn <= {b}
              UNION ALL SELECT {changed}, 'U' AS op FROM picked WHERE rn > {b} AND rn <= {c}
              ORDER BY ship_month, l_orderkey, l_linenumber)
            TO '{out}/batch.parquet' (FORMAT parquet)"""
    )
    (n,) = con.execute(f"SELECT count(*) FROM '{out}/batch.parquet'").fetchone()
    if n != c:
        sys.exit(f"the latest full months {months} hold fewer than {c} rows")
    return {"months": months, "rows": n}


def delta_base(src, out):
    import glob

    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from deltalake import write_deltalake

    table = ds.dataset(sorted(glob.glob(src)), format="parquet").to_table()
    table = table.append_column(
        "ship_month", pc.strftime(table["l_shipdate"], format="%Y-%m")
    )
    write_deltalake(out, table, partition_by=["ship_month"])
    return {"rows": table.num_rows}


def delta_merge(batch, out):
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    source = pq.read_table(batch)
    cols = [c for c in source.column_names if c != "op"]
    on = " AND ".join(f"t.{k} = s.{k}" for k in KEY)
    metrics = (
        DeltaTable(out)
        .merge(source=source, predicate=on, source_alias="s", target_alias="t")
        .when_matched_delete(predicate="s.op = 'D'")
        .when_matched_update(updates={c: f"s.{c}" for c in cols})
        .when_not_matched_insert(updates={c: f"s.{c}" for c in cols}, predicate="s.op <> 'D'")
        .execute()
    )
    return {
        "inserted": metrics["num_target_rows_inserted"],
        "updated": metrics["num_target_rows_updated"],
        "deleted": metrics["num_target_rows_deleted"],
    }


def main():
    tool, src, out = sys.argv[1:4]
    flags = dict(zip(sys.argv[4::2], sys.argv[5::2]))
    variant = flags.get("--transform", "to_char")
    fmt = flags.get("--format", "parquet")
    result = {"tool": tool, "transform": variant, "format": fmt}
    if tool == "duckdb_copy":
        duckdb_write(src, out, variant, fmt)
    elif tool == "duckdb_audit":
        con = duckdb_write(src, out, variant, fmt)
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

        v = VARIANTS[variant]
        scan = (
            pl.scan_csv(src, try_parse_dates=True) if fmt == "csv" else pl.scan_parquet(src)
        )
        (
            scan.with_columns(v["polars"](pl)).sink_parquet(
                pl.PartitionBy(out, key=v["partition_by"]), mkdir=True
            )
        )
    elif tool == "merge_batch":
        result.update(merge_batch(src, out))
    elif tool == "delta_base":
        result.update(delta_base(src, out))
    elif tool == "delta_merge":
        result.update(delta_merge(src, out))
    else:
        sys.exit(f"unknown tool {tool}")
    print(json.dumps(result))
    if result.get("failed"):
        sys.exit(3)


if __name__ == "__main__":
    main()
