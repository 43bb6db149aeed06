#!/usr/bin/env bash
# bench_recovery.sh — `make bench` part 4: how fast a killed server is back.
# For each N (SIZES, default "1000 5000 10000 20000"): `chorus serve` on a
# fresh data folder, N runs of scripts/bench/recovery/bench_park started
# with Prefer: respond-async (by scripts/bench/start_runs.lua), each parked
# on an upstream call the upstream holds open for an hour; once all N are in
# flight the server is killed with SIGKILL and started again on the same
# folder. Measured from the restart's exec:
#   healthz   the first /healthz 200
#   in flight the upstream has received all N calls again: every run was
#             resumed, replayed its journal and sent its parked call
#   readyz    the first /readyz 200 (recovery says it is done)
#   cpu       the CPU seconds chorus had used once both were seen: on this
#             shared 2-core machine the wall times above grow with the load
#             of the other processes (printed), the CPU time much less
#   lua cpu   of those, the Lua thread's (the rest is mostly the HTTP
#             client's transport threads: curl, connect, send, epoll)
# Prints the medians of RUNS (default 3) per N, with the rate the runs
# were started at and the load generator's own rate.
# The upstream is nginx when installed (scripts/bench/upstream.sh:
# event-driven; ?delay=MS parks a call, /__stats counts them), else
# build/mock-upstream, whose thread per connection then competes with
# chorus for the CPU during recovery. Each parked call is an HTTP/1.1
# connection, a socket in chorus and one in the upstream: an N the
# open-file limit cannot hold is skipped with a note.
# PROFILE=DIR runs each restart under `perf record -g` into DIR.
# CHORUS_BIN=PATH serves with another build (the load generator stays
# ./chorus): alternate two builds to compare them in one time window.
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
CHORUS_BIN=${CHORUS_BIN:-./chorus}
SIZES=${SIZES:-"1000 5000 10000 20000"}
CONNS=${CONNS:-64}
WORK=$(mktemp -d)
PIDS=()
# chorus is killed (-9), the upstream stopped (nginx's workers go with a TERM, not a KILL)
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${UPSTREAM_PID:-}" ] && kill "$UPSTREAM_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
# N parked runs are N sockets in chorus and as many in the upstream
ulimit -n "$(ulimit -Hn)"

source scripts/bench/upstream.sh
start_upstream "$WORK"
up_stat() { # up_stat requests|in_flight
  curl -s "$UPSTREAM/__stats" | lua5.4 -e "local t = io.read('a'); print(t:match('\"$1\":(%d+)') or 0)"
}
up_reset() {
  if [ "$UPSTREAM_KIND" = nginx ]; then
    curl -s -X POST "$UPSTREAM/__stats" > /dev/null
  else
    curl -s -X POST "$UPSTREAM/__reset" > /dev/null
  fi
}
up_idle() { for _ in $(seq 1 600); do [ "$(up_stat in_flight)" = "0" ] && break; sleep 0.1; done; }

cat > "$WORK/conf.lua" <<CONF
return { access_log = false,
  limits = { max_inflight_runs = 1000000, max_connections = 100000 },
  upstreams = { a = { base_url = "$UPSTREAM?delay=3600000", timeout = 3600 } } }
CONF

now() { date +%s.%N; }
metric() { curl -s "$1/metrics" | awk -v m="$2" '$1 == m {print $2}' | head -1; }
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
# the main thread's alone (its tid is the pid): the Lua thread
lua_cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/task/$1/stat"; }

