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
#   2. 5,000 concurrent requests with a 1 s upstream delay, one wave
#      (scripts/bench/wrk_wave.lua: one request per connection, each wrk
#      thread stops once all of its have been answered), chorus and nginx +
#      lua alternated: every request must be answered 2xx; the last answer,
#      the server's CPU, and the peak RSS above the idle server's divided by
#      5,000 (the memory per in-flight run). CASES=wave runs only this.
# Everything listens on 127.0.0.1 and stops by itself. RUNS (default 3) runs
# per case; the medians are printed with the commands.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-8s}
# CASES: which parts to run ("fanout wave" by default; CASES=wave for the
# wave alone); WAVE: the wave's concurrent requests
CASES=${CASES:-fanout wave}
WAVE=${WAVE:-5000}
# how long wrk runs for the wave (it waits that long even when all answered;
# an answer later than that counts as missing)
WAVE_SECONDS=${WAVE_SECONDS:-20}
# CHORUS_BIN: the chorus binary to measure (another build, to compare)
CHORUS_BIN=${CHORUS_BIN:-./chorus}
# SERVERS, DELAYS: which fan-out servers and upstream delays to run, e.g.
# SERVERS="chorus-durable nginx" DELAYS=20 CASES=fanout
SERVERS=${SERVERS:-chorus chorus-durable nginx}
DELAYS=${DELAYS:-0 20}
wanted() { case " $SERVERS " in *" $1 "*) return 0 ;; esac; return 1; }
ulimit -n "$(ulimit -Hn)"
source scripts/bench/upstream.sh
bench_start # WORK, PIDS (cleaned up at exit) and the upstream
UPSTREAM_PORT=${UPSTREAM##*:}

# free_port → a port for nginx (it cannot listen on port 0 and say which):
# below the ephemeral range (32768 up), where the wave's 15,000 client
# sockets and their TIME_WAITs of the last run live (nginx then retried its
# bind for 2.5 s and wrk found nothing listening), and not listening now.
# Lua 5.4 seeds math.random by itself (os.time() gave one port per second).
free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$(lua5.4 -e 'print(20000 + math.random(12000))')
    if ! command -v ss > /dev/null || ! ss -Htln "sport = :$port" | grep -q .; then echo "$port"; return; fi
  done
  echo "free_port: no free port in 20000-32000" >&2; return 1
}

# start_chorus DELAY_MS [durable] → sets CHORUS_URL and CHORUS_PID
start_chorus() {
  local storage="{ durable = false }" # like nginx: nothing written per request
  if [ "${2:-}" = durable ]; then storage="{}"; fi # the default: a data folder, fsync'd
  rm -rf "$WORK/data"
  cat > "$WORK/conf.lua" <<EOF
return {
  access_log = false,
  storage = $storage,
  -- the wave is one workflow's: its share of the runs in flight
  -- (inflight_runs_per_workflow, by default half of max_inflight_runs,
  -- 5,000) is set to hold any WAVE the connections allow, and still
  -- checked on every request
  limits = { max_connections = 12000, max_inflight_runs = 24000, inflight_runs_per_workflow = 12000 },
  upstreams = {
    a = { base_url = "$UPSTREAM?delay=$1", timeout = 30 },
    b = { base_url = "$UPSTREAM?delay=$1", timeout = 30 },
  },
}
EOF
  : > "$WORK/chorus.out"
  "$CHORUS_BIN" serve --config "$WORK/conf.lua" --scripts scripts/bench/serve --data "$WORK/data" --listen 127.0.0.1:0 \
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

echo "# make bench (serve) — chorus $("$CHORUS_BIN" version | awk '{print $2}'), $(nproc) cores, $(date -u +%F)"
HAVE_NGINX=0
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] && command -v nginx > /dev/null && HAVE_NGINX=1
echo "# upstream: $UPSTREAM_KIND"

if [[ " $CASES " == *" fanout "* ]]; then
echo "# per run: wrk -t2 -cC -d$DURATION --latency -s scripts/bench/wrk_post.lua URL/workflows/bench_fanout"
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
if ! wanted nginx; then
  : # not asked for (SERVERS)
elif [ "$HAVE_NGINX" = 1 ]; then
  awk '{r[$1" "$2] = $3; c[$1" "$2] = $4} END {for (d = 0; d <= 20; d += 20) if (r["nginx " d] > 0) printf "  chorus/nginx at %d ms: req/s %.2f (durable: %.2f), CPU per request %.2f (durable: %.2f)\n", d, r["chorus " d] / r["nginx " d], r["chorus-durable " d] / r["nginx " d], c["chorus " d] / c["nginx " d], c["chorus-durable " d] / c["nginx " d]}' "$WORK/summary"
