#!/usr/bin/env bash
# Soak: a steady request rate against a release build for DURATION seconds, RSS of the fastgate
# process sampled every 10 s; passes when the RSS at the end is within 10% of the RSS after the
# first minute (or after 1/10 of the run when it is shorter than 10 minutes), and every request
# has its audit row.
#
#   scripts/soak.sh [DURATION_SECONDS=600] [RATE_PER_SECOND=200]
#
# Every 10th request streams (mock backend: 8 chunks 20 ms apart). Loopback only.
source "$(dirname "$0")/reliability-common.sh"
DURATION=${1:-600}
RATE=${2:-200}
start_stack --chunk-delay-ms 20

BASE_AT=$(( DURATION >= 600 ? 60 : (DURATION / 10 > 10 ? DURATION / 10 : 10) ))
log "soak: $RATE req/s for ${DURATION}s; baseline RSS at ${BASE_AT}s"
loadgen --rate "$RATE" --duration "$DURATION" --concurrency 256 --stream-every 10 >"$WORK/loadgen.json" 2>"$WORK/loadgen.err" &
LG=$!
start=$(date +%s)
BASE=""
printf '%8s %10s\n' "t(s)" "rss(KiB)"
while kill -0 "$LG" 2>/dev/null; do
  sleep 10
  t=$(( $(date +%s) - start ))
  r=$(rss_kb "$FG_PID")
  printf '%8d %10d\n' "$t" "$r"
  if [ -z "$BASE" ] && [ "$t" -ge "$BASE_AT" ]; then BASE=$r; fi
  [ "$t" -gt $(( DURATION + 120 )) ] && { log "loadgen overran"; kill "$LG"; break; }
done
wait "$LG" || true
END=$(rss_kb "$FG_PID")
cat "$WORK/loadgen.json"
OK=$(json 'd["ok"]' <"$WORK/loadgen.json")
SENT=$(json 'd["sent"]' <"$WORK/loadgen.json")
WRITTEN=$(wait_audit "$SENT")
ROWS=$(rows_in_db)
PCT=$(python3 -c "print(f'{(($END - ${BASE:-$END}) / ${BASE:-$END}) * 100:+.1f}')")
echo "requests sent=$SENT ok=$OK audit_rows=$ROWS (health written=$WRITTEN)"
echo "RSS baseline=${BASE:-?} KiB (t=${BASE_AT}s) end=$END KiB change=${PCT}%"
fail=0
python3 -c "import sys; sys.exit(0 if abs($END - ${BASE:-$END}) <= 0.10 * ${BASE:-$END} else 1)" \
  && echo "PASS: end RSS within 10% of the baseline" || { echo "FAIL: end RSS not within 10% of the baseline"; fail=1; }
[ "$ROWS" -eq "$SENT" ] && echo "PASS: one audit row per request" || { echo "FAIL: $ROWS rows for $SENT requests"; fail=1; }
exit $fail
