#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a deterministic A/B figure for hot-path
# changes on a shared, noisy machine (req/s there moves ±30% from run to run; this moves ~±3%).
#
#   benches/instructions.sh                          # the release build of this tree
#   benches/instructions.sh OLD_BIN NEW_BIN ...      # several fastgate binaries, one line each
#   REQUESTS=2000 ROUNDS=2 benches/instructions.sh
#   DUMP_DIR=/tmp/cg benches/instructions.sh         # also keep each callgrind dump (callgrind_annotate)
#
# For each binary: FastGate runs under `valgrind --tool=callgrind` (mock backend and load
# generator run natively, loopback only), gets 500 warm-up requests, then its counters are zeroed,
# REQUESTS small non-stream chat requests are sent on 8 connections, the audit flush is waited
# for, and the counters are dumped. Printed: total instructions / REQUESTS, for the whole process
# (proxy path, audit worker and the SQLite writer thread alike). Valgrind hides SHA-NI and AVX-512,
# so the absolute count differs from a native run; compare binaries with each other.
set -euo pipefail

REQUESTS=${REQUESTS:-2000}
ROUNDS=${ROUNDS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EX=$CARGO_TARGET_DIR/release/examples

command -v valgrind >/dev/null || {
    SUDO=""
    ((EUID == 0)) || SUDO=sudo
    $SUDO apt-get install -y --no-install-recommends valgrind >/dev/null 2>&1 ||
        { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y --no-install-recommends valgrind >/dev/null; }
}
if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin fastgate --example mock_backend --example loadgen)
fi
BINS=("$@")
((${#BINS[@]})) || BINS=("$CARGO_TARGET_DIR/release/fastgate")

WORK=$(mktemp -d /tmp/fastgate-instr.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p=$1
    while ! port_free "$p"; do p=$((p + 1)); done
    echo "$p"
}
ADMIN=instr-admin-token-5d1c
BODY='{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"Hello"}]}'

count_one() { # binary → instructions per request
    local bin=$1 d port mport vpid mpid key url dump ir
    d=$(mktemp -d "$WORK/run.XXXX")
    mport=$(pick_port 19700)
    port=$(pick_port $((mport + 1)))
    cat >"$d/config.yaml" <<EOF
app:
  host: "127.0.0.1"
  port: $port
database:
  url: "sqlite:///$d/fastgate.db"
security:
  admin_token: "$ADMIN"
api_gateway:
  backend_url: "http://127.0.0.1:$mport"
  backend_path: "/v1/chat/completions"
  real_api_key: "sk-instr"
logging:
  level: "warn"
EOF
    "$EX/mock_backend" --listen "127.0.0.1:$mport" --threads 1 >"$d/mock.log" 2>&1 &
    mpid=$!
    PIDS+=("$mpid")
    valgrind --tool=callgrind --callgrind-out-file="$d/cg.%p" "$bin" --config "$d/config.yaml" >"$d/fg.log" 2>&1 &
    vpid=$!
    PIDS+=("$vpid")
    for _ in $(seq 1 600); do
        curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
        sleep 0.2
    done
    key=$(curl -s -X POST "http://127.0.0.1:$port/admin/keys?token=$ADMIN" -H 'Content-Type: application/json' \
        -d '{"source_path": "bench", "permissions": ["chat"]}' | sed -n 's/.*"api_key" *: *"\([^"]*\)".*/\1/p')
    [[ $key == fg_* ]] || { echo "no key from $bin (see $d/fg.log)" >&2; return 1; }
    url=http://127.0.0.1:$port/proxy/v1/chat/completions
    "$EX/loadgen" count --count 500 --connections 8 --url "$url" --header "X-API-Key: $key" --body "$BODY" >/dev/null
    sleep 1
    callgrind_control -z "$vpid" >/dev/null 2>&1
    "$EX/loadgen" count --count "$REQUESTS" --connections 8 --url "$url" --header "X-API-Key: $key" --body "$BODY" >"$d/count.out"
    sleep 1.5 # the audit flush of the last requests (200 ms) is part of their cost
    callgrind_control -d "$vpid" >/dev/null 2>&1
    sleep 0.5
    kill "$vpid" "$mpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    grep -q " ok=$REQUESTS " "$d/count.out" || { echo "not every request succeeded: $(cat "$d/count.out")" >&2; return 1; }
    dump=$(ls "$d"/cg.*.1 | head -1)
    ir=$(sed -n 's/^summary: *//p' "$dump" | head -1)
    [[ -n ${DUMP_DIR:-} ]] && mkdir -p "$DUMP_DIR" && cp "$dump" "$DUMP_DIR/$(basename "$bin").$RANDOM.callgrind"
    echo $((ir / REQUESTS))
}

printf '%-40s %s\n' "binary" "instructions per request (callgrind; $REQUESTS requests, $ROUNDS rounds)"
for bin in "${BINS[@]}"; do
    results=()
    for _ in $(seq 1 "$ROUNDS"); do results+=("$(count_one "$bin")"); done
    printf '%-40s %s\n' "$(basename "$bin")" "${results[*]}"
done
