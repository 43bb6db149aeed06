-- scripts/bench/runs/fill.lua DIR N — fills the data folder DIR with N
-- finished run records (and their index rows) written straight through
-- chorus.store, BATCH runs per write transaction, storage sync off. Ten
-- workflows; statuses 90% succeeded, 7% failed, 2% timed_out, 1% running;
-- one run in 10 has an idempotency key. Prints the seconds it took.
local core = require "chorus.core"
local store = require "chorus.store"

local dir, n = arg[1], tonumber(arg[2] or "1000000")
local BATCH = 20000
local st = assert(store.open(dir, { sync = false, map_size_mb = 4096, max_size_mb = 32768 }))
local t0 = core.monotime()
local ok, err = core.run({ instructions = 0, memory = 0, cpu_ms = 0 }, function()
  local base = 1700000000
  for i = 1, n do
    local r = i % 100
    local status = r < 90 and "succeeded" or r < 97 and "failed" or r < 99 and "timed_out" or "running"
    local started = base + i * 0.25
    st:put_run({ id = ("%08x-bench-run-%012d"):format(i, i), workflow = "flow" .. (i % 10), status = status,
      started = started, finished = status ~= "running" and started + 0.05 or nil, duration = 0.05,
      key = i % 10 == 0 and ("key-" .. i) or nil, script_hash = "5f1ca6b0a3e1",
      trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
      input = { amount = i % 1000, currency = "EUR" }, result = status == "succeeded" and { ok = true } or nil,
      error = (status == "failed" or status == "timed_out")
        and { kind = status == "failed" and "upstream" or "deadline", message = "the upstream answered 503" } or nil,
      timeline = { { kind = "http", target = "POST pay:/charges", attempts = 1, status = 201, start = started,
        duration = 0.04 } } })
    if i % BATCH == 0 or i == n then
      st:commit()
    end
  end
  st.st:put("meta", "run_index", "1")
  st:commit()
end)
assert(ok, type(err) == "table" and (err.message or err.kind) or tostring(err))
st:close()
io.stdout:write(("%.1f\n"):format(core.monotime() - t0))
