# Shared by scripts/soak.sh and scripts/load-100k.sh (sourced, not run): builds the release
# binaries, starts the mock backend and FastGate on free loopback ports with a temporary SQLite
# database, creates a key, and stops everything on exit. Loopback only.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$CARGO_TARGET_DIR/release
log() { printf '[%s %s] %s\n' "$(basename "$0")" "$(date -u +%H:%M:%S)" "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
health() { curl -fsS "http://127.0.0.1:$FG_PORT/health" 2>/dev/null || curl -sS "http://127.0.0.1:$FG_PORT/health"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }

# start_stack [mock_backend args...]: sets WORK, FG_PID, FG_PORT, MOCK_PID, KEY, PROXY_URL, DB.
start_stack() {
  log "building release binaries"
  (cd "$ROOT" && cargo build --release --quiet --locked --bin fastgate --example mock_backend --example reliability_load)
  ulimit -n 65536 2>/dev/null || true
  WORK=$(mktemp -d /tmp/fastgate-rel.XXXXXX)
  MOCK_PORT=$(free_port)
  "$REL/examples/mock_backend" --listen "127.0.0.1:$MOCK_PORT" "$@" >"$WORK/mock.log" 2>&1 &
  MOCK_PID=$!
  FG_PORT=$(free_port)
  DB=$WORK/fastgate.db
  TOKEN="rel-admin-$RANDOM$RANDOM"
  cat >"$WORK/config.yaml" <<YAML
app: {host: "127.0.0.1", port: $FG_PORT, shutdown_timeout: 30}
database: {url: "sqlite:///$DB"}
security: {admin_token: "$TOKEN"}
api_gateway:
  backend_url: "http://127.0.0.1:$MOCK_PORT"
  backend_path: "/v1/chat/completions"
  real_api_key: "sk-reliability-run"
  routes_file: ""
logging: {level: warn}
YAML
  "$REL/fastgate" --config "$WORK/config.yaml" >"$WORK/fastgate.log" 2>&1 &
  FG_PID=$!
  trap stop_stack EXIT
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$FG_PORT/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  health >/dev/null
  KEY=$(curl -fsS -X POST "http://127.0.0.1:$FG_PORT/admin/keys" -H "X-Admin-Token: $TOKEN" \
    -H 'content-type: application/json' -d '{"source_path":"reliability","permissions":["chat"]}' | json 'd["api_key"]')
  PROXY_URL="http://127.0.0.1:$FG_PORT/proxy/v1/chat/completions"
  log "fastgate pid $FG_PID on :$FG_PORT, mock on :$MOCK_PORT, work dir $WORK"
}

stop_stack() {
  [ -n "${FG_PID:-}" ] && kill "$FG_PID" 2>/dev/null && wait "$FG_PID" 2>/dev/null || true
  [ -n "${MOCK_PID:-}" ] && kill "$MOCK_PID" 2>/dev/null && wait "$MOCK_PID" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "${WORK:-/nonexistent}"
}

loadgen() { "$REL/examples/reliability_load" --url "$PROXY_URL" --key "$KEY" "$@"; }

# wait_audit N: until /health says N rows written and the queue is empty (bounded: 120 s).
wait_audit() {
  local want=$1 written depth
  for _ in $(seq 1 1200); do
    read -r written depth < <(health | json '"%d %d" % (d["audit"]["written"], d["audit"]["queue_depth"])')
    [ -n "$written" ] || { log "cannot read /health"; break; }
    [ "$written" -ge "$want" ] && [ "$depth" -eq 0 ] && break
    sleep 0.1
  done
  echo "$written"
}

# rows_in_db: audit rows in the SQLite file (sqlite3 CLI if present, else python's sqlite3).
rows_in_db() {
  python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from audit_events').fetchone()[0])" "$DB"
}
