#!/usr/bin/env bash
# bench_sweep.sh — `make bench` part 7: what the data folder's sweep costs the
# requests around it. `chorus serve` with its data folder (durable, the
# default) takes RUNS_KEPT requests of bench_fanout (wrk -t1 -c64) so that
# the folder holds that many run records, then one client sends requests one
# after another (curl, sequential) from 56 to 66 s after the start, across
# the sweep's first step at 60 s (chorus.sweep: every minute, up to 5,000
# records of each database decoded and checked). Prints the probes' p50 and
# their two slowest: a step decoded at once showed as one probe of 56 to 72
# ms. It prints the upstream's and the load generator's own rates first.
# About 80 s. Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
CHORUS_BIN=${CHORUS_BIN:-./chorus}
source scripts/bench/upstream.sh
bench_start # WORK, PIDS (cleaned up at exit) and the upstream
echo "# upstream: $UPSTREAM_KIND"
print_rates 0 64
cat > "$WORK/conf.lua" <<CONF
return { access_log = false,
  upstreams = { a = { base_url = "$UPSTREAM?delay=0" }, b = { base_url = "$UPSTREAM?delay=0" } } }
CONF
start=$(date +%s.%N)
"$CHORUS_BIN" serve --config "$WORK/conf.lua" --scripts scripts/bench/serve --data "$WORK/data" \
  --listen 127.0.0.1:0 > "$WORK/out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q listening "$WORK/out" && break; sleep 0.1; done
URL="$(grep -o 'http://[0-9.:]*' "$WORK/out")/workflows/bench_fanout"
since() { echo "$(date +%s.%N) - $start" | bc; }
wrk -t1 -c64 -d3s -s scripts/bench/wrk_post.lua "$URL" > "$WORK/fill" 2>&1
echo "# bench_sweep: the data folder holds $(awk '/requests in/ {print $1}' "$WORK/fill") run records; probes from 56 to 66 s after the start (the sweep's first step at 60 s)"
while [ "$(echo "$(since) < 56" | bc)" = 1 ]; do sleep 0.5; done
: > "$WORK/lat"
while [ "$(echo "$(since) < 66" | bc)" = 1 ]; do
  curl -s -o /dev/null -w '%{time_total}\n' -X POST -H 'Content-Type: application/json' -d '{}' "$URL" >> "$WORK/lat"
done
sort -n "$WORK/lat" | awk '{a[NR] = $1} END {
  printf "  %d probes: p50 %.1f ms, slowest %.1f ms, next %.1f ms\n", NR, a[int(NR / 2)] * 1000, a[NR] * 1000, a[NR - 1] * 1000 }'
