#!/usr/bin/env bash
# bench_profile.sh — `make bench-profile`: where a served fan-out request's
# time goes. chorus serve runs bench_fanout (2 calls per request, storage.
# durable = false) against the benchmark upstream with no delay, and:
#   1. perf record -g on the chorus process for PERF_SECONDS (default 8) of
#      wrk -t2 -c64 load: the top 15 symbols by self time (the VM has no
#      hardware counters, so perf samples on the cpu-clock);
#   2. instructions per served request under callgrind (valgrind): counters
#      zeroed after a warm-up, then CALLS requests (default 4000) at 16
#      connections, then dumped; total instructions / requests.
# With LUA=1 instead: the Lua side alone, per served request, from
# scripts/bench/lua_profile.c loaded into chorus with LD_PRELOAD (every VM
# instruction counted, every Lua heap block charged to the line that made
# it): the functions by their own and by their inclusive VM instructions,
# the lines, and the lines that allocate, over LUA_SECONDS (default 10) of
# wrk -t1 -c16 after a warm-up.
# DURABLE=1: the default durable storage instead (a data folder, fsync'd
# group commits), to see what durability adds per request; CG_KEEP=FILE
# keeps the callgrind output (callgrind_annotate FILE).
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PERF_SECONDS=${PERF_SECONDS:-8}
CALLS=${CALLS:-4000}
CHORUS=${CHORUS:-./chorus} # another build to compare: CHORUS=/path/to/chorus
ulimit -n "$(ulimit -Hn)"
source scripts/bench/upstream.sh
bench_start # WORK, PIDS (cleaned up at exit) and the upstream
STORAGE="{ durable = false }"
if [ "${DURABLE:-0}" = 1 ]; then STORAGE="{}"; fi
cat > "$WORK/conf.lua" <<CONF
return { access_log = false, storage = $STORAGE,
  upstreams = { a = { base_url = "$UPSTREAM?delay=0" }, b = { base_url = "$UPSTREAM?delay=0" } } }
CONF

# start_chorus [WRAPPER...] → sets URL and PID (the wrapper's, which is chorus under valgrind)
start_chorus() {
  : > "$WORK/out"
  rm -rf "$WORK/data"
  "$@" "$CHORUS" serve --config "$WORK/conf.lua" --scripts scripts/bench/serve --data "$WORK/data" --listen 127.0.0.1:0 \
    > "$WORK/out" 2> "$WORK/log" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 300); do grep -q listening "$WORK/out" && break; sleep 0.1; done
  URL="$(grep -o 'http://[0-9.:]*' "$WORK/out")/workflows/bench_fanout"
}

