-- chorus.deliveries — what became of each outbox entry a run made.
--
-- GET /runs/ID lists the outbox entries the run enqueued (ctx.later starts,
-- queued calls, saga chains, its run-end webhook) with their delivery state
-- as it stands when the record is read. The backend keeps a row per entry,
-- written when the entry is added and again each time a delivery settles:
-- whole rows, never read back and changed, so two entries settling in one
-- group commit cannot undo each other's news.
local core = require "chorus.core"
local runstate = require "chorus.runstate"

local deliveries = {}

local function micro_or_nil(t)
  return t and runstate.micro(t)
end

--- The run an entry belongs to and its delivery row in state "pending",
--- "delivered" or "dead"; nil for an entry no run made.
function deliveries.row(e, state)
  local run_id = e.from_run or e.run_id -- a webhook carries the run it reports
  if not run_id then
    return nil
  end
  local target
  if e.kind == "workflow" then
    target = e.workflow
  elseif e.kind == "chain" then
    target = ("%s (%d calls)"):format(tostring(e.name), type(e.steps) == "table" and #e.steps or 0)
  elseif type(e.request) == "table" then
    target = tostring(e.request.method) .. " " .. tostring(e.request.url)
  end
  -- attempts: the deliveries tried (e.attempts counts the failed ones)
  local attempts = state == "delivered" and e.attempts + 1 or e.attempts
  return run_id, { id = e.id, kind = (e.run_id and not e.from_run) and "webhook" or e.kind, target = target,
    state = state, attempts = attempts, last_error = e.last_error, created = micro_or_nil(e.created),
    settled = state ~= "pending" and micro_or_nil(core.now()) or nil }
end

--- text (a run record's JSON object) with `enqueued`: the outbox entries
--- the run made, oldest first, as their delivery rows (backend:deliveries)
--- say they stand now.
function deliveries.add_to_record(text, rows)
  if not rows or #rows == 0 or text:sub(-1) ~= "}" then
    return text
  end
  table.sort(rows, function(a, b)
    local ca, cb = a.created or 0, b.created or 0
    if ca ~= cb then
      return ca < cb
    end
    return tostring(a.id) < tostring(b.id)
  end)
  return text:sub(1, -2) .. ',"enqueued":' .. require("chorus.secrets").redact(core.json.encode(rows)) .. "}"
end

return deliveries
