# shellcheck shell=bash
# upstream.sh — sourced by the benchmark scripts: the upstream they call, and
# the two rates that show it and the load generator are not what a result
# measures.
#
# start_upstream sets UPSTREAM (http://127.0.0.1:PORT), UPSTREAM_KIND and
# UPSTREAM_PID. With nginx and lua-nginx-module installed (`make deps`) the
# upstream is nginx (scripts/bench/upstream/nginx.conf.in: event-driven, one
# worker, ?delay=MS by a timer); otherwise build/mock-upstream, whose thread
# per connection limits a 0 ms run, and the printed rates say so.
# The caller owns cleanup: it kills UPSTREAM_PID and removes $WORK; or it
# calls bench_start, which does all of it.

# bench_start → WORK (a new temporary folder) and PIDS (processes to kill),
# both cleaned up when the script exits, and the upstream started
# (start_upstream), its pid in PIDS.
bench_start() {
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
  start_upstream "$WORK"
  PIDS+=("$UPSTREAM_PID")
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}

have_nginx_lua() {
  command -v nginx > /dev/null && [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ]
}

# start_upstream WORK_DIR
start_upstream() {
  local dir=$1/upstream
  mkdir -p "$dir"
  if have_nginx_lua; then
    local port
    for _ in 1 2 3 4 5; do
      port=$((20000 + RANDOM % 20000))
      sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" scripts/bench/upstream/nginx.conf.in > "$dir/nginx.conf"
      nginx -c "$dir/nginx.conf" -p "$dir" 2> "$dir/start.log" &
      UPSTREAM_PID=$!
      UPSTREAM="http://127.0.0.1:$port"
      for _ in $(seq 1 30); do
        curl -sf "$UPSTREAM/__static" > /dev/null 2>&1 && { UPSTREAM_KIND=nginx; return 0; }
        kill -0 "$UPSTREAM_PID" 2> /dev/null || break
        sleep 0.1
      done
      kill "$UPSTREAM_PID" 2> /dev/null || true # port taken: try another
    done
    echo "upstream: nginx did not start ($(cat "$dir/start.log")), using the mock" >&2
  fi
  exec 4< <(build/mock-upstream --max-seconds 1800)
  UPSTREAM_PID=$!
  local line
  read -r line <&4
  UPSTREAM="http://${line#listening }"
  UPSTREAM_KIND="mock (thread per connection; install nginx-light libnginx-mod-http-lua for an upstream that keeps up)"
}

# wrk_rate ARGS... → "N req/s, p50 X" of one wrk run
wrk_rate() {
  wrk --latency "$@" 2>&1 | awk '/Requests\/sec/ {r = $2} $1 == "50%" {p = $2} END {printf "%d req/s, p50 %s", r, p}'
}

# upstream_rate DELAY_MS CONNS → the upstream's own rate, alone, at the
# delay a run uses and with as many connections as the run opens to it (with
# a delay the rate is at most CONNS / delay: then its p50 is what matters)
upstream_rate() { wrk_rate -t1 -c"$2" -d3s "$UPSTREAM/a?delay=$1"; }

# loadgen_rate → wrk -t2 -c64 (the serve benchmark's load) against nginx
# answering a constant without Lua: the most the load generator can ask for
loadgen_rate() {
  if [ "$UPSTREAM_KIND" = nginx ]; then wrk_rate -t2 -c64 -d3s "$UPSTREAM/__static"; else echo "n/a"; fi
}

# print_rates DELAY_MS CONNS — one line a reader can hold the results against
print_rates() {
  printf '  upstream %s alone (wrk -t1 -c%s, delay=%s ms): %s; load generator (wrk -t2 -c64, static nginx): %s; load %s\n' \
    "${UPSTREAM_KIND%% *}" "$2" "$1" "$(upstream_rate "$1" "$2")" "$(loadgen_rate)" "$(cut -d' ' -f1-3 /proc/loadavg)"
}
