#!/usr/bin/env bash
# Property-based API testing of the admin API with schemathesis (PyPI) against the real binary.
#
#   scripts/schemathesis.sh [MAX_EXAMPLES]        # default 30 examples per operation
#
# Starts the debug `fastgate` binary (FASTGATE_BIN to use another) on a free loopback port with a
# temporary SQLite database, loads /openapi.json from it and runs schemathesis authenticated with
# the admin token. Fails on any 5xx (`not_a_server_error`) and on responses that do not match the
# spec (status codes, content types, schemas). Installs schemathesis into a venv (SCHEMATHESIS_VENV,
# default /tmp/fastgate-schemathesis-venv) if `schemathesis` is not on PATH.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAX=${1:-30}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FASTGATE=${FASTGATE_BIN:-$CARGO_TARGET_DIR/debug/fastgate}
if [ -z "${FASTGATE_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --quiet --locked --bin fastgate)
fi

ST=$(command -v schemathesis || true)
if [ -z "$ST" ]; then
  VENV=${SCHEMATHESIS_VENV:-/tmp/fastgate-schemathesis-venv}
  [ -x "$VENV/bin/schemathesis" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q 'schemathesis==4.32.5'; }
  ST=$VENV/bin/schemathesis
fi

WORK=$(mktemp -d /tmp/fastgate-st.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN="st-admin-token-$RANDOM$RANDOM"
cat >"$WORK/config.yaml" <<YAML
app: {host: "127.0.0.1", port: $PORT}
database: {url: "sqlite:///$WORK/fastgate.db"}
security: {admin_token: "$TOKEN", admin_max_failures_per_minute: 1000000}
api_gateway: {backend_url: "http://127.0.0.1:9", backend_path: "/v1/chat/completions", routes_file: ""}
YAML
"$FASTGATE" --config "$WORK/config.yaml" >"$WORK/fastgate.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 200); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/health" >/dev/null

# Seed one key so that id-based operations also meet an existing resource.
curl -fs -X POST "http://127.0.0.1:$PORT/admin/keys" -H "X-Admin-Token: $TOKEN" \
  -H 'content-type: application/json' -d '{"source_path":"st","permissions":["chat"]}' >/dev/null

set +e
cd "$WORK"   # schemathesis writes its .schemathesis/ cache into the working directory
"$ST" run "http://127.0.0.1:$PORT/openapi.json" \
  --url "http://127.0.0.1:$PORT" \
  -H "X-Admin-Token: $TOKEN" \
  --max-examples "$MAX" --seed 1 \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --workers 1 --request-timeout 10
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "--- fastgate log (tail) ---"; tail -n 40 "$WORK/fastgate.log"
fi
exit $rc
