#!/usr/bin/env bash
# FastGate load benchmark (issue 6): direct / nginx / FastGate side by side in one run.
#
#   benches/load.sh                 # everything, about 4-6 minutes with warm build caches
#   ROUNDS=3 DURATION=8 benches/load.sh
#
# Loopback only (127.0.0.1). Installs wrk and nginx (and curl, sqlite3) from Debian's packages if
# missing, builds the release binaries, starts the mock backend, nginx (plain reverse proxy,
# keepalive upstream pool) and two FastGate instances (audit to SQLite; audit writes off =
# queue of one event), pins the load generator to one core and everything else to the other,
# and prints one table. All processes are stopped on exit.
#
# Closed loop: wrk (Debian) with a Lua script (POST body, X-API-Key header). Open loop at a fixed
# rate, streaming timing, 1,000 open streams and the exact-count run: examples/loadgen.rs (a
# small hyper client in this repo; the open loop schedules sends on a nanosleep dispatcher thread
# and measures latency from the scheduled send time, so there is no coordinated omission). The
# streaming run sends the same timestamped events direct, through nginx, through the bare hyper
# proxy and through FastGate, so what any proxy on the server core adds per event is measured
# beside what FastGate adds.
#
# Environment knobs: ROUNDS (3), DURATION (8 s per closed-loop run), CONNS (32), RATE (500),
# RATE_SECONDS (10), STREAMS (20 interleaved rounds), HOLD (1000), AUDIT_N (100000),
# LOADGEN_CPU (0), SERVER_CPU (1), PORT_BASE (19400), FASTGATE_THREADS (unset: runtime default),
# FASTGATE_BIN (another fastgate binary, e.g. a copy of an earlier build, for before/after),
# FASTGATE_BIN_B (a second fastgate binary run as one more target in every round: before/after),
# QUICK=1 (closed loop only, no memory/open-loop/stream/count runs), STREAM_AWAKE=0 (skip the
# streaming run that keeps both vCPUs awake with SCHED_IDLE busy loops; =first runs it first),
# PERF_OUT (file: perf record of FastGate during the first closed-loop run), SKIP_BUILD=1
# (use the binaries already in $CARGO_TARGET_DIR/release).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
RATE=${RATE:-500}
RATE_SECONDS=${RATE_SECONDS:-10}
STREAMS=${STREAMS:-20}
HOLD=${HOLD:-1000}
AUDIT_N=${AUDIT_N:-100000}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT_BASE=${PORT_BASE:-19400}
SCRIPT_DEADLINE=$((SECONDS + ${MAX_SECONDS:-900}))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release

log() { printf '[load.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
check_deadline() { ((SECONDS < SCRIPT_DEADLINE)) || die "time limit reached"; }

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_pkgs+=(nginx-light)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v sqlite3 >/dev/null || need_pkgs+=(sqlite3)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
    log "installing from Debian: ${need_pkgs[*]}"
    SUDO=""
    ((EUID == 0)) || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null 2>&1; then
        $SUDO apt-get update -qq >/dev/null
        $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
NCPU=$(nproc)
((NCPU >= 2)) || log "warning: only $NCPU CPU; load generator and servers share it"
((LOADGEN_CPU < NCPU && SERVER_CPU < NCPU)) || { LOADGEN_CPU=0; SERVER_CPU=0; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 4 * HOLD)) || log "warning: open-file limit $(ulimit -n) may be too low for $HOLD streams"

