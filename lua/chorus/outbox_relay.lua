-- chorus.outbox_relay — delivers due outbox entries, each in its own run,
-- at most `concurrency` at a time; keeps the depth, age and DLQ gauges and
-- logs the alerts of their thresholds. `chorus serve` runs one relay;
-- relay.drain delivers a memory outbox to its end (chorus run, testing).
local core = require "chorus.core"
local metrics = require "chorus.metrics"
local outbox = require "chorus.outbox"
local tracing = require "chorus.tracing"

local relay = {}

local m = {
  depth = metrics.gauge("chorus_outbox_depth", "Outbox entries waiting"),
  -- the name is kept for dashboards; it measures from the entry's creation,
  -- so it grows while an entry fails and backs off
  age = metrics.gauge("chorus_outbox_oldest_due_age_seconds", "How long the oldest pending entry has existed"),
  dlq = metrics.gauge("chorus_dlq_depth", "Entries in the dead-letter queue"),
}

local Relay = {}
Relay.__index = Relay

--- A relay over backend. opts: concurrency, poll (seconds), alerts =
--- { outbox_depth =, outbox_age =, dlq_depth = } (log a line when a value
--- reaches its threshold, and when it is back under), start_workflow
--- (function(backend, e) that runs a workflow entry: a run service's,
--- chorus.runs; without one such entries are dead), can_start (function(workflow)
--- → whether a run of that workflow may start now: its entries wait while
--- it says no),
--- transport (the HTTP
--- function deliveries use; nil: chorus.http's), telemetry (a chorus.otlp
--- exporter: each delivery of an entry with a sampled trace is a span).
function relay.new(backend, opts)
  opts = opts or {}
  return setmetatable({ backend = backend, inflight = {}, n_inflight = 0, lane_inflight = {},
    held = {}, n_held = 0,
    start_workflow = opts.start_workflow, can_start = opts.can_start, transport = opts.transport,
    telemetry = opts.telemetry,
    concurrency = opts.concurrency or outbox.defaults.concurrency, poll = opts.poll or outbox.defaults.poll,
    alerts = opts.alerts or {}, alerting = {}, stopped = false }, Relay)
end

-- ---- held entries ----------------------------------------------------------
--
-- A workflow entry whose run cannot start now (can_start says no: the
-- server's max_inflight_runs, or its workflow's inflight_runs_per_workflow)
-- waits, counted as no attempt. It is also held out of the relay's looks,
-- as an entry in flight is (in the skip set backend:due is given), until
-- its workflow has room again: else the entries behind it in its lane, of
-- other workflows, were never looked at (a look takes at most `room`
-- entries of a lane). At most MAX_HELD are held (a look scans past them
-- all); past that a waiting entry is just passed over, as before.
relay.MAX_HELD = 1024