echo "# profile: chorus $("$CHORUS" version | awk '{print $2}'), storage $STORAGE, upstream $UPSTREAM_KIND, load $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "${LUA:-0}" = 1 ]; then
  LUA_SECONDS=${LUA_SECONDS:-10}
  # shellcheck disable=SC2046 # pkg-config's flags are words
  cc -O2 -shared -fPIC $(pkg-config --cflags lua5.4) scripts/bench/lua_profile.c -o "$WORK/lua_profile.so" -ldl
  start_chorus env LD_PRELOAD="$WORK/lua_profile.so" LUA_PROFILE_OUT="$WORK/lua"
  post() { curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{}' "$URL"; }
  wrk -t1 -c16 -d3s -s scripts/bench/wrk_post.lua "$URL" > /dev/null 2>&1 # warm-up
  kill -s RTMIN+3 "$PID"; post # the counts start at the next instruction
  wrk -t1 -c16 -d"${LUA_SECONDS}s" -s scripts/bench/wrk_post.lua "$URL" > "$WORK/wrk" 2>&1
  kill -s RTMIN+4 "$PID"; post; sleep 1
  kill "$PID"; wait "$PID" 2>/dev/null || true
  served=$(( $(awk '/requests in/ {print $1}' "$WORK/wrk") + 2 ))
  echo "# Lua VM instructions and Lua heap blocks per served request ($served requests, wrk -t1 -c16 -d${LUA_SECONDS}s)"
  awk -v n="$served" '$1 == "fn" {t += $2} END {printf "total: %.0f VM instructions\n", t / n}' "$WORK/lua"
  awk -v n="$served" '$1 == "alloc" {c += $2; b += $3} END {printf "total: %.1f blocks, %.0f bytes\n", c / n, b / n}' "$WORK/lua"
  echo "# functions by their own VM instructions (self, inclusive, where defined)"
  awk -v n="$served" '$1 == "fn" {printf "%8.1f %8.1f  %s\n", $2 / n, $3 / n, $4}' "$WORK/lua" | sort -k1,1nr | head -30 || true
  echo "# functions by inclusive VM instructions"
  awk -v n="$served" '$1 == "fn" {printf "%8.1f %8.1f  %s\n", $2 / n, $3 / n, $4}' "$WORK/lua" | sort -k2,2nr | head -20 || true
  echo "# lines by VM instructions"
  awk -v n="$served" '$1 == "line" {printf "%8.1f  %s\n", $2 / n, $3}' "$WORK/lua" | sort -k1,1nr | head -20 || true
  echo "# lines by Lua heap blocks made (blocks, bytes; C functions count at the Lua line calling them)"
  awk -v n="$served" '$1 == "alloc" {printf "%6.2f %8.1f  %s\n", $2 / n, $3 / n, $4}' "$WORK/lua" | sort -k1,1nr | head -25 || true
  exit 0
fi
start_chorus
wrk -t2 -c64 -d2s -s scripts/bench/wrk_post.lua "$URL" > /dev/null 2>&1 # warm-up
wrk -t2 -c64 -d"$((PERF_SECONDS + 1))s" -s scripts/bench/wrk_post.lua "$URL" > "$WORK/wrk" 2>&1 &
WRK=$!
perf record -q -g -F 999 -p "$PID" -o "$WORK/perf.data" -- sleep "$PERF_SECONDS" 2> /dev/null
wait "$WRK"
kill "$PID"; wait "$PID" 2>/dev/null || true
echo "# perf record -g -F 999 -p CHORUS -- sleep $PERF_SECONDS, under wrk -t2 -c64: $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk") req/s"
# liblua5.4 and libcurl are stripped on Debian: their samples have
# addresses, not names, so the share of each library comes first
echo "# perf report --no-children --sort dso: self time per library"
perf report -i "$WORK/perf.data" --no-children --sort dso --stdio 2> /dev/null \
  | awk '/^ +[0-9.]+%/ && n++ < 10'
echo "# perf report --no-children --sort dso,symbol: top 15 by self time"
perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2> /dev/null \
  | awk '/^ +[0-9.]+%/ && n++ < 15 {sub(/ +- +- *$/, ""); print}'

start_chorus valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" --dump-instr=no
WRK_STOP_AFTER=250 wrk -t2 -c16 -d60s --timeout 30s -s scripts/bench/wrk_wave.lua "$URL" > /dev/null 2>&1 # warm-up
callgrind_control -z "$PID" > /dev/null 2>&1
WRK_STOP_AFTER=$((CALLS / 2)) wrk -t2 -c16 -d120s --timeout 30s -s scripts/bench/wrk_wave.lua "$URL" > "$WORK/wrk" 2>&1
served=$(awk '/requests in/ {print $1}' "$WORK/wrk")
callgrind_control -d "$PID" > /dev/null 2>&1
sleep 1
kill "$PID"; wait "$PID" 2>/dev/null || true
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$WORK"/cg.*.1)
echo "# callgrind: $served requests at wrk -t2 -c16 after a warm-up: $ir instructions, $((ir / served)) per request"
if [ -n "${CG_KEEP:-}" ]; then cp "$WORK"/cg.*.1 "$CG_KEEP"; fi