# ---------------------------------------------------------------- build
log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
if [[ -z ${SKIP_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin fastgate --example mock_backend --example loadgen --example bare_proxy)
fi
FASTGATE=${FASTGATE_BIN:-$BIN/fastgate} # FASTGATE_BIN: compare another build of the gateway
MOCK=$BIN/examples/mock_backend
LOADGEN=$BIN/examples/loadgen
BARE=$BIN/examples/bare_proxy

# ---------------------------------------------------------------- processes, cleanup
WORK=$(mktemp -d /tmp/fastgate-load.XXXXXX)
PIDS=()
SPINNERS=() # busy loops of the awake streaming run, while it runs
cleanup() {
    local p
    for p in "${PIDS[@]}" "${SPINNERS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p=$1
    while ! port_free "$p"; do
        p=$((p + 1))
        ((p < $1 + 200)) || die "no free port near $1"
    done
    echo "$p"
}
wait_port() {
    local i
    for i in $(seq 1 200); do
        port_free "$1" || return 0
        sleep 0.05
    done
    die "nothing listening on 127.0.0.1:$1 (see $WORK/*.log)"
}

P_MOCK=$(pick_port "$PORT_BASE")
P_NGINX=$(pick_port $((P_MOCK + 1)))
P_FG=$(pick_port $((P_NGINX + 1)))
P_FG_OFF=$(pick_port $((P_FG + 1)))
P_FG_B=$(pick_port $((P_FG_OFF + 1)))
P_SSE=$(pick_port $((P_FG_B + 1))) # loadgen's own timestamping SSE upstream
P_BARE=$(pick_port $((P_SSE + 1)))
P_FG_HOLD=$(pick_port $((P_BARE + 1)))
P_NGINX_SSE=$(pick_port $((P_FG_HOLD + 1))) # nginx and the bare proxy in front of loadgen's SSE upstream
P_BARE_SSE=$(pick_port $((P_NGINX_SSE + 1)))
BACKEND_PATH=/miniai/v2/chat/completions
ADMIN=bench-admin-token-3f9a
REAL_KEY=sk-real-upstream-bench

on_loadgen_cpu() { taskset -c "$LOADGEN_CPU" "$@"; }

# Mock backend: one worker thread (it shares the server core with the gateway and nginx).
taskset -c "$SERVER_CPU" "$MOCK" --listen "127.0.0.1:$P_MOCK" --chunks 8 --chunk-delay-ms 50 --threads 1 \
    >"$WORK/mock.log" 2>&1 &
PID_MOCK=$!
PIDS+=("$PID_MOCK")
wait_port "$P_MOCK"

# nginx: a plain reverse proxy with a keepalive upstream pool, its own prefix and config.
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    upstream backend {
        server 127.0.0.1:$P_MOCK;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
    # The streaming comparison: the same plain proxy in front of loadgen's SSE upstream.
    upstream sse {
        server 127.0.0.1:$P_SSE;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$P_NGINX_SSE;
        location / {
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
chmod -R a+rwx "$WORK/nginx"
taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" \
    >"$WORK/nginx.log" 2>&1 &
PIDS+=($!)
wait_port "$P_NGINX"
PID_NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | head -1 || true)

# The floor of the Rust stack: hyper server + hyper-util pooled client and nothing else.
taskset -c "$SERVER_CPU" "$BARE" --listen "127.0.0.1:$P_BARE" --upstream "http://127.0.0.1:$P_MOCK" \
    >"$WORK/bare.log" 2>&1 &
PID_BARE=$!
PIDS+=("$PID_BARE")
wait_port "$P_BARE"
taskset -c "$SERVER_CPU" "$BARE" --listen "127.0.0.1:$P_BARE_SSE" --upstream "http://127.0.0.1:$P_SSE" \
    >"$WORK/bare-sse.log" 2>&1 &
PIDS+=($!)
wait_port "$P_BARE_SSE"

# FastGate: the seed config format, SQLite in the temp dir. The second instance differs only in
# audit.queue_capacity: 1 ("audit writes off": the audit layer still builds every event, but
# almost all are dropped at the full queue instead of being written to SQLite).
fastgate_config() { # port db queue_capacity routes_file
    cat <<EOF
app:
  name: "M-FastGate"
  version: "0.1.0"
  debug: false
  host: "127.0.0.1"
  port: $1
  shutdown_timeout: 5

database:
  url: "sqlite:///$2"
  echo: false

security:
  admin_token: "$ADMIN"
  key_prefix: "fg_"
  default_expiry_days: 365

api_gateway:
  backend_url: "http://127.0.0.1:$P_MOCK"
  backend_path: "$BACKEND_PATH"
  real_api_key: "$REAL_KEY"
  strip_headers:
    - "host"
    - "x-api-key"
    - "authorization"
    - "x-forwarded-for"
  async_audit: true
  timeout: 30
  routes_file: "$4"

audit:
  queue_capacity: $3

logging:
  level: "warn"
EOF
}
start_fastgate() { # name port queue_capacity [binary] → sets PID_<name>
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/routes.yaml" <<EOF
routes:
  - path: "/proxy/sse/v1/chat/completions"
    backend_url: "http://127.0.0.1:$P_SSE"
    backend_path: "/v1/chat/completions"
EOF
    fastgate_config "$2" "$WORK/$1/fastgate.db" "$3" "$WORK/$1/routes.yaml" >"$WORK/$1/config.yaml"
    local threads=()
    [[ -n ${FASTGATE_THREADS:-} ]] && threads=(env "TOKIO_WORKER_THREADS=$FASTGATE_THREADS")
    taskset -c "$SERVER_CPU" "${threads[@]}" "${4:-$FASTGATE}" --config "$WORK/$1/config.yaml" >"$WORK/$1/log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$1" '%s' "$!"
    wait_port "$2"
}
start_fastgate fg "$P_FG" 65536
start_fastgate fgoff "$P_FG_OFF" 1
# A separate instance holds the 1,000 open streams, so that the load runs' instance ("fg") reports
# the peak RSS of the load runs alone; the stream instance's own peak is reported beside it.
[[ -z ${QUICK:-} ]] && start_fastgate fghold "$P_FG_HOLD" 65536
TARGETS=(direct nginx bare fg fgoff)
if [[ -n ${FASTGATE_BIN_B:-} ]]; then # a second build (e.g. before a change), audit on, same run
    start_fastgate fgb "$P_FG_B" 65536 "$FASTGATE_BIN_B"
    TARGETS+=(fgb)
fi

create_key() { # port → prints the key
    local out
    out=$(curl -s -X POST "http://127.0.0.1:$1/admin/keys?token=$ADMIN" \
        -H "Content-Type: application/json" \
        -d '{"source_path": "bench", "permissions": ["chat"], "expires_days": 30}')
    sed -n 's/.*"api_key" *: *"\([^"]*\)".*/\1/p' <<<"$out"
}
KEY=$(create_key "$P_FG")
KEY_OFF=$(create_key "$P_FG_OFF")
[[ -n ${PID_fghold:-} ]] && KEY_HOLD=$(create_key "$P_FG_HOLD")
[[ -n ${PID_fgb:-} ]] && KEY_B=$(create_key "$P_FG_B")
[[ $KEY == fg_* && $KEY_OFF == fg_* ]] || die "could not create keys (see $WORK/fg/log)"

BODY='{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"Hello"}]}'
SBODY='{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"Hello"}],"stream":true}'
U_DIRECT=http://127.0.0.1:$P_MOCK$BACKEND_PATH
U_NGINX=http://127.0.0.1:$P_NGINX$BACKEND_PATH
U_BARE=http://127.0.0.1:$P_BARE$BACKEND_PATH
U_FG=http://127.0.0.1:$P_FG/proxy$BACKEND_PATH
U_FGOFF=http://127.0.0.1:$P_FG_OFF/proxy$BACKEND_PATH

# Sanity: every target answers 200, FastGate rejects a bad key, the backend sees the real key.
for u in "$U_DIRECT" "$U_NGINX" "$U_BARE"; do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -X POST "$u" -H 'Content-Type: application/json' -d "$BODY") == 200 ]] ||
        die "$u does not answer 200"
done
[[ $(curl -s -o /dev/null -w '%{http_code}' -X POST "$U_FG" -H "X-API-Key: $KEY" -H 'Content-Type: application/json' -d "$BODY") == 200 ]] ||
    die "FastGate does not answer 200"
[[ $(curl -s -o /dev/null -w '%{http_code}' -X POST "$U_FG" -H "X-API-Key: fg_wrong" -d "$BODY") == 401 ]] ||
    die "FastGate accepted a wrong key"
curl -s "http://127.0.0.1:$P_MOCK/__mock/last" | grep -q "Bearer $REAL_KEY" || die "real key not injected"

wrk_script() { # key → lua file
    local f=$WORK/wrk-$1.lua
    cat >"$f" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "$1"
EOF
    echo "$f"
}
LUA_FG=$(wrk_script "$KEY")
LUA_FGOFF=$(wrk_script "$KEY_OFF")
[[ -n ${KEY_HOLD:-} ]] && LUA_FGHOLD=$(wrk_script "$KEY_HOLD")
U_FGHOLD=http://127.0.0.1:$P_FG_HOLD/proxy$BACKEND_PATH
[[ -n ${KEY_B:-} ]] && LUA_FGB=$(wrk_script "$KEY_B")

cpu_ticks() { # pid → utime+stime in clock ticks
    [[ -n $1 && -r /proc/$1/stat ]] || { echo 0; return; }
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
cpu_split() { # pid → "utime stime" in clock ticks
    [[ -n $1 && -r /proc/$1/stat ]] || { echo "0 0"; return; }
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'
}
TCK=$(getconf CLK_TCK)

# wrk run → "rps p50_ms p99_ms nreq non2xx server_cpu_us_per_req first_pid_user_us first_pid_sys_us"
# (the first pid is the proxy; for `direct`, the mock itself)
run_wrk() { # url lua seconds pid...
    local url=$1 lua=$2 secs=$3
    shift 3
    local before=0 after=0 p out u0=0 s0=0 u1=0 s1=0
    for p in "$@"; do before=$((before + $(cpu_ticks "$p"))); done
    (($#)) && read -r u0 s0 < <(cpu_split "$1")
    out=$(on_loadgen_cpu wrk -t1 -c"$CONNS" -d"${secs}s" --latency -s "$lua" "$url" 2>&1)
    for p in "$@"; do after=$((after + $(cpu_ticks "$p"))); done
    (($#)) && read -r u1 s1 < <(cpu_split "$1")
    awk -v ticks=$((after - before)) -v tck="$TCK" -v pu=$((u1 - u0)) -v ps=$((s1 - s0)) '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /requests in/ { n = $1 }
        /Non-2xx/ { bad = $NF }
        /Socket errors/ { bad = bad "+sock" }
        END { printf "%.0f %.3f %.3f %d %s %.1f %.1f %.1f\n", rps, p50, p99, n, (bad == "" ? 0 : bad), (n > 0 ? ticks / tck * 1e6 / n : 0),
              (n > 0 ? pu / tck * 1e6 / n : 0), (n > 0 ? ps / tck * 1e6 / n : 0) }' <<<"$out"
}

busy_check() {
    local n
    n=$(pgrep -c rustc || true)
    ((n == 0)) || log "note: $n rustc process(es) running (someone is building): figures are noisier"
    log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print 0 } else if (NR % 2) { print a[(NR + 1) / 2] } else { print (a[NR / 2] + a[NR / 2 + 1]) / 2 } }'; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }

busy_check

# ---------------------------------------------------------------- 1. memory per open stream
# First, on a fresh (warmed-up) gateway, so that freed load-run memory is not reused by streams.
log "warm-up"
# Direct and nginx get the same request bytes (the X-API-Key header included).
LUA_NONE=$LUA_FG
run_wrk "$U_DIRECT" "$LUA_NONE" 2 >/dev/null
run_wrk "$U_NGINX" "$LUA_NONE" 2 >/dev/null
run_wrk "$U_BARE" "$LUA_NONE" 2 >/dev/null
run_wrk "$U_FG" "$LUA_FG" 2 >/dev/null
run_wrk "$U_FGOFF" "$LUA_FGOFF" 2 >/dev/null
[[ -n ${PID_fghold:-} ]] && run_wrk "$U_FGHOLD" "$LUA_FGHOLD" 2 >/dev/null
[[ -n ${PID_fgb:-} ]] && run_wrk "http://127.0.0.1:$P_FG_B/proxy$BACKEND_PATH" "$LUA_FGB" 2 >/dev/null
sleep 1
RSS_IDLE=$(rss_kib "$PID_fg")
if [[ -z ${QUICK:-} ]]; then
RSS_HOLD_IDLE=$(rss_kib "$PID_fghold")
log "memory: $HOLD concurrent open streams through FastGate"
on_loadgen_cpu "$LOADGEN" hold --url "$U_FGHOLD" --count "$HOLD" --hold-ms 3000 \
    --header "X-API-Key: $KEY_HOLD" --header "x-mock-chunks: 40" --header "x-mock-chunk-delay-ms: 500" \
    --body "$SBODY" >"$WORK/hold.out" 2>&1 &
HOLD_PID=$!
PIDS+=("$HOLD_PID")
for _ in $(seq 1 600); do
    grep -q READY "$WORK/hold.out" && break
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.05
done
grep -q READY "$WORK/hold.out" || die "streams did not open: $(cat "$WORK/hold.out")"
sleep 1
RSS_HOLD=$(rss_kib "$PID_fghold")
wait "$HOLD_PID" || die "hold run failed: $(cat "$WORK/hold.out")"
PER_STREAM_KIB=$(awk -v a="$RSS_HOLD_IDLE" -v b="$RSS_HOLD" -v n="$HOLD" 'BEGIN { printf "%.1f", (b - a) / n }')
sleep 1

fi

# ---------------------------------------------------------------- 2. closed loop, rounds
declare -A R
for r in $(seq 1 "$ROUNDS"); do
    check_deadline
    busy_check
    log "closed loop round $r/$ROUNDS: $CONNS connections, ${DURATION}s each"
    R[direct,$r]=$(run_wrk "$U_DIRECT" "$LUA_NONE" "$DURATION" "$PID_MOCK")
    R[nginx,$r]=$(run_wrk "$U_NGINX" "$LUA_NONE" "$DURATION" "$PID_NGINX_WORKER" "$PID_MOCK")
    R[bare,$r]=$(run_wrk "$U_BARE" "$LUA_NONE" "$DURATION" "$PID_BARE" "$PID_MOCK")
    if [[ -n ${PERF_OUT:-} && $r == 1 ]] && command -v perf >/dev/null; then
        # Profile FastGate during the first closed-loop run (software clock: works in VMs).
        perf record -q -e cpu-clock -F 999 --call-graph "${PERF_CALLGRAPH:-dwarf,16384}" -p "$PID_fg" -o "$PERF_OUT" -- sleep "$DURATION" \
            >/dev/null 2>&1 &
        PERF_PID=$!
    fi
    R[fg,$r]=$(run_wrk "$U_FG" "$LUA_FG" "$DURATION" "$PID_fg" "$PID_MOCK")
    [[ -n ${PERF_PID:-} ]] && { wait "$PERF_PID" || true; PERF_PID=""; }
    R[fgoff,$r]=$(run_wrk "$U_FGOFF" "$LUA_FGOFF" "$DURATION" "$PID_fgoff" "$PID_MOCK")
    [[ -n ${PID_fgb:-} ]] &&
        R[fgb,$r]=$(run_wrk "http://127.0.0.1:$P_FG_B/proxy$BACKEND_PATH" "$LUA_FGB" "$DURATION" "$PID_fgb" "$PID_MOCK")
    for t in "${TARGETS[@]}"; do log "  $t: ${R[$t,$r]}"; done
done
field() { # target fieldno → values of all rounds, one per line
    local r
    for r in $(seq 1 "$ROUNDS"); do awk -v f="$2" '{ print $f }' <<<"${R[$1,$r]}"; done
}
ratio_rounds() { # a b → per-round rps ratios a/b
    local r
    for r in $(seq 1 "$ROUNDS"); do
        awk -v a="$(awk '{print $1}' <<<"${R[$1,$r]}")" -v b="$(awk '{print $1}' <<<"${R[$2,$r]}")" \
            'BEGIN { printf "%.3f\n", (b > 0 ? a / b : 0) }'
    done
}

if [[ -n ${QUICK:-} ]]; then # QUICK=1: closed loop only
    for t in "${TARGETS[@]}"; do
        printf '%-8s req/s %8s  cpu µs/req %6s (proxy user %5s sys %5s)  rounds: %s\n' "$t" "$(field "$t" 1 | median)" \
            "$(field "$t" 6 | median)" "$(field "$t" 7 | median)" "$(field "$t" 8 | median)" "$(field "$t" 1 | paste -sd' ')"
    done
    printf 'FastGate/nginx %s  bare/nginx %s  FastGate/bare %s  audit on/off %s\n' "$(ratio_rounds fg nginx | median)" \
        "$(ratio_rounds bare nginx | median)" "$(ratio_rounds fg bare | median)" "$(ratio_rounds fg fgoff | median)"
    [[ -n ${PID_fgb:-} ]] && printf 'FastGate/FastGate B %s\n' "$(ratio_rounds fg fgb | median)"
    printf 'RSS fg: %s KiB, peak %s KiB\n' "$(rss_kib "$PID_fg")" "$(hwm_kib "$PID_fg")"
    exit 0
fi

# ---------------------------------------------------------------- 3. open loop at a fixed rate
check_deadline
busy_check
log "open loop: $RATE req/s for ${RATE_SECONDS}s, direct then FastGate (latency from scheduled send)"
on_loadgen_cpu "$LOADGEN" rate --rate "$RATE" --seconds "$RATE_SECONDS" --warmup 2 \
    --url "$U_DIRECT" --url "$U_FG" --url "$U_DIRECT" --url "$U_FG" \
    --header "X-API-Key: $KEY" --body "$BODY" >"$WORK/rate.out" 2>&1 || die "rate run: $(cat "$WORK/rate.out")"
rate_field() { # url key → median over the runs for that URL
    grep "^rate url=$1 " "$WORK/rate.out" | tr ' ' '\n' | sed -n "s/^$2=//p" | median
}

# ---------------------------------------------------------------- 4. streaming
check_deadline
log "streaming: $STREAMS interleaved rounds (direct, nginx, bare hyper proxy, FastGate), 8 events 50 ms apart"
# The upstream is loadgen itself (--serve): each event carries its send instant, so the delay of
# every single event is measured; the mock backend's millisecond timer would blur it. nginx and the
# bare hyper proxy stream the same events on the same core as FastGate: what any proxy on this
# machine's other vCPU adds to an event.
U_SSE_DIRECT=http://127.0.0.1:$P_SSE/v1/chat/completions
U_SSE_NGINX=http://127.0.0.1:$P_NGINX_SSE/v1/chat/completions
U_SSE_BARE=http://127.0.0.1:$P_BARE_SSE/v1/chat/completions
U_SSE_FG=http://127.0.0.1:$P_FG/proxy/sse/v1/chat/completions
stream_run() { # output file: one interleaved streaming run through the four paths
    on_loadgen_cpu "$LOADGEN" stream --serve "$P_SSE" --events 8 --gap-ms 50 --count "$STREAMS" \
        --url "$U_SSE_DIRECT" --url "$U_SSE_NGINX" --url "$U_SSE_BARE" --url "$U_SSE_FG" \
        --header "X-API-Key: $KEY" --body "$SBODY" >"$1" 2>&1 || die "stream run: $(cat "$1")"
}
# The same run again with both vCPUs kept awake: a busy loop at SCHED_IDLE priority on each CPU
# yields at once to any runnable task, but the vCPU never halts, so an event never waits for the
# hypervisor to wake a halted vCPU. If the worst event shrinks there, that wake-up is a likely
# cause. STREAM_AWAKE=first runs the awake run first (to rule out the order), 0 skips it.
stream_awake_run() { # output file
    local cpu
    for cpu in "$LOADGEN_CPU" "$SERVER_CPU"; do
        taskset -c "$cpu" chrt --idle 0 bash -c 'while :; do :; done' &
        SPINNERS+=($!)
    done
    stream_run "$1"
    kill "${SPINNERS[@]}" 2>/dev/null || true
    wait "${SPINNERS[@]}" 2>/dev/null || true
    SPINNERS=()
}
AWAKE=${STREAM_AWAKE:-1}
if [[ $AWAKE != 0 ]] && ! command -v chrt >/dev/null; then
    log "chrt not found: no streaming run with the vCPUs kept awake"
    AWAKE=0
fi
if [[ $AWAKE == first ]]; then
    log "streaming with both vCPUs kept awake (SCHED_IDLE busy loops), then without"
    stream_awake_run "$WORK/stream-awake.out"
fi
stream_run "$WORK/stream.out"
if [[ $AWAKE == 1 ]]; then
    log "streaming again with both vCPUs kept awake (SCHED_IDLE busy loops)"
    stream_awake_run "$WORK/stream-awake.out"
fi
sfield() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
stream_line() { grep "^stream url=$2 " "$1"; } # file url
stream_table() { # file: the four paths' TTFB and event transit
    local t v
    printf '| target   | TTFB p50 ms | TTFB max ms | event transit p50 ms | p99 ms | max ms (n) |\n'
    printf '|----------|-------------|-------------|----------------------|--------|------------|\n'
    for t in "direct $U_SSE_DIRECT" "nginx $U_SSE_NGINX" "bare $U_SSE_BARE" "FastGate $U_SSE_FG"; do
        v=$(stream_line "$1" "${t#* }")
        printf '| %-8s | %s | %s | %s | %s | %s (%s) |\n' "${t%% *}" "$(sfield "$v" ttfb_p50_ms)" "$(sfield "$v" ttfb_max_ms)" "$(sfield "$v" transit_p50_ms)" "$(sfield "$v" transit_p99_ms)" "$(sfield "$v" transit_max_ms)" "$(sfield "$v" transit_n)"
    done
}
S_NGINX=$(stream_line "$WORK/stream.out" "$U_SSE_NGINX")
S_BARE=$(stream_line "$WORK/stream.out" "$U_SSE_BARE")
S_FG=$(stream_line "$WORK/stream.out" "$U_SSE_FG")
S_ADDED=$(grep "^stream_added url=$U_SSE_FG " "$WORK/stream.out")

# ---------------------------------------------------------------- 5. audit exactly once
check_deadline
log "audit: $AUDIT_N requests at full load, then count the rows"
db_rows() { sqlite3 "$WORK/fg/fastgate.db" 'SELECT COUNT(*) FROM audit_events;' 2>/dev/null || echo "?"; }
settle_rows() { # wait until the row count stops changing (audit flush), at most 10 s
    local prev="" cur i
    for i in $(seq 1 50); do
        cur=$(db_rows)
        [[ $cur == "$prev" ]] && { echo "$cur"; return; }
        prev=$cur
        sleep 0.2
    done
    echo "$cur"
}
ROWS_BEFORE=$(settle_rows)
on_loadgen_cpu "$LOADGEN" count --count "$AUDIT_N" --connections "$CONNS" --url "$U_FG" \
    --header "X-API-Key: $KEY" --body "$BODY" >"$WORK/count.out" 2>&1 || die "count run: $(cat "$WORK/count.out")"
sleep 0.5
ROWS_AFTER=$(settle_rows)
AUDIT_OK=$(sed -n 's/.* ok=\([0-9]*\) .*/\1/p' "$WORK/count.out")
AUDIT_RPS=$(sed -n 's/.* rps=\([0-9]*\).*/\1/p' "$WORK/count.out")
ROWS_NEW=$((ROWS_AFTER - ROWS_BEFORE))
DROPPED=$(curl -s "http://127.0.0.1:$P_FG/health" | grep -o '"dropped" *: *[0-9]*' | head -1 | tr -d ' "' || true)

# ---------------------------------------------------------------- 6. memory after the runs
RSS_END=$(rss_kib "$PID_fg")
HWM_END=$(hwm_kib "$PID_fg")
NGINX_HWM=$(hwm_kib "$PID_NGINX_WORKER" 2>/dev/null || echo "?")

# ---------------------------------------------------------------- table
med() { field "$1" "$2" | median; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cat <<EOF

FastGate load benchmark — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPU ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM
loadgen on CPU $LOADGEN_CPU; mock backend (1 thread) + nginx (1 worker) + FastGate on CPU $SERVER_CPU; loopback; $ROUNDS rounds, median shown

Closed loop: wrk -t1 -c$CONNS -d${DURATION}s, POST small non-stream chat request ($(printf %s "$BODY" | wc -c) B)
| target                         | req/s  | p50 ms | p99 ms | server CPU µs/req | proxy user / sys µs/req | req/s per round |
|--------------------------------|--------|--------|--------|-------------------|-------------------------|-----------------|
| direct (mock backend)          | $(printf '%6s' "$(med direct 1)") | $(printf '%6s' "$(med direct 2)") | $(printf '%6s' "$(med direct 3)") | $(printf '%17s' "$(med direct 6)") | $(printf '%23s' "$(med direct 7) / $(med direct 8)") | $(field direct 1 | paste -sd' ') |
| nginx reverse proxy            | $(printf '%6s' "$(med nginx 1)") | $(printf '%6s' "$(med nginx 2)") | $(printf '%6s' "$(med nginx 3)") | $(printf '%17s' "$(med nginx 6)") | $(printf '%23s' "$(med nginx 7) / $(med nginx 8)") | $(field nginx 1 | paste -sd' ') |
| bare hyper proxy (floor)       | $(printf '%6s' "$(med bare 1)") | $(printf '%6s' "$(med bare 2)") | $(printf '%6s' "$(med bare 3)") | $(printf '%17s' "$(med bare 6)") | $(printf '%23s' "$(med bare 7) / $(med bare 8)") | $(field bare 1 | paste -sd' ') |
| FastGate (audit → SQLite)      | $(printf '%6s' "$(med fg 1)") | $(printf '%6s' "$(med fg 2)") | $(printf '%6s' "$(med fg 3)") | $(printf '%17s' "$(med fg 6)") | $(printf '%23s' "$(med fg 7) / $(med fg 8)") | $(field fg 1 | paste -sd' ') |
| FastGate (audit writes off)    | $(printf '%6s' "$(med fgoff 1)") | $(printf '%6s' "$(med fgoff 2)") | $(printf '%6s' "$(med fgoff 3)") | $(printf '%17s' "$(med fgoff 6)") | $(printf '%23s' "$(med fgoff 7) / $(med fgoff 8)") | $(field fgoff 1 | paste -sd' ') |
$([[ -n ${PID_fgb:-} ]] && echo "| FastGate B (FASTGATE_BIN_B)    | $(printf '%6s' "$(med fgb 1)") | $(printf '%6s' "$(med fgb 2)") | $(printf '%6s' "$(med fgb 3)") | $(printf '%17s' "$(med fgb 6)") | $(printf '%23s' "$(med fgb 7) / $(med fgb 8)") | $(field fgb 1 | paste -sd' ') |")
(server CPU: proxy + mock backend CPU time from /proc per request; proxy user / sys: the proxy alone (for direct: the mock), user space and kernel; non-2xx/socket errors: $(for t in "${TARGETS[@]}"; do field "$t" 5; done | sort -u | paste -sd,))

| ratio (median of per-round ratios) | value | target |
|------------------------------------|-------|--------|
| FastGate / nginx                   | $(ratio_rounds fg nginx | median) | ≥ 0.75 |
| FastGate / direct                  | $(ratio_rounds fg direct | median) | – |
| bare hyper proxy / nginx           | $(ratio_rounds bare nginx | median) | – |
| FastGate / bare hyper proxy        | $(ratio_rounds fg bare | median) | – |
| nginx / direct                     | $(ratio_rounds nginx direct | median) | – |
| audit on / audit writes off        | $(ratio_rounds fg fgoff | median) | ≥ 0.90 |
$([[ -n ${PID_fgb:-} ]] && echo "| FastGate / FastGate B              | $(ratio_rounds fg fgb | median) | – |")

Open loop at $RATE req/s, ${RATE_SECONDS}s × 2 per target, latency from the scheduled send time (µs, median of 2 runs)
| target   | p50 | p90 | p99 | p99.9 | max |
|----------|-----|-----|-----|-------|-----|
| direct   | $(rate_field "$U_DIRECT" p50_us) | $(rate_field "$U_DIRECT" p90_us) | $(rate_field "$U_DIRECT" p99_us) | $(rate_field "$U_DIRECT" p999_us) | $(rate_field "$U_DIRECT" max_us) |
| FastGate | $(rate_field "$U_FG" p50_us) | $(rate_field "$U_FG" p90_us) | $(rate_field "$U_FG" p99_us) | $(rate_field "$U_FG" p999_us) | $(rate_field "$U_FG" max_us) |
| added    | $(awk -v a="$(rate_field "$U_FG" p50_us)" -v b="$(rate_field "$U_DIRECT" p50_us)" 'BEGIN{printf "%.1f", a-b}') (target ≤ 200) | $(awk -v a="$(rate_field "$U_FG" p90_us)" -v b="$(rate_field "$U_DIRECT" p90_us)" 'BEGIN{printf "%.1f", a-b}') | $(awk -v a="$(rate_field "$U_FG" p99_us)" -v b="$(rate_field "$U_DIRECT" p99_us)" 'BEGIN{printf "%.1f", a-b}') (target ≤ 1000) | | |

Streaming: $STREAMS interleaved rounds, 8 events 50 ms apart (+ [DONE]); upstream = loadgen, events carry their send instant
$(stream_table "$WORK/stream.out")
TTFB added (p50): $(sfield "$S_ADDED" ttfb_added_ms) ms (target ≤ 1). Worst event delay through FastGate (transit max, includes loopback): $(sfield "$S_FG" transit_max_ms) ms (target ≤ 1); through nginx $(sfield "$S_NGINX" transit_max_ms) ms, the bare hyper proxy $(sfield "$S_BARE" transit_max_ms) ms.
$(if [[ $AWAKE != 0 ]]; then
    printf '\nThe same streaming run with both vCPUs kept awake (SCHED_IDLE busy loops: no vCPU halts between events; run %s)\n' "$([[ $AWAKE == first ]] && echo first || echo second)"
    stream_table "$WORK/stream-awake.out"
fi)

Memory (FastGate, from /proc/PID/status)
| what | value | target |
|------|-------|--------|
| RSS idle after warm-up | $(mib "$RSS_IDLE") MiB | – |
| peak RSS (VmHWM) after all load runs (closed loop, open loop, streaming, $AUDIT_N-request count) | $(mib "$HWM_END") MiB (current $(mib "$RSS_END") MiB; nginx worker peak $(mib "${NGINX_HWM/\?/0}") MiB) | ≤ 40 MiB |
| $HOLD concurrent open streams (second instance): RSS | $(mib "$RSS_HOLD_IDLE") → $(mib "$RSS_HOLD") MiB → $PER_STREAM_KIB KiB per stream; that instance's peak $(mib "$(hwm_kib "$PID_fghold")") MiB | ≤ 40 KiB |

Audit exactly once
| requests sent | 2xx | new audit rows | at req/s | queue |
|---------------|-----|----------------|----------|-------|
| $AUDIT_N | $AUDIT_OK | $ROWS_NEW | $AUDIT_RPS | ${DROPPED:-?} |
$( [[ $ROWS_NEW == "$AUDIT_N" ]] && echo "OK: exactly $AUDIT_N rows" || echo "MISMATCH: $ROWS_NEW rows for $AUDIT_N requests")
EOF
