"""The merge benchmark: `wap run` in merge mode against delta-rs `merge`, on TPC-H lineitem.

    python bench/merge.py --wap target/release/wap --python VENV_PYTHON --cache DIR \
        [--sf 1 --sf 10] [--delta-sf 1] [--runs 3]

Called by bench/merge.sh, which generates the data and the virtualenv. For each scale factor,
once (cached under target/bench/merge/sf<SF>/): the base table published by ship month with
`wap` (bench/lineitem-merge-base.yaml) and with delta-rs (write_deltalake, the same
partitioning), and the CDC batch (bench/peers.py merge_batch: 100,000 updates, 50,000 inserts,
10,000 deletes over the latest three full months). Then, in every round, tools and scale factors
alternate; each measurement starts from a fresh copy of its base table (data files hard-linked,
metadata copied) and runs in a fresh process under /usr/bin/time -v:
  wap    `wap run` of bench/lineitem-merge.yaml: write + the benchmark's audits + publish
  delta  delta-rs merge on (ship_month, l_orderkey, l_linenumber), delete when op = 'D'
Prints each tool's median with min-max, the wap/delta ratio per round, the SF10/SF1 ratio and
the targets; results also go to target/bench/merge-results.json.
"""

import argparse
import json
import os
import shutil
import statistics
import sys

import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "bench", "merge")
CURRENT = os.path.join(BENCH, "current")
DATE = "1998-12-31"
WANT = {"inserted": 50_000, "updated": 100_000, "deleted": 10_000}


def measure(cmd):
    """compare.measure, stopping the benchmark when the command fails."""
    proc, wall, rss = compare.measure(cmd)
    if proc.returncode != 0:
        sys.exit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc, wall, rss


def point_at(sf):
    """Points target/bench/merge/current at the folder of scale factor `sf`."""
    if os.path.islink(CURRENT):
        os.unlink(CURRENT)
    os.symlink(f"sf{sf}", CURRENT)


def copy_table(base, to):
    """A fresh copy of a table: Parquet data files hard-linked (no tool rewrites a data file),
    everything else (manifests, pointers, logs) copied."""
    shutil.rmtree(to, ignore_errors=True)
    for folder, _, files in os.walk(base):
        target = os.path.join(to, os.path.relpath(folder, base))
        os.makedirs(target, exist_ok=True)
        for f in files:
            src, dst = os.path.join(folder, f), os.path.join(target, f)
            if f.endswith(".parquet"):
                os.link(src, dst)
            else:
                shutil.copy2(src, dst)


def prepare(sf, args):
    folder = os.path.join(BENCH, f"sf{sf}")
    os.makedirs(folder, exist_ok=True)
    tpch = os.path.join(folder, "tpch")
    if not os.path.islink(tpch):
        os.symlink(os.path.join(args.cache, f"tpch-sf{sf}"), tpch)
    point_at(sf)
    src = os.path.join(tpch, "lineitem*.parquet")
    batch = os.path.join(folder, "batch")
    if not os.path.exists(os.path.join(batch, "batch.parquet")):
        os.makedirs(batch, exist_ok=True)
        proc, _, _ = measure([args.python, "bench/peers.py", "merge_batch", src, batch])
        print(f"SF{sf}: batch {proc.stdout.strip()}", file=sys.stderr, flush=True)
    base = os.path.join(folder, "base-wap")
    if not os.path.exists(os.path.join(base, ".done")):
        shutil.rmtree(os.path.join(folder, "table"), ignore_errors=True)
        _, wall, _ = measure(
            [args.wap, "run", "--conf", "bench/lineitem-merge-base.yaml", "--date", DATE]
        )
        shutil.rmtree(base, ignore_errors=True)
        os.rename(os.path.join(folder, "table"), base)
        open(os.path.join(base, ".done"), "w").close()
        print(f"SF{sf}: wap base table in {wall:.1f} s", file=sys.stderr, flush=True)
    if sf in args.delta_sf:
        delta = os.path.join(folder, "base-delta")
        if not os.path.exists(os.path.join(delta, ".done")):
            shutil.rmtree(delta, ignore_errors=True)
            measure([args.python, "bench/peers.py", "delta_base", src, delta])
            open(os.path.join(delta, ".done"), "w").close()
            print(f"SF{sf}: delta base table written", file=sys.stderr, flush=True)