serve() { # serve PORT [WRAPPER...] → starts chorus, sets PID (chorus's, also under a wrapper)
  local port=$1
  shift
  "$@" "$CHORUS_BIN" serve --config "$WORK/conf.lua" --scripts scripts/bench/recovery --data "$WORK/data" \
    --listen "127.0.0.1:$port" > "$WORK/out" 2>> "$WORK/log" &
  PID=$!
  PIDS+=("$PID")
  WRAPPER=$PID
  if [ $# -gt 0 ]; then
    PID=
    for _ in $(seq 1 500); do PID=$(pgrep -P "$WRAPPER" | head -1) && break; sleep 0.01; done
    PIDS+=("$PID")
  fi
}

# one_case N → prints "healthz_s inflight_s readyz_s cpu_s resumed start_rate client_rate lua_cpu_s"
one_case() {
  local n=$1
  rm -rf "$WORK/data"
  : > "$WORK/log"
  : > "$WORK/out"
  serve 0
  for _ in $(seq 1 100); do grep -q listening "$WORK/out" && break; sleep 0.1; done
  local url; url=$(grep -o 'http://[0-9.:]*' "$WORK/out")
  local port=${url##*:}
  local t0 out started
  t0=$(now)
  out=$(./chorus run scripts/bench/start_runs.lua \
    --input "{\"url\":\"$url/workflows/bench_park\",\"total\":$n,\"concurrency\":$CONNS}")
  local gen_rate; gen_rate=$(echo "$out" | lua5.4 -e "print(io.read('a'):match('\"per_s\":(%d+)'))")
  if ! echo "$out" | grep -q '"failures":0'; then echo "start_runs: $out" >&2; fi
  # every run parked on its call: the server's gauge and the upstream agree
  for _ in $(seq 1 600); do
    started=$(metric "$url" chorus_runs_in_flight)
    [ "${started:-0}" -ge "$n" ] && [ "$(up_stat in_flight)" -ge "$started" ] && break
    sleep 0.1
  done
  local start_rate; start_rate=$(echo "$started / ($(now) - $t0)" | bc -l | cut -d. -f1)
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  up_idle
  up_reset
  : > "$WORK/out"
  t0=$(now)
  if [ -n "${PROFILE:-}" ]; then
    serve "$port" perf record -q -g -F 999 -o "$PROFILE/perf.$n.$(date +%s%N).data"
  else
    serve "$port"
  fi
  local th="" tf="" tr="" cpu="" lcpu="" t
  until curl -sf -o /dev/null "$url/healthz"; do sleep 0.005; done
  th=$(echo "$(now) - $t0" | bc)
  # the resumed runs' calls reach the upstream; recovery says it is done
  for _ in $(seq 1 12000); do
    if [ -z "$tr" ] && curl -sf -o /dev/null "$url/readyz"; then
      t=$(now)
      tr=$(echo "$t - $t0" | bc)
    fi
    if [ -z "$tf" ] && [ "$(up_stat requests)" -ge "$started" ]; then
      tf=$(echo "$(now) - $t0" | bc)
    fi
    if [ -n "$tr" ] && [ -n "$tf" ]; then
      cpu=$(cpu_of "$PID")
      lcpu=$(lua_cpu_of "$PID")
      break
    fi
    sleep 0.01
  done
  kill -9 "$PID"
  wait "$WRAPPER" 2>/dev/null || true
  up_idle
  echo "$th ${tf:-nan} ${tr:-nan} ${cpu:-nan} $started $start_rate $gen_rate ${lcpu:-nan}"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "recovery: SIGKILL with N runs parked on an upstream call, restart on the same data folder; medians of $RUNS"
echo "  load: chorus run scripts/bench/start_runs.lua --input '{\"url\":\"URL/workflows/bench_park\",\"total\":N,\"concurrency\":$CONNS}'"
echo "  kill -9, then: chorus serve --config CONF --scripts scripts/bench/recovery --data DIR --listen 127.0.0.1:PORT"
echo "  upstream: ${UPSTREAM_KIND%% (*}, a = UPSTREAM?delay=3600000 (HTTP/1.1, a connection per parked call); load average $(cut -d' ' -f1-3 /proc/loadavg)"
# the upstream's own rate and the load generator's, measured alone now
print_rates 0 "$CONNS"
printf '%7s %9s %10s %9s %7s %9s %8s %14s %12s\n' N "healthz s" "in flight s" "readyz s" "cpu s" "lua cpu s" resumed "runs started/s" "client req/s"
for n in $SIZES; do
  # each parked run holds a socket in chorus and one in the upstream
  if [ $(( n + 256 )) -gt "$(ulimit -n)" ]; then
    printf '%7s  skipped: needs about %d open files per process (a socket per parked HTTP/1.1 call), the limit here is %s (ulimit -Hn)\n' \
      "$n" $(( n + 256 )) "$(ulimit -n)"
    continue
  fi
  : > "$WORK/r"
  for _ in $(seq 1 "$RUNS"); do one_case "$n" >> "$WORK/r"; done
  col() { cut -d' ' -f"$1" "$WORK/r" | median; }
  printf '%7s %9.3f %10.3f %9.3f %7.2f %9.2f %8s %14s %12s\n' "$n" "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 8)" "$(col 5)" "$(col 6)" "$(col 7)"
done
echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