else
  echo "  (nginx with lua-nginx-module not installed: apt-get install nginx-light libnginx-mod-http-lua)"
fi
fi

# status_kb PID FIELD → a /proc/PID/status field in kB (VmRSS, VmHWM)
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# wave_case NAME START_FN URL_VAR PID_VAR → one wave of WAVE requests
# (default 5,000) against a fresh server; prints the row and appends
# "name last_s ok_2xx hwm_kb per_run_bytes cpu_ms" to $WORK/wave. The
# memory per in-flight run is the peak RSS above the RSS the idle server
# had just before the wave, divided by the requests.
wave_case() {
  local name=$1
  "$2" 1000
  local url=${!3} pid; pid=$(server_pid "${!4}")
  sleep 0.5
  local idle_kb t0 t1 out
  idle_kb=$(status_kb "$pid" VmRSS)
  t0=$(cpu_ticks "$pid")
  out=$(WRK_STOP_AFTER=$((WAVE / 2)) wrk -t2 -c"$WAVE" -d"$WAVE_SECONDS"s --timeout 35s -s scripts/bench/wrk_wave.lua \
    "$url/workflows/bench_fanout" 2>&1)
  t1=$(cpu_ticks "$pid")
  local hwm_kb requests slowest ok errors
  hwm_kb=$(status_kb "$pid" VmHWM)
  stop_pid "${!4}"
  requests=$(echo "$out" | awk '$1 == "wave:" {print $2}')
  slowest=$(to_ms "$(echo "$out" | awk '$1 == "Latency" {print $4}')")
  ok=$(echo "$out" | awk '$1 == "wave:" {print $4}')
  errors=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ' || true)
  local per_run=$(((hwm_kb - idle_kb) * 1024 / WAVE)) cpu_ms=$(((t1 - t0) * 1000 / $(getconf CLK_TCK)))
  local verdict="all answered 2xx"
  if [ -n "$errors" ] || [ "${ok:-0}" -lt "$WAVE" ]; then verdict="NOT all answered 2xx"; fi
  printf '  %-6s answered %s (2xx: %s) of %s (%s), the last after %.2f s; peak RSS %d MiB, idle %d MiB, %d bytes per in-flight run above idle; CPU %d ms; load %s; errors: %s\n' \
    "$name" "${requests:-0}" "${ok:-0}" "$WAVE" "$verdict" "$(echo "${slowest:-0} / 1000" | bc -l)" \
    $((hwm_kb / 1024)) $((idle_kb / 1024)) "$per_run" "$cpu_ms" "$(cut -d' ' -f1-3 /proc/loadavg)" "${errors:-none}"
  echo "$name $(echo "${slowest:-0} / 1000" | bc -l) ${ok:-0} $hwm_kb $per_run $cpu_ms" >> "$WORK/wave"
}

if [[ " $CASES " == *" wave "* ]]; then
echo "# $WAVE concurrent requests, upstream delay 1 s: WRK_STOP_AFTER=$((WAVE / 2)) wrk -t2 -c$WAVE -d${WAVE_SECONDS}s --timeout 35s -s scripts/bench/wrk_wave.lua ($RUNS runs, chorus and nginx alternated)"
: > "$WORK/wave"
for _ in $(seq 1 "$RUNS"); do
  wave_case chorus start_chorus CHORUS_URL CHORUS_PID
  if [ "$HAVE_NGINX" = 1 ]; then wave_case nginx start_nginx NGINX_URL NGINX_PID; fi
done
declare -A LAST PER
for name in chorus nginx; do
  grep -q "^$name " "$WORK/wave" || continue
  LAST[$name]=$(awk -v n="$name" '$1 == n {print $2}' "$WORK/wave" | median)
  PER[$name]=$(awk -v n="$name" '$1 == n {print $5}' "$WORK/wave" | median)
  ok=$(awk -v n="$name" '$1 == n {print $3}' "$WORK/wave" | median)
  hwm=$(awk -v n="$name" '$1 == n {print $4}' "$WORK/wave" | median)
  cpu=$(awk -v n="$name" '$1 == n {print $6}' "$WORK/wave" | median)
  printf '  => %-6s medians: last answer %.2f s, 2xx %s of %s, peak RSS %d MiB, %s bytes per in-flight run above idle, CPU %s ms\n' \
    "$name" "${LAST[$name]}" "$ok" "$WAVE" $((hwm / 1024)) "${PER[$name]}" "$cpu"
done
if [ "$HAVE_NGINX" = 1 ]; then
  printf '  chorus/nginx: last answer %.2fx, memory per in-flight run %.2fx\n' \
    "$(echo "${LAST[chorus]} / ${LAST[nginx]}" | bc -l)" "$(echo "${PER[chorus]} / ${PER[nginx]}" | bc -l)"
fi
fi
