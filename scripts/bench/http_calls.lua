-- http_calls — the client-path benchmark workflow (make bench).
--
-- input: { url =, total = calls, concurrency = in flight, delay_ms = mock delay }
-- Phase 1: `concurrency` workers share `total` calls (chorus.all of workers).
-- Phase 2: one wave of `concurrency` simultaneous calls on warm connections,
-- timed as a whole: ~delay_ms if they run concurrently, a multiple if in waves.
-- os.clock() is this process's CPU time (user + system), so CPU per call
-- excludes the mock; bench.sh also splits it with /usr/bin/time.
local chorus = require "chorus"
local http = require "chorus.http"

local function percentile(sorted, p)
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

return chorus.workflow {
  name = "bench_http_calls",
  run = function(ctx, input)
    local url = input.url .. "/bench?delay=" .. input.delay_ms
    local latencies, failures, next_call = {}, 0, 0
    local function worker()
      while next_call < input.total do
        next_call = next_call + 1
        local t0 = ctx.now()
        local ok, res = pcall(http.get, url)
        latencies[#latencies + 1] = ctx.now() - t0
        if not ok or res.status ~= 200 then failures = failures + 1 end
      end
    end
    local workers = {}
    for i = 1, input.concurrency do workers[i] = worker end
    local cpu0, wall0 = os.clock(), ctx.now()
    chorus.all(table.unpack(workers))
    local wall, cpu = ctx.now() - wall0, os.clock() - cpu0
    table.sort(latencies)

    local wave = {}
    for i = 1, input.concurrency do wave[i] = function() return http.get(url).status end end
    local w0 = ctx.now()
    chorus.all(table.unpack(wave))
    local wave_ms = (ctx.now() - w0) * 1000

    return {
      calls = #latencies, failures = failures, concurrency = input.concurrency,
      delay_ms = input.delay_ms, wall_s = wall, calls_per_s = #latencies / wall,
      cpu_us_per_call = cpu / #latencies * 1e6,
      p50_overhead_ms = percentile(latencies, 0.5) * 1000 - input.delay_ms,
      p99_overhead_ms = percentile(latencies, 0.99) * 1000 - input.delay_ms,
      wave_ms = wave_ms,
    }
  end,
}
