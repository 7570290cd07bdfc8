#!/usr/bin/env bash
# Runs the example job: three nightly runs of conf/orders.yaml over the sample data in data/.
# 2024-01-02 fails its audits (a negative amount, an unknown status, a duplicated order), so
# production stays as it was; the re-run of 2024-01-01 is a no-op. The table lands in lake/orders.
set -uo pipefail
cd "$(dirname "$0")"
cargo build --quiet --bin wap || exit 1
wap=./target/debug/wap
[ -n "${CARGO_TARGET_DIR:-}" ] && wap="$CARGO_TARGET_DIR/debug/wap"
rm -rf lake/orders
step() { echo; echo "\$ wap $*"; "$wap" "$@"; echo "(exit code $?)"; }
step run --conf conf/orders.yaml --date 2024-01-01
step run --conf conf/orders.yaml --date 2024-01-02
step run --conf conf/orders.yaml --date 2024-01-03
step run --conf conf/orders.yaml --date 2024-01-01
step log --conf conf/orders.yaml
step query --conf conf/orders.yaml "SELECT order_date, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY order_date ORDER BY order_date"
step rollback --conf conf/orders.yaml --to 1
step query --conf conf/orders.yaml --format csv "SELECT * FROM orders ORDER BY order_id"
exit 0
