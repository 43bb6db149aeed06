-- start_runs — bench_recovery.sh's load generator, run with `chorus run`:
-- starts input.total runs with POST input.url, Prefer: respond-async (each
-- answered 202 at once), input.concurrency requests at a time. Returns how
-- many were accepted and its own rate, so the benchmark shows it is not
-- what limits the start of the runs.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "bench_start_runs",
  run = function(ctx, input)
    local sent, accepted, failures = 0, 0, 0
    local function worker()
      while sent < input.total do
        sent = sent + 1
        local ok, res = pcall(http.post, input.url, { body = "{}",
          headers = { ["Content-Type"] = "application/json", Prefer = "respond-async" } })
        if ok and res.status == 202 then
          accepted = accepted + 1
        else
          failures = failures + 1
        end
      end
    end
    local workers = {}
    for i = 1, input.concurrency do workers[i] = worker end
    local t0 = ctx.now()
    chorus.all(table.unpack(workers))
    local wall = ctx.now() - t0
    return { accepted = accepted, failures = failures, seconds = wall, per_s = math.floor(accepted / wall) }
  end,
}
