#!/usr/bin/env bash
# bench_serve.sh — `make bench` part 2: `chorus serve` under wrk.
#   1. fan-out throughput: bench_fanout (2 concurrent calls to the upstream
#      per request) over keep-alive connections, against nginx +
#      lua-nginx-module doing the same with ngx.location.capture_multi (1
#      worker: chorus runs one event loop), with a 0 ms and a 20 ms upstream
#      delay; chorus without a data folder (like nginx) and with the default
#      durable storage. Before each delay it prints the upstream's own rate
#      and the load generator's (scripts/bench/upstream.sh), so a reader sees
#      that neither is what the results measure;
#   2. 5,000 concurrent requests with a 1 s upstream delay, one wave (each
#      wrk thread stops after as many answers as it has connections): every
#      request must succeed; peak RSS / 5,000 is the memory per in-flight run.
# Everything listens on 127.0.0.1 and stops by itself. RUNS (default 3) runs
# per case; the medians are printed with the commands. SERVERS (default
# "chorus chorus-durable nginx"), DELAYS (default "0 20") and WAVE=0 (skip
# part 2) run a part of it, e.g. SERVERS="chorus-durable nginx" WAVE=0.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8s}
SERVERS=${SERVERS:-chorus chorus-durable nginx}
DELAYS=${DELAYS:-0 20}
WAVE=${WAVE:-1}
wanted() { case " $SERVERS " in *" $1 "*) return 0 ;; esac; return 1; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

source scripts/bench/upstream.sh
start_upstream "$WORK"
PIDS+=("$UPSTREAM_PID")
UPSTREAM_PORT=${UPSTREAM##*:}

free_port() { lua5.4 -e 'math.randomseed(os.time()); print(20000 + math.random(20000))'; }

# start_chorus DELAY_MS [durable] → sets CHORUS_URL and CHORUS_PID
start_chorus() {
  local storage="{ durable = false }" # like nginx: nothing written per request
  if [ "${2:-}" = durable ]; then storage="{}"; fi # the default: a data folder, fsync'd
  rm -rf "$WORK/data"
  cat > "$WORK/conf.lua" <<EOF
return {
  access_log = false,
  storage = $storage,
  limits = { max_connections = 12000 },
  upstreams = {
    a = { base_url = "$UPSTREAM?delay=$1", timeout = 30 },
    b = { base_url = "$UPSTREAM?delay=$1", timeout = 30 },
  },
}
EOF
  : > "$WORK/chorus.out"
  ./chorus serve --config "$WORK/conf.lua" --scripts scripts/bench/serve --data "$WORK/data" --listen 127.0.0.1:0 \
    > "$WORK/chorus.out" 2> "$WORK/chorus.log" &
  CHORUS_PID=$!
  PIDS+=("$CHORUS_PID")
  for _ in $(seq 1 50); do grep -q listening "$WORK/chorus.out" && break; sleep 0.1; done
  CHORUS_URL=$(grep -o 'http://[0-9.:]*' "$WORK/chorus.out")
}

start_chorus_durable() { start_chorus "$1" durable; }

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# start_nginx DELAY_MS → sets NGINX_URL and NGINX_PID
start_nginx() {
  local port; port=$(free_port)
  mkdir -p "$WORK/nginx"
  sed -e "s|@DIR@|$WORK/nginx|g" -e "s|@MOCKPORT@|$UPSTREAM_PORT|g" -e "s|@PORT@|$port|g" \
      -e "s|@QUERY@|?delay=$1|g" scripts/bench/serve/nginx.conf.in > "$WORK/nginx/nginx.conf"
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2> "$WORK/nginx/start.log" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  sleep 0.5
  NGINX_URL="http://127.0.0.1:$port"
}

# cpu_ticks PID → user + system CPU time of the process so far, in clock ticks
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# server_pid PID → the process that serves: nginx's worker, or chorus itself
server_pid() { pgrep -P "$1" nginx || echo "$1"; }

# wrk_case URL CONNS SERVER_PID → prints "req/s p50_ms p99_ms cpu_us_per_req errors";
# the server's CPU per request holds even when other load on the machine
# takes CPU away from it (req/s and latency do not)
wrk_case() {
  local out t0 t1
  t0=$(cpu_ticks "$3")
  out=$(wrk -t2 -c"$2" -d"$DURATION" --timeout 10s --latency -s scripts/bench/wrk_post.lua \
    "$1/workflows/bench_fanout" 2>&1)
  t1=$(cpu_ticks "$3")
  local rps p50 p99 errors requests
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  errors=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ' || true)
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(((t1 - t0) * 1000000 / $(getconf CLK_TCK) / requests)) ${errors:-none}"
}

to_ms() {
  case "$1" in
    *us) echo "$1" | sed 's/us//' | awk '{printf "%.3f", $1 / 1000}' ;;
    *ms) echo "$1" | sed 's/ms//' ;;
    *s) echo "$1" | sed 's/s//' | awk '{printf "%.3f", $1 * 1000}' ;;
  esac
}

