#!/usr/bin/env bash
# bench_runs.sh — `make bench` part 5: GET /admin/runs out of a million runs.
# Fills a data folder with RUNS_N (default 1,000,000) finished run records
# straight through chorus.store (scripts/bench/runs/fill.lua, 20,000 runs a
# write transaction), starts `chorus serve` on it and asks GET /admin/runs
# QUERIES times (default 21) for each listing below. The time measured is
# the server's: the access log's duration_ms of each request (from the
# request's dispatch to its response, the admin check included), not curl's.
# Prints the median and the largest per listing. Everything listens on
# 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS_N=${RUNS_N:-1000000}
QUERIES=${QUERIES:-21}
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

echo "# make bench — runs API: chorus $(./chorus version | awk '{print $2}'), $(nproc) cores, $(date -u +%F)"
fill_s=$(LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lua/?.so;;" \
  lua5.4 scripts/bench/runs/fill.lua "$WORK/data" "$RUNS_N")
echo "# filled $RUNS_N runs in ${fill_s}s (scripts/bench/runs/fill.lua); data.mdb $(du -h "$WORK/data/data.mdb" | cut -f1)"

mkdir -p "$WORK/scripts"
cat > "$WORK/conf.lua" <<'CONF'
return { admin_token = "bench", storage = { map_size_mb = 4096, max_size_mb = 32768 } }
CONF
t0=$(date +%s.%N)
./chorus serve --config "$WORK/conf.lua" --scripts "$WORK/scripts" --data "$WORK/data" --listen 127.0.0.1:0 \
  > "$WORK/out" 2> "$WORK/log" &
PID=$!
for _ in $(seq 1 1200); do grep -q listening "$WORK/out" && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' "$WORK/out")
echo "# chorus serve up in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5)s (its start checks every record)"

# a cursor 20 pages deep into status=failed
cursor=
for _ in $(seq 1 20); do
  cursor=$(curl -s -H 'Authorization: Bearer bench' "$URL/admin/runs?status=failed&limit=50${cursor:+&cursor=$cursor}" |
    lua5.4 -e 'local j = require("dkjson").decode(io.read("a")); io.write(j.next_cursor or "")')
done

# one_listing NAME QUERY → "NAME  median  max" from the access log
one_listing() {
  local before; before=$(wc -l < "$WORK/log")
  for _ in $(seq 1 "$QUERIES"); do
    curl -s -o /dev/null -H 'Authorization: Bearer bench' "$URL/admin/runs?$2"
  done
  tail -n +"$((before + 1))" "$WORK/log" | grep '"path":"/admin/runs"' |
    NAME="$1" lua5.4 -e '
      local dkjson = require "dkjson"
      local ms = {}
      for line in io.lines() do
        local j = dkjson.decode(line)
        if j and j.duration_ms then ms[#ms + 1] = j.duration_ms end
      end
      table.sort(ms)
      io.write(("%-44s %8.3f %8.3f %6d\n"):format(os.getenv("NAME"), ms[(#ms + 1) // 2], ms[#ms], #ms))'
}

echo "# server time per GET /admin/runs (ms, access log duration_ms), $QUERIES requests each"
printf '%-44s %8s %8s %6s\n' "listing" "median" "max" "n"
one_listing "status=failed&limit=50" "status=failed&limit=50"
one_listing "status=running&limit=50 (1%)" "status=running&limit=50"
one_listing "workflow=flow7&status=timed_out&limit=50" "workflow=flow7&status=timed_out&limit=50"
one_listing "no filter, limit=50" "limit=50"
one_listing "status=failed, 21st page (cursor)" "status=failed&limit=50&cursor=$cursor"
one_listing "status=failed&since=...&until=...&limit=50" "status=failed&since=1700100000&until=1700150000&limit=50"
one_listing "key=key-500000" "key=key-500000"
one_listing "status=failed&limit=1000" "status=failed&limit=1000"
