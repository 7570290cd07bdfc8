"""Runs wap and its peers side by side on TPC-H lineitem and prints the comparison.

    python bench/compare.py --sf SF --wap target/release/wap [--runs 5]
        [--transform all|NAME[,NAME]] [--source parquet|csv|all] [--tools wap,duckdb_copy,...]

Called by bench/run.sh, which generates the data (Parquet, and CSV of the same rows) and links
it under target/bench/. For every variant of bench/variants.py (how the partition columns are
derived from l_shipdate) and source format, every tool runs in a fresh process under
/usr/bin/time -v (wall time, peak RSS), writing into an empty folder; within a round the
variants follow each other and the tools alternate. Prints per variant each tool's wall time
and peak RSS (median, min-max) and wap's wall over each peer's, round by round: min, median,
max. Then the nightly scenario (bench/lineitem.yaml: re-publishing one month into the
published table, re-running an already published run). Results also go to
target/bench/results-sf<SF>.json.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import variants  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "bench")
OUT = os.path.join(BENCH, "out")
SOURCE = os.path.join(BENCH, "tpch", "lineitem*.parquet")
DATE = "1998-12-31"

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


def source_glob(fmt):
    return SOURCE if fmt == "parquet" else os.path.join(BENCH, "tpch-csv", "lineitem*.csv")


def variant_conf(variant, fmt):
    """Writes the job file of `variant` on the `fmt` source; returns its path."""
    folder = os.path.join(BENCH, "conf")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"lineitem-{variant}-{fmt}.yaml")
    with open(path, "w") as f:
        f.write(variants.wap_conf(
            variant, fmt, source_glob(fmt), "../out/wap/lineitem",
            os.path.join(ROOT, "bench", "lineitem-audits.yaml")))
    return path


def run_tool(tool, wap, python, variant, fmt):
    if tool == "wap":
        path = os.path.join(OUT, "wap")
        fresh(path)
        out, wall, rss = run_wap(wap, variant_conf(variant, fmt))
        assert out["status"] == "published", out
        return {"wall": wall, "rss": rss, "bytes": size_of(path), "timings": out["timings"],
                "partitions": len(out["partitions"]), "rows": out["rows"]}
    path = os.path.join(OUT, tool)
    fresh(path)
    proc, wall, rss = measure([python, "bench/peers.py", tool, source_glob(fmt), path,
                               "--transform", variant, "--format", fmt])
    if proc.returncode != 0:
        sys.exit(f"{tool} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return {"wall": wall, "rss": rss, "bytes": size_of(path)}


def median(xs):
    return statistics.median(xs)


def spread(xs, fmt="{:.2f}"):
    return f"{fmt.format(median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", default="1")
    ap.add_argument("--wap", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tools", default=",".join(["wap"] + BARE))
    ap.add_argument("--transform", default="all")
    ap.add_argument("--source", default="parquet")
    ap.add_argument("--no-nightly", action="store_true")
    args = ap.parse_args()
    tools = args.tools.split(",")
    names = list(variants.VARIANTS) if args.transform == "all" else args.transform.split(",")
    for n in names:
        if n not in variants.VARIANTS:
            sys.exit(f"--transform {n}: expected one of {', '.join(variants.VARIANTS)} or all")
    formats = variants.SOURCES if args.source == "all" else args.source.split(",")
    cases = [(n, f) for f in formats for n in names]

    results = {c: {t: [] for t in tools} for c in cases}
    for r in range(args.runs):
        for case in cases:
            order = tools[r % len(tools):] + tools[: r % len(tools)]
            for tool in order:
                res = run_tool(tool, args.wap, args.python, *case)
                results[case][tool].append(res)
                print(f"round {r + 1}: {case[0]:<11} {case[1]:<7} {tool:<13} "
                      f"{res['wall']:7.2f} s  {res['rss'] / 2**20:7.0f} MiB",
                      file=sys.stderr, flush=True)

    summary = {}
    print(f"\nTPC-H lineitem SF{args.sf}, {args.runs} rounds (fresh process each, tools "
          "alternating); wall and RSS: median (min-max); wap / tool: wap's wall over the "
          "tool's in the same round, median (min-max)\n")
    checks = []
    for case in cases:
        name = f"{case[0]}/{case[1]}"
        runs = results[case]
        print(f"{name}: {variants.VARIANTS[case[0]]['wap']}")
        print("| tool | wall s | peak RSS MiB | output MiB | wap / tool |")
        print("| --- | --- | --- | --- | --- |")
        s = {}
        for tool, xs in runs.items():
            walls = [x["wall"] for x in xs]
            s[tool] = {
                "wall_s": median(walls),
                "wall_min": min(walls),
                "wall_max": max(walls),
                "rss_mib": median([x["rss"] for x in xs]) / 2**20,
                "out_mib": median([x["bytes"] for x in xs]) / 2**20,
            }
            ratio = ""
            if "wap" in runs and tool != "wap":
                ratios = [w["wall"] / x["wall"] for w, x in zip(runs["wap"], xs)]
                s[tool]["ratio"] = {"median": median(ratios), "min": min(ratios),
                                    "max": max(ratios)}
                ratio = spread(ratios)
            rss = [x["rss"] / 2**20 for x in xs]
            print(f"| {tool} | {spread(walls)} | {spread(rss, '{:.0f}')} | "
                  f"{s[tool]['out_mib']:.0f} | {ratio} |")
        if "wap" in runs:
            t = runs["wap"][0]
            phases = {p: median([x["timings"][p] for x in runs["wap"]])
                      for p in ["plan_ms", "write_ms", "audit_ms", "publish_ms", "total_ms"]}
            s["wap"].update(phases, partitions=t["partitions"], rows=t["rows"])
            print(f"wap phases (ms): plan {phases['plan_ms']:.0f}, write "
                  f"{phases['write_ms']:.0f}, audit {phases['audit_ms']:.0f}, publish "
                  f"{phases['publish_ms']:.0f}; {t['rows']} rows in {t['partitions']} "
                  "partitions")
            bare = [t for t in BARE if t in s]
            if bare:
                worst = max(s[t]["ratio"]["median"] for t in bare)
                checks.append((f"{name}: full run <= every bare partitioned write (median "
                               "ratio)", worst <= 1, f"worst median ratio {worst:.2f}"))
            checks.append((f"{name}: peak RSS < 1 GiB", s["wap"]["rss_mib"] < 1024,
                           f"{s['wap']['rss_mib']:.0f} MiB"))
        print()
        summary[name] = s

    if "wap" in tools and not args.no_nightly:
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
        checks.append(("re-run of a published run < 1 s", n["rerun_unchanged_wall_s"] < 1,
                       f"{n['rerun_unchanged_wall_s']:.2f} s"))

    if checks:
        print("\ntargets:")
        for name, ok, detail in checks:
            print(f"  [{'met ' if ok else 'MISS'}] {name}: {detail}")
    summary["targets"] = {name: ok for name, ok, _ in checks}
    with open(os.path.join(BENCH, f"results-sf{args.sf}.json"), "w") as f:
        json.dump({"sf": args.sf, "summary": summary,
                   "runs": {f"{v}/{fm}": r for (v, fm), r in results.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
