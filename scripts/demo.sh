#!/usr/bin/env bash
# demo.sh — `make demo`: runs the fan-out example end to end. Starts the mock
# upstream on loopback as the "crm" (200 ms) and "marketing" (300 ms) APIs,
# runs examples/fanout/fanout.lua once with `chorus run`, prints the result
# and the wall time (about 300 ms: the slowest call, not the sum), stops.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 3< <(build/mock-upstream --max-seconds 60)
MOCK_PID=$!
trap 'kill $MOCK_PID 2>/dev/null || true' EXIT
read -r line <&3
URL="http://${line#listening }"
export CHORUS_UPSTREAM_CRM="$URL/crm?delay=200"
export CHORUS_UPSTREAM_MARKETING="$URL/marketing?delay=300"
echo "\$ chorus run examples/fanout/fanout.lua --input '{\"type\":\"signup\",\"email\":\"ada@example.com\"}'"
start=$(date +%s%N)
./chorus run examples/fanout/fanout.lua --input '{"type":"signup","email":"ada@example.com"}'
end=$(date +%s%N)
echo "# finished in $(( (end - start) / 1000000 )) ms (crm 200 ms + marketing 300 ms, called concurrently)"
