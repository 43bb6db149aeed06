#!/usr/bin/env bash
# bench_durable.sh — `make bench` part 3: what durability costs.
# One workflow (scripts/bench/durable: an upstream call, a ctx.later, a
# fresh Idempotency-Key per request) under wrk, three ways:
#   fsync on    the default: idempotency record + journal + outbox entry in
#               the data folder, group-committed and fsync'd
#   fsync off   the same writes, storage.sync = false (LMDB MDB_NOSYNC)
#   durable off storage.durable = false: nothing written, outbox in memory
# req/s counts the outbox work too: requests / (load time + the time the
# relay then needs to drain the outbox). Prints medians of req/s, p50, group
# commits per second (each commit is one LMDB write transaction, fsync'd when
# sync is on) and the drain time. RUNS (default 3) runs per case.
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
source scripts/bench/upstream.sh
bench_start # WORK, PIDS (cleaned up at exit) and the upstream

commits() { curl -s "$1/metrics" | awk '/^chorus_store_commits_total/ {print $2}' | head -1; }
depth() { curl -s "$1/metrics" | awk '/^chorus_outbox_depth/ {print $2}' | head -1; }

# one_case STORAGE_LUA → prints "req/s p50_ms commits_per_s"
one_case() {
  rm -rf "$WORK/data"
  cat > "$WORK/conf.lua" <<CONF
return { access_log = false, storage = $1,
  upstreams = { a = { base_url = "$UPSTREAM", timeout = 30 } } }
CONF
  ./chorus serve --config "$WORK/conf.lua" --scripts scripts/bench/durable --data "$WORK/data" \
    --listen 127.0.0.1:0 > "$WORK/out" 2> "$WORK/log" &
  local pid=$!
  for _ in $(seq 1 50); do grep -q listening "$WORK/out" && break; sleep 0.1; done
  local url; url=$(grep -o 'http://[0-9.:]*' "$WORK/out")
  local c0; c0=$(commits "$url"); c0=${c0:-0}
  local out
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency -s scripts/bench/wrk_idem.lua \
    "$url/workflows/bench_donate" 2>&1)
  # the outbox work (one receipt run per request) counts too: wait until
  # the relay has drained what the load left behind
  local t_drain; t_drain=$(date +%s.%N)
  for _ in $(seq 1 600); do
    [ "$(depth "$url")" = "0" ] && break
    sleep 0.1
  done
  local drain; drain=$(echo "$(date +%s.%N) - $t_drain" | bc)
  local c1; c1=$(commits "$url"); c1=${c1:-0}
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local rps p50 errors total
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "scale=1; $total / ($DURATION + $drain)" | bc)
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  errors=$(echo "$out" | grep -cE 'Non-2xx|Socket errors' || true)
  if [ "$errors" != "0" ]; then echo "$out" | grep -E 'Non-2xx|Socket errors' >&2; fi
  echo "$rps $(echo "$p50" | sed -e 's/ms$//' -e 's/\([0-9.]*\)us$/0.00\1/') $(echo "($c1 - $c0) / ($DURATION + $drain)" | bc) $drain"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RPS
echo "# upstream: $UPSTREAM_KIND"
print_rates 0 "$CONNS"
echo "durability: $RUNS runs of ${DURATION}s, wrk -t2 -c$CONNS, medians"
printf '%-12s %10s %8s %10s %8s\n' case "req/s" "p50 ms" "commits/s" "drain s"
for c in "fsync on:{ sync = true }" "fsync off:{ sync = false }" "durable off:{ durable = false }"; do
  name=${c%%:*}; storage=${c#*:}
  : > "$WORK/r"
  for _ in $(seq 1 "$RUNS"); do one_case "$storage" >> "$WORK/r"; done
  rps=$(cut -d' ' -f1 "$WORK/r" | median)
  p50=$(cut -d' ' -f2 "$WORK/r" | median)
  cps=$(cut -d' ' -f3 "$WORK/r" | median)
  drain=$(cut -d' ' -f4 "$WORK/r" | median)
  RPS[$name]=$rps
  printf '%-12s %10s %8s %10s %8.1f\n' "$name" "$rps" "$p50" "$cps" "$drain"
done
echo "fsync on / durable off = $(echo "scale=2; ${RPS[fsync on]} / ${RPS[durable off]}" | bc)"
