#!/usr/bin/env bash
# bench.sh — `make bench`: the outbound HTTP client benchmark.
# Starts the benchmark upstream on loopback (scripts/bench/upstream.sh: nginx
# when installed, else the mock), prints its own rate, runs
# scripts/bench/http_calls.lua RUNS times (default 5) and prints each run and
# the medians, with the command.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
TOTAL=${TOTAL:-20000}
CONC=${CONC:-256}
DELAY=${DELAY:-30}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
source scripts/bench/upstream.sh
bench_start # WORK, PIDS (cleaned up at exit) and the upstream
URL=$UPSTREAM

echo "# make bench — chorus $(./chorus version | awk '{print $2}'), $(nproc) cores, $(date -u +%F)"
echo "# per run: chorus run scripts/bench/http_calls.lua --input '{\"url\":\"$URL\",\"total\":$TOTAL,\"concurrency\":$CONC,\"delay_ms\":$DELAY}'"
echo "# upstream: $UPSTREAM_KIND"
print_rates "$DELAY" "$CONC"
print_rates 0 64
results=()
for i in $(seq 1 "$RUNS"); do
  # /usr/bin/time splits the process's CPU into user and system (kernel TCP)
  out=$(/usr/bin/time -f 'TIME %U %S' ./chorus run scripts/bench/http_calls.lua \
    --input "{\"url\":\"$URL\",\"total\":$TOTAL,\"concurrency\":$CONC,\"delay_ms\":$DELAY}" 2>&1)
  json=$(echo "$out" | grep '^{')
  read -r _ user sys <<<"$(echo "$out" | grep '^TIME')"
  calls=$((TOTAL + CONC))
  json="${json%\}},\"user_us_per_call\":$(echo "$user * 1000000 / $calls" | bc -l),\"sys_us_per_call\":$(echo "$sys * 1000000 / $calls" | bc -l)}"
  echo "run $i: $json"
  results+=("$json")
done
printf '%s\n' "${results[@]}" | lua5.4 -e '
  local dkjson = require "dkjson"
  local cols = { "calls_per_s", "cpu_us_per_call", "user_us_per_call", "sys_us_per_call", "p50_overhead_ms", "p99_overhead_ms", "wave_ms" }
  local vals = {}
  for line in io.lines() do
    local r = dkjson.decode(line)
    assert(r.failures == 0, "run had failures: " .. line)
    for _, c in ipairs(cols) do vals[c] = vals[c] or {}; table.insert(vals[c], r[c]) end
  end
  print(("median of %d runs:"):format(#vals.wave_ms))
  for _, c in ipairs(cols) do
    table.sort(vals[c])
    print(("  %-16s %10.2f"):format(c, vals[c][math.ceil(#vals[c] / 2)]))
  end'
