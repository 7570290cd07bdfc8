"""Two wap binaries side by side on the benchmark job, alternating, in one run.

    python3 bench/ab.py --a OLD_BINARY --b NEW_BINARY [--pairs 4] [--conf bench/lineitem.yaml]

Needs the data of bench/run.sh (target/bench/tpch/). Each run publishes into an empty table
under /usr/bin/time -v; the order within a pair alternates. Prints each run's wall time and peak
RSS, the ratio b/a per pair with its median, min and max, and checks that both binaries wrote
the same bytes (one SHA-256 over every staged file's path and content, in path order) and gave
the same audit counts.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import DATE, OUT, fresh, run_wap  # noqa: E402


def staged_digest(table):
    """SHA-256 over (relative path, bytes) of every file under staging/, in path order."""
    h = hashlib.sha256()
    root = os.path.join(table, "staging")
    paths = []
    for folder, _, files in os.walk(root):
        paths += [os.path.join(folder, f) for f in files]
    for p in sorted(paths):
        h.update(os.path.relpath(p, root).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest(), len(paths)


def one(binary, conf):
    table = os.path.join(OUT, "wap")
    fresh(table)
    out, wall, rss = run_wap(binary, conf, DATE)
    assert out["status"] == "published", out
    audits = {a["name"]: (a["failing_rows"], a["passed"]) for a in out["audits"]}
    digest, files = staged_digest(os.path.join(table, "lineitem"))
    return {"wall": wall, "rss": rss, "audits": audits, "digest": digest, "files": files,
            "timings": out["timings"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--conf", default="bench/lineitem.yaml")
    args = ap.parse_args()
    ratios, runs = [], {"a": [], "b": []}
    for i in range(args.pairs):
        order = ["a", "b"] if i % 2 == 0 else ["b", "a"]
        got = {}
        for side in order:
            got[side] = one(getattr(args, side), args.conf)
            runs[side].append(got[side])
            r = got[side]
            print(f"pair {i + 1} {side}: {r['wall']:6.2f} s {r['rss'] / 2**20:6.0f} MiB "
                  f"audit {r['timings']['audit_ms']} ms  staged {r['digest'][:16]} "
                  f"({r['files']} files)", file=sys.stderr, flush=True)
        ratios.append(got["b"]["wall"] / got["a"]["wall"])
    digests = {r["digest"] for side in runs for r in runs[side]}
    audits = {json.dumps(r["audits"], sort_keys=True) for side in runs for r in runs[side]}
    med = lambda side, key: statistics.median(r[key] for r in runs[side])  # noqa: E731
    print(f"a: median wall {med('a', 'wall'):.2f} s, peak RSS {med('a', 'rss') / 2**20:.0f} MiB")
    print(f"b: median wall {med('b', 'wall'):.2f} s, peak RSS {med('b', 'rss') / 2**20:.0f} MiB")
    print(f"b / a over {len(ratios)} pairs: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    print(f"staged bytes: {'identical' if len(digests) == 1 else 'DIFFERENT'} "
          f"(sha256 {sorted(digests)[0]})")
    print(f"audit counts: {'identical' if len(audits) == 1 else 'DIFFERENT'}: "
          f"{sorted(audits)[0]}")
    if len(digests) != 1 or len(audits) != 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
