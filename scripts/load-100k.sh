#!/usr/bin/env bash
# Load: N requests (default 100,000) as fast as the machine sustains -> exactly N audit rows;
# then S concurrent open streams (default 1,000) -> all complete, memory per open stream.
#
#   scripts/load-100k.sh [REQUESTS=100000] [STREAMS=1000] [CONCURRENCY=64]
#
# Release build, mock backend, temporary SQLite database. Loopback only.
source "$(dirname "$0")/reliability-common.sh"
N=${1:-100000}
S=${2:-1000}
C=${3:-64}
# Streams last ~4 s (20 chunks 200 ms apart) so they are all open at once while RSS is sampled.
start_stack --chunks 20 --chunk-delay-ms 200
fail=0

log "$N requests, $C in flight"
loadgen --requests "$N" --concurrency "$C" | tee "$WORK/count.json"
OK=$(json 'd["ok"]' <"$WORK/count.json")
WRITTEN=$(wait_audit "$N")
ROWS=$(rows_in_db)
echo "requests=$N ok=$OK audit_rows=$ROWS (health written=$WRITTEN)"
[ "$OK" -eq "$N" ] && [ "$ROWS" -eq "$N" ] && echo "PASS: exactly $N audit rows" || { echo "FAIL: $ROWS rows for $N requests ($OK ok)"; fail=1; }

log "$S concurrent open streams"
IDLE=$(rss_kb "$FG_PID")
LOADGEN_HOLD_MS=1000 loadgen --open-streams "$S" >"$WORK/streams.json" 2>"$WORK/streams.err" &
LG=$!
for _ in $(seq 1 600); do
  grep -q ALL_STREAMS_OPEN "$WORK/streams.err" 2>/dev/null && break
  kill -0 "$LG" 2>/dev/null || break
  sleep 0.05
done
OPEN=$(rss_kb "$FG_PID")
wait "$LG" || true
cat "$WORK/streams.err" "$WORK/streams.json"
SOK=$(json 'd["ok"]' <"$WORK/streams.json")
PER=$(python3 -c "print(f'{($OPEN - $IDLE) / $S:.1f}')")
echo "streams=$S complete=$SOK rss_idle=${IDLE}KiB rss_all_open=${OPEN}KiB per_stream=${PER}KiB"
[ "$SOK" -eq "$S" ] && echo "PASS: all $S streams complete" || { echo "FAIL: $SOK of $S streams complete"; fail=1; }
WRITTEN=$(wait_audit $((N + S)))
ROWS=$(rows_in_db)
[ "$ROWS" -eq $((N + S)) ] && echo "PASS: $ROWS audit rows in total" || { echo "FAIL: $ROWS rows, want $((N + S))"; fail=1; }
exit $fail
