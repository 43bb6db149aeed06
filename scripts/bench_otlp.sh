#!/usr/bin/env bash
# bench_otlp.sh — `make bench` part 6: what exporting traces costs a served
# request. `chorus serve` (no data folder) runs bench_fanout (2 concurrent
# upstream calls per request: 3 spans, the run's and its 2 attempts') under
# wrk, alternately without telemetry and with telemetry pointed at an OTLP
# sink (the benchmark nginx, which answers 200 to POST /v1/traces as to any
# path: the receiver's own cost is not measured). Per run: req/s, p50, the
# server's CPU per request, and the spans exported and dropped (from
# /metrics). RUNS (default 3) pairs; medians at the end, with the commands.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8s}
source scripts/bench/upstream.sh
bench_start # WORK, PIDS (cleaned up at exit) and the upstream

# start_chorus off|on → sets CHORUS_URL and CHORUS_PID
start_chorus() {
  local telemetry=""
  if [ "$1" = on ]; then telemetry="telemetry = { otlp_endpoint = \"$UPSTREAM\" },"; fi
  cat > "$WORK/conf.lua" <<EOF
return {
  access_log = false,
  storage = { durable = false },
  $telemetry
  upstreams = { a = { base_url = "$UPSTREAM?delay=0" }, b = { base_url = "$UPSTREAM?delay=0" } },
}
EOF
  : > "$WORK/chorus.out"
  ./chorus serve --config "$WORK/conf.lua" --scripts scripts/bench/serve --listen 127.0.0.1:0 \
    > "$WORK/chorus.out" 2> "$WORK/chorus.log" &
  CHORUS_PID=$!
  PIDS+=("$CHORUS_PID")
  for _ in $(seq 1 50); do grep -q listening "$WORK/chorus.out" && break; sleep 0.1; done
  CHORUS_URL=$(grep -o 'http://[0-9.:]*' "$WORK/chorus.out")
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -s "$CHORUS_URL/metrics" | awk -v m="$1" '$1 == m {v = $2} END {print v + 0}'; }
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
to_ms() {
  case "$1" in
    *us) echo "$1" | sed 's/us//' | awk '{printf "%.3f", $1 / 1000}' ;;
    *ms) echo "$1" | sed 's/ms//' ;;
    *s) echo "$1" | sed 's/s//' | awk '{printf "%.3f", $1 * 1000}' ;;
  esac
}

# one_run off|on → appends "req/s p50_ms cpu_us/req exported dropped" to $WORK/rows.MODE
one_run() {
  start_chorus "$1"
  wrk -t2 -c64 -d2s -s scripts/bench/wrk_post.lua "$CHORUS_URL/workflows/bench_fanout" > /dev/null 2>&1 # warm-up
  local e0 t0 t1 out requests rps p50
  e0=$(metric chorus_otlp_spans_exported_total)
  t0=$(cpu_ticks "$CHORUS_PID")
  out=$(wrk -t2 -c64 -d"$DURATION" --latency -s scripts/bench/wrk_post.lua "$CHORUS_URL/workflows/bench_fanout" 2>&1)
  t1=$(cpu_ticks "$CHORUS_PID")
  sleep 2.5 # one export interval: what the run queued is sent
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  local row
  row="$rps $p50 $(((t1 - t0) * 1000000 / $(getconf CLK_TCK) / requests)) $(($(metric chorus_otlp_spans_exported_total) - e0)) $(metric chorus_otlp_spans_dropped_total)"
  echo "  telemetry $1 run $2: req/s p50_ms cpu_us/req spans_exported spans_dropped = $row"
  echo "$row" >> "$WORK/rows.$1"
  kill "$CHORUS_PID"
  wait "$CHORUS_PID" 2>/dev/null || true
}

echo "# make bench (traces) — chorus $(./chorus version | awk '{print $2}'), $(nproc) cores, $(date -u +%F)"
echo "# per run: wrk -t2 -c64 -d$DURATION --latency -s scripts/bench/wrk_post.lua URL/workflows/bench_fanout"
echo "# telemetry on: telemetry = { otlp_endpoint = UPSTREAM } (batch 512, queue 4096, interval 2 s)"
print_rates 0 128
for i in $(seq 1 "$RUNS"); do
  one_run off "$i"
  one_run on "$i"
done
for mode in off on; do
  printf '  => telemetry %-3s: median %s req/s, p50 %s ms, server CPU %s us/request, %s spans exported per run, %s dropped\n' \
    "$mode" "$(awk '{print $1}' "$WORK/rows.$mode" | median)" "$(awk '{print $2}' "$WORK/rows.$mode" | median)" \
    "$(awk '{print $3}' "$WORK/rows.$mode" | median)" "$(awk '{print $4}' "$WORK/rows.$mode" | median)" \
    "$(awk '{print $5}' "$WORK/rows.$mode" | median)"
done