def run(task, args):
    tool, sf = task
    folder = os.path.join(BENCH, f"sf{sf}")
    point_at(sf)
    if tool == "wap":
        copy_table(os.path.join(folder, "base-wap"), os.path.join(folder, "table"))
        proc, wall, rss = measure(
            [args.wap, "run", "--conf", "bench/lineitem-merge.yaml", "--date", DATE, "--json"]
        )
        out = json.loads(proc.stdout)
        assert out["status"] == "published", out
        counts = {k: out["merge"][k] for k in WANT}
        extra = {"timings": out["timings"], "partitions": out["partitions"]}
    else:
        table = os.path.join(folder, "delta")
        copy_table(os.path.join(folder, "base-delta"), table)
        batch = os.path.join(folder, "batch", "batch.parquet")
        proc, wall, rss = measure(
            [args.python, "bench/peers.py", "delta_merge", batch, table]
        )
        out = json.loads(proc.stdout)
        counts = {k: out[k] for k in WANT}
        extra = {}
    assert counts == WANT, f"{tool} SF{sf} merged {counts}, not {WANT}"
    return {"wall": wall, "rss": rss, **extra}


def spread(xs):
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wap", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--sf", type=int, action="append")
    ap.add_argument("--delta-sf", type=int, action="append")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    args.sf = args.sf or [1, 10]
    args.delta_sf = args.delta_sf or [min(args.sf)]
    for sf in args.sf:
        prepare(sf, args)

    tasks = [("wap", sf) for sf in args.sf] + [("delta", sf) for sf in args.delta_sf]
    results = {t: [] for t in tasks}
    for r in range(args.runs):
        order = tasks[r % len(tasks):] + tasks[: r % len(tasks)]
        for task in order:
            res = run(task, args)
            results[task].append(res)
            print(f"round {r + 1}: {task[0]:<5} SF{task[1]:<3} {res['wall']:7.2f} s  "
                  f"{res['rss'] / 2**20:7.0f} MiB", file=sys.stderr, flush=True)

    print(f"\nmerge of 100,000 updates, 50,000 inserts, 10,000 deletes into TPC-H lineitem by "
          f"ship month; {args.runs} rounds, tools alternating, median (min-max)\n")
    print("| tool | SF | wall s | peak RSS MiB |")
    print("| --- | --- | --- | --- |")
    for (tool, sf), runs in results.items():
        print(f"| {tool} | {sf} | {spread([x['wall'] for x in runs])} | "
              f"{spread([x['rss'] / 2**20 for x in runs])} |")
    checks = []
    lo = min(args.sf)
    wap_lo = [x["wall"] for x in results[("wap", lo)]]
    t = results[("wap", lo)][0]["timings"]
    print(f"\nwap SF{lo} phases of round 1 (ms): plan {t['plan_ms']}, write {t['write_ms']}, "
          f"audit {t['audit_ms']}, publish {t['publish_ms']}; partitions rewritten: "
          f"{', '.join(results[('wap', lo)][0]['partitions'])}")
    summary = {}
    for sf in args.delta_sf:
        ratios = [w["wall"] / d["wall"]
                  for w, d in zip(results[("wap", sf)], results[("delta", sf)])]
        summary[f"wap/delta SF{sf}"] = ratios
        checks.append((f"SF{sf}: wap <= 0.5x delta-rs merge (per-round ratio)",
                       statistics.median(ratios) <= 0.5, spread(ratios)))
    for sf in args.sf:
        if sf == lo:
            continue
        ratios = [h["wall"] / w for h, w in zip(results[("wap", sf)], wap_lo)]
        summary[f"wap SF{sf}/SF{lo}"] = ratios
        checks.append((f"wap SF{sf} <= 1.5x SF{lo} (per-round ratio)",
                       statistics.median(ratios) <= 1.5, spread(ratios)))
    for sf in args.sf:
        rss = max(x["rss"] for x in results[("wap", sf)]) / 2**20
        checks.append((f"wap SF{sf} peak RSS < 1 GiB (largest round)", rss < 1024,
                       f"{rss:.0f} MiB"))
    print("\ntargets:")
    for name, ok, detail in checks:
        print(f"  [{'met ' if ok else 'MISS'}] {name}: {detail}")
    with open(os.path.join(BENCH, "..", "merge-results.json"), "w") as f:
        json.dump({"runs": {f"{t}-sf{sf}": r for (t, sf), r in results.items()},
                   "ratios": summary,
                   "targets": {name: ok for name, ok, _ in checks}}, f, indent=2)


if __name__ == "__main__":
    main()
