#!/usr/bin/env bash
# Run the nightly-free fuzz targets (server/tests/fuzz.rs) for SECONDS each, in parallel:
# key extraction, SSE/JSON usage scanner (plain and through gzip/deflate), config loader.
# Seeded; the seed of each run is printed (FASTGATE_FUZZ_SEED=... replays it). Inputs are
# structured cases and mutations of the committed corpus in server/tests/fuzz-corpus/ (add a
# file there to keep a regression).
#
#   scripts/fuzz.sh [SECONDS=60]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
FASTGATE_FUZZ_SECONDS=$SECONDS_EACH cargo test --locked -p fastgate-server --test fuzz -- --nocapture --test-threads 4 2>&1 \
  | grep -E '^fuzz |^test |test result'
