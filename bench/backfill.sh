#!/usr/bin/env bash
# What a re-run of a completed backfill costs: `wap backfill` over dates that are all published
# (each must come out `unchanged` without reading its data), timed per date.
#
#   bench/backfill.sh [DATES] [ROWS_PER_DATE] [ROUNDS]      (defaults: 90 20000 5)
#
# Builds nothing: WAP (default target/release/wap) is the binary measured. With
# WAP_BENCH_S3=1 the table lives on the S3 server scripts/with-s3.sh starts (run the script
# under it: scripts/with-s3.sh bench/backfill.sh); otherwise on the local filesystem. Prints,
# over ROUNDS re-runs, the wall time per date (the backfill's elapsed time / DATES) and the
# median of the dates' own times: median with min-max.
set -euo pipefail
cd "$(dirname "$0")/.."
dates=${1:-90}
rows=${2:-20000}
rounds=${3:-5}
wap=$(realpath "${WAP:-target/release/wap}")
[ -x "$wap" ] || { echo "no $wap: cargo build --release, or set WAP" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$work" "$dates" "$rows" <<'EOF'
import datetime, os, sys
work, dates, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = datetime.date(2024, 1, 1)
for d in range(dates):
    day = start + datetime.timedelta(days=d)
    folder = os.path.join(work, "data", day.isoformat())
    os.makedirs(folder)
    with open(os.path.join(folder, "orders.csv"), "w") as f:
        f.write("order_id,customer_id,amount,status,order_ts\n")
        for i in range(rows):
            oid = d * rows + i
            f.write(f"{oid},{oid % 997},{oid % 900 + 1}.{oid % 100:02d},"
                    f"{('placed', 'shipped', 'returned')[oid % 3]},{day}T{i % 24:02d}:00:00\n")
EOF
mkdir -p "$work/conf"
cp audits/orders.yaml "$work/conf/audits.yaml"
table="../lake/orders"
storage=""
if [ "${WAP_BENCH_S3:-0}" = 1 ]; then
  table="s3://${WAP_TEST_S3_BUCKET:?run under scripts/with-s3.sh}/bench-backfill-$$"
  storage=$(printf 'storage:\n  endpoint: %s\n  region: us-east-1\n  allow_http: true\n  path_style: true\n' "$WAP_TEST_S3_ENDPOINT")
fi
cat > "$work/conf/orders.yaml" <<EOF
name: orders
table: $table
partition_by: [order_date]
key: [order_id]
source:
  format: csv
  path: ../data/{date}/
  options: {has_header: true, delimiter: ","}
transform: |
  SELECT order_id, customer_id, CAST(amount AS DECIMAL(18,2)) AS amount, status,
         CAST(order_ts AS DATE) AS order_date
  FROM source
audits: [audits.yaml]
$storage
EOF
to=$(python3 -c "import datetime; print(datetime.date(2024,1,1) + datetime.timedelta(days=$dates - 1))")
args=(backfill --conf "$work/conf/orders.yaml" --from 2024-01-01 --to "$to" --json --progress never)

start=$(date +%s.%N)
"$wap" "${args[@]}" > "$work/first.json"
echo "first backfill: $dates dates of $rows rows in $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s"

for r in $(seq 1 "$rounds"); do
  "$wap" "${args[@]}" > "$work/rerun-$r.json"
done
python3 - "$work" "$rounds" "$dates" <<'EOF'
import json, statistics, sys
work, rounds, dates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_date, own = [], []
for r in range(1, rounds + 1):
    lines = [json.loads(l) for l in open(f"{work}/rerun-{r}.json")]
    summary = lines[-1]["summary"]
    assert summary["unchanged"] == dates, summary
    per_date.append(summary["elapsed_ms"] / dates)
    own.append(statistics.median(l["elapsed_ms"] for l in lines[:-1]))
def spread(xs):
    return f"median {statistics.median(xs):.1f} ms (min {min(xs):.1f}, max {max(xs):.1f})"
print(f"re-run, wall time per date over {rounds} rounds: {spread(per_date)}")
print(f"re-run, each date's own time (median of the dates): {spread(own)}")
EOF
