-- soak: one event to two upstreams at once. "crm" is fast and idempotent
-- (exactly-once); "marketing" is slow and, depending on input.mode, fails
-- once then recovers (flaky), answers 503 (down), drops the connection
-- (reset) or never answers (hang). The run answers 200 when both took the
-- event, 207 otherwise.
local chorus = require "chorus"
local http = require "chorus.http"

local MARKETING = {
  ok = { upstream = "marketing", path = function() return "/events" end },
  flaky = { upstream = "marketing", path = function(n) return "/flaky/" .. n .. "?seq=503,200" end },
  down = { upstream = "marketing_down", path = function() return "/events" end },
  reset = { upstream = "marketing_reset", path = function() return "/events" end },
  hang = { upstream = "marketing_hang", path = function() return "/events" end },
}

local function outcome(settled)
  if not settled.ok then
    local err = settled.err
    return { ok = false, error = type(err) == "table" and err.kind or tostring(err) }
  end
  local status = settled.value.status
  return { ok = status >= 200 and status < 300, status = status }
end

return chorus.workflow {
  name = "fanout",
  idempotency = { required = true },
  timeout = 60,
  run = function(ctx, input)
    local m = type(input) == "table" and type(input.n) == "string" and MARKETING[input.mode]
    if not m then
      return { status = 400, json = { error = "a fan-out needs n and a known mode" } }
    end
    local event = { n = input.n, type = "signup" }
    local settled = chorus.all_settled(function()
      return http.upstream("crm"):post("/events", { json = event, idempotency_key = ctx.key "crm" })
    end, function()
      return http.upstream(m.upstream):post(m.path(input.n), { json = event,
        idempotency_key = ctx.key "marketing" })
    end)
    local result = { crm = outcome(settled[1]), marketing = outcome(settled[2]) }
    local both = result.crm.ok and result.marketing.ok
    return { status = both and 200 or 207, json = result }
  end,
}
