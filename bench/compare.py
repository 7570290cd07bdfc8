"""Runs wap and its peers side by side on TPC-H lineitem and prints the comparison.

    python bench/compare.py --sf SF --wap target/release/wap [--runs 3]

Called by bench/run.sh, which generates the data and links it under target/bench/tpch/. Every
tool runs in a fresh process under /usr/bin/time -v (wall time, peak RSS), writing into an
empty folder; tools alternate within each round. Then the nightly scenario (re-publishing one
month into the published table, and re-running an already published run), all with wap.
Results also go to target/bench/results-sf<SF>.json.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "bench")
OUT = os.path.join(BENCH, "out")
SOURCE = os.path.join(BENCH, "tpch", "lineitem*.parquet")
DATE = "1998-12-31"

PEERS = ["duckdb_copy", "duckdb_audit", "delta_audit", "polars_sink"]
BARE = ["duckdb_copy", "polars_sink"]


def measure(cmd):
    started = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, cwd=ROOT
    )
    wall = time.monotonic() - started
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(m.group(1)) * 1024 if m else 0
    return proc, wall, rss


def size_of(path):
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(folder, f))
    return total


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)


def run_wap(wap, conf, date=DATE):
    proc, wall, rss = measure([wap, "run", "--conf", conf, "--date", date, "--json"])
    if proc.returncode != 0:
        sys.exit(f"wap run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(proc.stdout)
    return out, wall, rss


def run_tool(tool, wap, python):
    if tool == "wap":
        path = os.path.join(OUT, "wap")
        fresh(path)
        out, wall, rss = run_wap(wap, "bench/lineitem.yaml")
        assert out["status"] == "published", out
        return {"wall": wall, "rss": rss, "bytes": size_of(path), "timings": out["timings"],
                "partitions": len(out["partitions"]), "rows": out["rows"]}
    path = os.path.join(OUT, tool)
    fresh(path)
    proc, wall, rss = measure([python, "bench/peers.py", tool, SOURCE, path])
    if proc.returncode != 0:
        sys.exit(f"{tool} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return {"wall": wall, "rss": rss, "bytes": size_of(path)}


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", default="1")
    ap.add_argument("--wap", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", default=",".join(["wap"] + PEERS))
    args = ap.parse_args()
    tools = args.tools.split(",")

    results = {t: [] for t in tools}
    for r in range(args.runs):
        order = tools[r % len(tools):] + tools[: r % len(tools)]
        for tool in order:
            res = run_tool(tool, args.wap, args.python)
            results[tool].append(res)
            print(f"round {r + 1}: {tool:<13} {res['wall']:7.2f} s  "
                  f"{res['rss'] / 2**20:7.0f} MiB", file=sys.stderr, flush=True)

    summary = {}
    for tool, runs in results.items():
        summary[tool] = {
            "wall_s": median([x["wall"] for x in runs]),
            "rss_mib": median([x["rss"] for x in runs]) / 2**20,
            "out_mib": median([x["bytes"] for x in runs]) / 2**20,
        }
        if tool == "wap":
            for phase in ["plan_ms", "write_ms", "audit_ms", "publish_ms", "total_ms"]:
                summary[tool][phase] = median([x["timings"][phase] for x in runs])
            summary[tool]["partitions"] = runs[0]["partitions"]
            summary[tool]["rows"] = runs[0]["rows"]

    print(f"\nTPC-H lineitem SF{args.sf}, medians of {args.runs} (fresh process each, tools "
          "alternating)\n")
    print("| tool | wall s | peak RSS MiB | output MiB | wap / tool |")
    print("| --- | --- | --- | --- | --- |")
    wap = summary.get("wap")
    for tool, s in summary.items():
        ratio = f"{wap['wall_s'] / s['wall_s']:.2f}" if wap and tool != "wap" else ""
        print(f"| {tool} | {s['wall_s']:.2f} | {s['rss_mib']:.0f} | {s['out_mib']:.0f} | {ratio} |")

    if wap:
        print(f"\nwap phases (ms): plan {wap['plan_ms']:.0f}, write {wap['write_ms']:.0f}, "
              f"audit {wap['audit_ms']:.0f}, publish {wap['publish_ms']:.0f}, "
              f"total {wap['total_ms']:.0f}; {wap['rows']} rows in {wap['partitions']} "
              "partitions")
        # The nightly scenario: a fresh full publish, its re-run (unchanged), then one month
        # re-published three times (three logical dates, so three runs).
        fresh(os.path.join(OUT, "wap"))
        run_wap(args.wap, "bench/lineitem.yaml")
        month, rerun = [], []
        for _ in range(3):
            out, wall, _ = run_wap(args.wap, "bench/lineitem.yaml")
            assert out["status"] == "unchanged", out
            rerun.append(wall)
        for day in ["1998-12-28", "1998-12-29", "1998-12-30"]:
            out, wall, _ = run_wap(args.wap, "bench/lineitem-month.yaml", day)
            assert out["status"] == "published" and len(out["partitions"]) == 1, out
            month.append((wall, out["timings"]))
        summary["nightly"] = {
            "one_month_wall_s": median([w for w, _ in month]),
            "one_month_publish_ms": median([t["publish_ms"] for _, t in month]),
            "rerun_unchanged_wall_s": median(rerun),
        }
        n = summary["nightly"]
        print(f"nightly: re-publish one month {n['one_month_wall_s']:.2f} s (publish "
              f"{n['one_month_publish_ms']:.0f} ms); re-run of the published run "
              f"{n['rerun_unchanged_wall_s']:.2f} s")

        print("\ntargets:")
        bare = [summary[t]["wall_s"] for t in BARE if t in summary]
        checks = []
        if bare:
            checks.append(("full run <= fastest bare partitioned write",
                           wap["wall_s"] <= min(bare), f"{wap['wall_s']:.2f} s vs {min(bare):.2f} s"))
        if "delta_audit" in summary:
            d = summary["delta_audit"]["wall_s"]
            checks.append(("full run <= half of delta-rs + DuckDB audits",
                           wap["wall_s"] <= d / 2, f"{wap['wall_s']:.2f} s vs {d / 2:.2f} s"))
        checks.append(("audit <= 25% of write", wap["audit_ms"] <= 0.25 * wap["write_ms"],
                       f"{wap['audit_ms']:.0f} ms vs {0.25 * wap['write_ms']:.0f} ms"))
        checks.append(("re-run of a published run < 1 s", n["rerun_unchanged_wall_s"] < 1,
                       f"{n['rerun_unchanged_wall_s']:.2f} s"))
        checks.append(("peak RSS < 1 GiB", wap["rss_mib"] < 1024, f"{wap['rss_mib']:.0f} MiB"))
        for name, ok, detail in checks:
            print(f"  [{'met ' if ok else 'MISS'}] {name}: {detail}")
        summary["targets"] = {name: ok for name, ok, _ in checks}

    with open(os.path.join(BENCH, f"results-sf{args.sf}.json"), "w") as f:
        json.dump({"sf": args.sf, "summary": summary, "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
