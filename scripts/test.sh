#!/usr/bin/env bash
# The test command: the whole suite with a real S3 server on loopback (see scripts/with-s3.sh).
#
#   scripts/test.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-s3.sh cargo test "$@"
