-- chorus.outbox_durable — the outbox kept in the data folder (chorus.store):
-- entries in due order, the DLQ, and the delivery rows of each run
-- (chorus.deliveries). A backend: add, update, remove, move, bury, due,
-- pending, commit, track, deliveries, depth (chorus.outbox calls them).
local deliveries = require "chorus.deliveries"

local durable = {}

local Durable = {}
Durable.__index = Durable

--- The outbox of a data folder (a chorus.store).
function durable.new(st)
  return setmetatable({ st = st }, Durable)
end

function Durable:add(e)
  local lane = e.owner or ""
  self.st:lane_pending(lane) -- counted before this entry lands
  self.st:put_outbox(e)
  self.st:lane_changed(lane, 1)
  self:track(e, "pending")
end
function Durable:update(e) self.st:put_outbox(e) end
function Durable:remove(e)
  self.st:del_outbox(e)
  self.st:lane_changed(e.owner or "", -1)
  self.st:release_entry(e) -- delivered: its bytes are its workflow's again
end
function Durable:move(old_due, e)
  self.st:del_outbox({ due = old_due, id = e.id, owner = e.owner })
  self.st:put_outbox(e)
end
-- (a dead entry stays held by its workflow until it is dropped)
function Durable:bury(e)
  self.st:del_outbox(e)
  self.st:put_dlq(e)
  self.st:lane_changed(e.owner or "", -1)
end
-- Round-robin across lanes (chorus.store due_outbox), after lane `after`.
function Durable:due(now, limit, skip, skip_count, after)
  return self.st:due_outbox(now, limit, skip, skip_count, after)
end
--- How many entries workflow owner has pending.
function Durable:pending(owner) return self.st:lane_pending(owner) end
function Durable:commit() self.st:commit() end
function Durable:track(e, state)
  local run_id, row = deliveries.row(e, state)
  if run_id then
    self.st:put_delivery(run_id, row)
  end
end
function Durable:deliveries(run_id) return self.st:deliveries(run_id) end
-- Entries whose creation time depth() looks at: the outbox is kept in due
-- order, and an entry backing off moves back in it, so the oldest is found
-- by looking (once a second); a backlog beyond this trips outbox_depth.
local AGE_SCAN = 10000

function Durable:depth()
  local oldest
  for _, created in ipairs(self.st:outbox_created(AGE_SCAN)) do
    oldest = math.min(oldest or created, created)
  end
  return self.st:count("outbox"), oldest, self.st:count("dlq")
end

return durable