-- Holds entry e of lane lane, waiting for a run of its workflow; false
-- when MAX_HELD are held already.
function Relay:hold(e, lane)
  if self.n_held >= relay.MAX_HELD then
    return false
  end
  local workflow = e.workflow or ""
  local list = self.held[workflow]
  if not list then
    list = {}
    self.held[workflow] = list
  end
  list[#list + 1] = { e.id, lane }
  self.inflight[e.id] = "held" -- the skip set of backend:due
  self.lane_inflight[lane] = (self.lane_inflight[lane] or 0) + 1
  self.n_held = self.n_held + 1
  return true
end

-- Lets go of the held entries of every workflow that has room again.
function Relay:release(can_start)
  local by_lane = self.lane_inflight
  for workflow, list in pairs(self.held) do
    if can_start(workflow) then
      for _, h in ipairs(list) do
        self.inflight[h[1]] = nil
        local left = by_lane[h[2]] - 1
        by_lane[h[2]] = left > 0 and left or nil
      end
      self.n_held = self.n_held - #list
      self.held[workflow] = nil
    end
  end
end

-- Starts the due entries not already in flight; returns how many started
-- and how many it held.
function Relay:tick()
  local started, held = 0, 0
  local room = self.concurrency - self.n_inflight
  if room <= 0 then
    return 0, 0
  end
  -- round-robin across lanes (chorus.outbox): the look starts with the lane
  -- after the one served last; a workflow entry waits while there is no
  -- room for its run (can_start), counted as no attempt, and is held
  local can_start = self.can_start
  if can_start and self.n_held > 0 then
    self:release(can_start)
  end
  local by_lane = self.lane_inflight
  for _, e in ipairs(self.backend:due(core.now(), room, self.inflight, by_lane, self.after)) do
    local open = not self.inflight[e.id] and e.state ~= "started" and started < room
    if open and e.kind == "workflow" and can_start and not can_start(e.workflow) then
      if self:hold(e, outbox.lane(e)) then
        held = held + 1
      end
    elseif open then
      local lane = outbox.lane(e)
      self.after = lane
      by_lane[lane] = (by_lane[lane] or 0) + 1
      self.inflight[e.id] = true
      self.n_inflight = self.n_inflight + 1
      started = started + 1
      core.start(nil, function()
        local span_id = tracing.span_id()
        local span = self.telemetry and tracing.delivery_span(e, span_id)
        local ok, err = pcall(outbox.deliver, self.backend, e, self, span_id)
        if not ok then
          outbox.log(self.backend, "error", "outbox delivery failed", { id = e.id, error = tostring(err) })
        end
        if span and err ~= "deferred" then -- a deferred start is no delivery: no span
          self.telemetry:push({ tracing.finish(span, ok and err or "error", not ok and err or nil) })
        end
        self.inflight[e.id] = nil
        self.n_inflight = self.n_inflight - 1
        local left = by_lane[lane] - 1
        by_lane[lane] = left > 0 and left or nil
        if self.waiting then -- a slot is free: the relay looks again
          core.notify(self.waiting, true)
        end
      end)
    end
  end
  return started, held
end

local function alert(self, name, value, limit)
  if not limit then
    return
  end
  local over = value >= limit and value > 0 -- fires at the threshold (0 fires at the first)
  if over and not self.alerting[name] then
    outbox.log(self.backend, "warn", "outbox alert: " .. name .. " over its threshold",
      { alert = name, value = value, threshold = limit })
  elseif not over and self.alerting[name] then
    outbox.log(self.backend, "info", "outbox alert: " .. name .. " back under its threshold",
      { alert = name, value = value, threshold = limit })
  end
  self.alerting[name] = over
end

--- Updates the depth metrics and alerts.
function Relay:observe()
  local depth, oldest, dead = self.backend:depth()
  local age = oldest and math.max(0, core.now() - oldest) or 0
  m.depth.set(nil, depth)
  m.age.set(nil, age)
  m.dlq.set(nil, dead)
  alert(self, "outbox_depth", depth, self.alerts.outbox_depth)
  alert(self, "outbox_age", age, self.alerts.outbox_age)
  alert(self, "dlq_depth", dead, self.alerts.dlq_depth)
  return depth, age, dead
end

--- Runs until stop(). While there is work it looks again as soon as a
--- delivery ends; idle, it looks every poll seconds. Metrics every second.
function Relay:run()
  local last_observe = -math.huge
  while not self.stopped do
    local started, held = self:tick()
    if core.monotime() - last_observe >= 1 then
      last_observe = core.monotime()
      self:observe()
    end
    if self.n_inflight >= self.concurrency then -- full: until a slot frees
      self.waiting = core.wait_token()
      core.wait(self.waiting)
      self.waiting = nil
    elseif started > 0 or held > 0 then -- there may be more due: look again next turn
      core.sleep(0)
    else
      core.sleep(self.poll)
    end
  end
end

function Relay:stop()
  self.stopped = true
end

--- Delivers everything in a memory outbox now and as it comes due, until it
--- is empty (chorus run without a data folder; chorus.testing). opts as
--- outbox.relay's.
function relay.drain(backend, opts)
  local r = relay.new(backend, opts)
  while true do
    r:tick()
    if r.n_inflight == 0 then
      local nxt = backend:next_due()
      if not nxt then
        return backend
      end
      core.sleep(math.max(0, nxt - core.now()))
    else
      core.sleep(0.001)
    end
  end
end

return relay
