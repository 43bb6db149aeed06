-- fanout — one event to two APIs at once (the CRM + marketing story).
--
-- Both calls run concurrently, so the run takes as long as the slowest API,
-- not the sum; all_settled lets one API fail without stopping the other.
-- Upstreams "crm" and "marketing" come from the config file (README,
-- "Config file") or from CHORUS_UPSTREAM_CRM / _MARKETING (make demo).
local chorus = require "chorus"
local http = require "chorus.http"

local TARGETS = { "crm", "marketing" }

local function deliver(ctx, name, event)
  return function()
    return http.upstream(name):post("/events", {
      json = event, idempotency_key = ctx.key(name), timeout = 5,
    })
  end
end

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
  description = "Send one event to the CRM and the marketing platform concurrently",
  run = function(ctx, event)
    if type(event) ~= "table" or type(event.type) ~= "string" then
      return { status = 400, json = { error = "input must be an event object with a 'type'" } }
    end
    local settled = chorus.all_settled(deliver(ctx, "crm", event), deliver(ctx, "marketing", event))
    local result = {}
    local delivered = 0
    for i, name in ipairs(TARGETS) do
      result[name] = outcome(settled[i])
      if result[name].ok then
        delivered = delivered + 1
      end
    end
    ctx.log.info("event fanned out", { delivered = delivered, event_type = event.type })
    return { status = delivered == #TARGETS and 200 or 207, json = result }
  end,
}
