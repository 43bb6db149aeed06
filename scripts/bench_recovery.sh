#!/usr/bin/env bash
# bench_recovery.sh — `make bench` part 4: how fast a killed server is back.
# For each N (SIZES, default "1000 5000 10000 20000"): `chorus serve` on a
# fresh data folder, N runs of scripts/bench/recovery/bench_park started
# with Prefer: respond-async (by scripts/bench/start_runs.lua), each parked
# on an upstream call the mock holds open for an hour; once all N are in
# flight the server is killed with SIGKILL and started again on the same
# folder. Measured from the restart's exec: the first `/healthz` 200 and the
# first `/readyz` 200 (every unfinished run started again). The mock's own
# count of requests after the restart shows the resumed runs really sent
# their calls again. Prints the medians of RUNS (default 3) per N, with the
# load generator's rate (it must not be what limits the start of N runs).
# An N the open-file limit cannot hold (each parked run is a socket in
# chorus and one in the mock) is skipped with a note.
# Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZES=${SIZES:-"1000 5000 10000 20000"}
CONNS=${CONNS:-64}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
# N parked runs are N sockets in chorus and as many in the mock
ulimit -n "$(ulimit -Hn)"

exec 3< <(build/mock-upstream --max-seconds 3600)
PIDS+=($!)
read -r line <&3
MOCK="http://127.0.0.1:${line##*:}"

cat > "$WORK/conf.lua" <<CONF
return { access_log = false,
  limits = { max_inflight_runs = 1000000, max_connections = 100000 },
  upstreams = { a = { base_url = "$MOCK?delay=3600000", timeout = 3600 } } }
CONF

now() { date +%s.%N; }
mock_stat() { curl -s "$MOCK/__stats" | lua5.4 -e "local t = io.read('a'); print(t:match('\"$1\":(%d+)'))"; }
metric() { curl -s "$1/metrics" | awk -v m="$2" '$1 == m {print $2}' | head -1; }

serve() { # serve PORT → starts chorus, sets PID
  ./chorus serve --config "$WORK/conf.lua" --scripts scripts/bench/recovery --data "$WORK/data" \
    --listen "127.0.0.1:$1" > "$WORK/out" 2>> "$WORK/log" &
  PID=$!
  PIDS+=("$PID")
}

# one_case N → prints "healthz_s readyz_s resumed mock_requests start_rate client_rate"
one_case() {
  local n=$1
  rm -rf "$WORK/data"
  : > "$WORK/log"
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
  # every run parked on its call: the server's gauge and the mock agree
  for _ in $(seq 1 600); do
    started=$(metric "$url" chorus_runs_in_flight)
    [ "${started:-0}" -ge "$n" ] && [ "$(mock_stat in_flight)" -ge "$started" ] && break
    sleep 0.1
  done
  local start_rate; start_rate=$(echo "$started / ($(now) - $t0)" | bc -l | cut -d. -f1)
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  for _ in $(seq 1 600); do [ "$(mock_stat in_flight)" = "0" ] && break; sleep 0.1; done
  curl -s -X POST "$MOCK/__reset" > /dev/null
  t0=$(now)
  serve "$port"
  local th tr
  until curl -sf -o /dev/null "$url/healthz"; do sleep 0.005; done
  th=$(echo "$(now) - $t0" | bc)
  until curl -sf -o /dev/null "$url/readyz"; do sleep 0.01; done
  tr=$(echo "$(now) - $t0" | bc)
  # the resumed runs' calls reach the mock (sent after /readyz went 200)
  local seen=0
  for _ in $(seq 1 300); do
    seen=$(mock_stat requests)
    [ "$seen" -ge "$started" ] && break
    sleep 0.1
  done
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  for _ in $(seq 1 600); do [ "$(mock_stat in_flight)" = "0" ] && break; sleep 0.1; done
  echo "$th $tr $started $seen $start_rate $gen_rate"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "recovery: SIGKILL with N runs parked on an upstream call, restart on the same data folder; medians of $RUNS"
echo "  load: chorus run scripts/bench/start_runs.lua --input '{\"url\":\"URL/workflows/bench_park\",\"total\":N,\"concurrency\":$CONNS}'"
echo "  kill -9, then: chorus serve --config CONF --scripts scripts/bench/recovery --data DIR --listen 127.0.0.1:PORT"
echo "  (upstream a = mock?delay=3600000; /healthz and /readyz polled from the exec)"
printf '%7s %10s %10s %9s %13s %13s %10s\n' N "healthz s" "readyz s" resumed "mock requests" "runs started/s" "client req/s"
for n in $SIZES; do
  # each parked run holds a socket in chorus and one in the mock
  if [ $(( n + 256 )) -gt "$(ulimit -n)" ]; then
    printf '%7s  skipped: needs about %d open files per process, the limit here is %s (ulimit -Hn)\n' \
      "$n" $(( n + 256 )) "$(ulimit -n)"
    continue
  fi
  : > "$WORK/r"
  for _ in $(seq 1 "$RUNS"); do one_case "$n" >> "$WORK/r"; done
  col() { cut -d' ' -f"$1" "$WORK/r" | median; }
  printf '%7s %10.3f %10.3f %9s %13s %13s %10s\n' "$n" "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)"
done
