#!/usr/bin/env bash
# Server CPU per request of a `tally` binary, from /proc (utime + stime),
# under wrk: GET /healthz (the HTTP floor), POST /v1/reservations (one line,
# one hot SKU, 50 connections), and POST /v1/reservations/batch (256 holds
# over 16 SKUs, 8 connections). Needs wrk and bc (Debian packages).
#
#   scripts/cpu-per-hold.sh target/release/tally [seconds]
#
# Alternate two binaries a few times to compare them: the machine is noisy.
set -euo pipefail
BIN=$1
SECONDS_MEASURED=${2:-8}
PORT=${PORT:-18080}
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" > "$WORK/log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.1; done
for i in $(seq 0 15); do
  curl -sf -X PUT "localhost:$PORT/v1/items/HOT-$i/w1" -H 'content-type: application/json' \
    -d '{"on_hand": 1000000000}' >/dev/null
done

cat > "$WORK/hold.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"lines":[{"sku":"HOT-0","warehouse":"w1","quantity":1}],"ttl_seconds":600}'
wrk.headers["Content-Type"] = "application/json"
LUA
python3 - "$WORK/batch.lua" <<'PY'
import json, sys
requests = [{"lines": [{"sku": "HOT-%d" % (i % 16), "warehouse": "w1", "quantity": 1}], "ttl_seconds": 600}
            for i in range(256)]
open(sys.argv[1], "w").write('wrk.method = "POST"\nwrk.body = [[%s]]\nwrk.headers["Content-Type"] = "application/json"\n'
                             % json.dumps({"requests": requests}))
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICKS=$(getconf CLK_TCK)

# measure LABEL CONNECTIONS URL UNITS_PER_REQUEST [SCRIPT]
measure() {
  local label=$1 connections=$2 url=$3 units=$4 script=${5:-}
  local args=(-t1 "-c$connections")
  [ -n "$script" ] && args+=(-s "$script")
  wrk "${args[@]}" -d2 "$url" >/dev/null
  local before after out rate requests
  before=$(cpu_ticks)
  out=$(wrk "${args[@]}" "-d$SECONDS_MEASURED" "$url")
  after=$(cpu_ticks)
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  printf '%-10s %10.0f %s/s  %6.2f us server CPU per %s\n' "$label" "$(echo "$rate * $units" | bc)" \
    "$([ "$units" = 1 ] && echo req || echo hold)" \
    "$(echo "($after - $before) * 1000000 / $TICKS / $requests / $units" | bc -l)" \
    "$([ "$units" = 1 ] && echo request || echo hold)"
}

measure healthz 50 "http://127.0.0.1:$PORT/healthz" 1
measure hold 50 "http://127.0.0.1:$PORT/v1/reservations" 1 "$WORK/hold.lua"
measure batch-256 8 "http://127.0.0.1:$PORT/v1/reservations/batch?view=compact" 256 "$WORK/batch.lua"