median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

report_case() { # NAME DELAY CONNS START_FN URL_VAR PID_VAR
  local name=$1 delay=$2 conns=$3
  "$4" "$delay"
  local url=${!5} pid=${!6}
  wrk -t2 -c"$conns" -d2s -s scripts/bench/wrk_post.lua "$url/workflows/bench_fanout" > /dev/null 2>&1 # warm-up
  : > "$WORK/rows"
  for i in $(seq 1 "$RUNS"); do
    row=$(wrk_case "$url" "$conns" "$(server_pid "$pid")")
    echo "  $name delay=${delay}ms c=$conns run $i: req/s p50_ms p99_ms cpu_us/req errors = $row"
    echo "$row" >> "$WORK/rows"
  done
  local rps p50 p99 cpu
  rps=$(awk '{print $1}' "$WORK/rows" | median)
  cpu=$(awk '{print $4}' "$WORK/rows" | median)
  p50=$(awk '{print $2}' "$WORK/rows" | median)
  p99=$(awk '{print $3}' "$WORK/rows" | median)
  printf '  => %-14s delay=%sms c=%s: median %s req/s, p50 %s ms (%.2f ms over the delay), p99 %s ms, server CPU %s us/request\n' \
    "$name" "$delay" "$conns" "$rps" "$p50" "$(echo "$p50 - $delay" | bc -l)" "$p99" "$cpu"
  echo "$name $delay $rps $cpu" >> "$WORK/summary"
  stop_pid "$pid"
}

echo "# make bench (serve) — chorus $(./chorus version | awk '{print $2}'), $(nproc) cores, $(date -u +%F)"
echo "# per run: wrk -t2 -cC -d$DURATION --latency -s scripts/bench/wrk_post.lua URL/workflows/bench_fanout"
HAVE_NGINX=0
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] && command -v nginx > /dev/null && HAVE_NGINX=1
echo "# upstream: $UPSTREAM_KIND"
: > "$WORK/summary"
for delay in $DELAYS; do
  # up to 2 calls per request in flight: 128 connections to the upstream
  print_rates "$delay" 128
  if wanted chorus; then report_case chorus "$delay" 64 start_chorus CHORUS_URL CHORUS_PID; fi
  if wanted chorus-durable; then report_case chorus-durable "$delay" 64 start_chorus_durable CHORUS_URL CHORUS_PID; fi
  if [ "$HAVE_NGINX" = 1 ] && wanted nginx; then
    report_case nginx "$delay" 64 start_nginx NGINX_URL NGINX_PID
  fi
done
if [ "$HAVE_NGINX" = 1 ] && wanted nginx; then
  awk '{r[$1" "$2] = $3; c[$1" "$2] = $4} END {for (d = 0; d <= 20; d += 20) if (r["nginx " d] > 0) printf "  chorus/nginx at %d ms: req/s %.2f (durable: %.2f), CPU per request %.2f (durable: %.2f)\n", d, r["chorus " d] / r["nginx " d], r["chorus-durable " d] / r["nginx " d], c["chorus " d] / c["nginx " d], c["chorus-durable " d] / c["nginx " d]}' "$WORK/summary"
else
  echo "  (nginx with lua-nginx-module not installed: apt-get install nginx-light libnginx-mod-http-lua)"
fi

if [ "$WAVE" = 0 ]; then exit 0; fi
echo "# 5,000 concurrent requests, upstream delay 1 s: WRK_STOP_AFTER=2500 wrk -t2 -c5000 -d40s --timeout 35s -s scripts/bench/wrk_wave.lua"
start_chorus 1000
out=$(WRK_STOP_AFTER=2500 wrk -t2 -c5000 -d40s --timeout 35s -s scripts/bench/wrk_wave.lua \
  "$CHORUS_URL/workflows/bench_fanout" 2>&1)
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$CHORUS_PID/status")
requests=$(echo "$out" | awk '/requests in/ {print $1}')
slowest=$(echo "$out" | awk '$1 == "Latency" {print $4}')
errors=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ' || true)
stop_pid "$CHORUS_PID"
verdict="all answered 2xx"
if [ -n "$errors" ] || [ "${requests:-0}" -lt 5000 ]; then verdict="NOT all answered"; fi
echo "  answered: ${requests:-0} of 5000, the last after $slowest, errors: ${errors:-none} => $verdict"
echo "  peak RSS: $((hwm_kb / 1024)) MiB = $((hwm_kb * 1024 / 5000)) bytes per in-flight run"
