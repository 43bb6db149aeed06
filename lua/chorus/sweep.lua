-- chorus.sweep — keeps the data folder from growing forever: expired
-- idempotency keys, kept events and event ids past events.ttl, and finished
-- run records older than storage.runs_retention go, a bounded step at a time, once a minute.
local core = require "chorus.core"
local events = require "chorus.events"
local log = require("chorus.log").event
local state = require "chorus.server_state"

local sweep = {}

local SWEEP_EVERY = 60
local SWEEP_BATCH = 5000
-- Records decoded between two turns of the loop: the sweep runs on the
-- loop's thread, and a batch decoded at once (5,000 run records, about a
-- kilobyte each) held every request for 66 ms once a minute.
local SWEEP_STEP = 250
local DEFAULT_RETENTION = 7 * 24 * 3600

-- Up to SWEEP_BATCH records of db from `from` on, SWEEP_STEP at a time with
-- a turn of the loop between steps; returns how many expired(...) deleted
-- and where the next sweep starts (nil: from the top).
local function sweep_db(st, db, from, expired)
  local deleted, seen = 0, 0
  repeat
    local n, next_from = st:sweep(db, from, SWEEP_STEP, expired)
    deleted, seen, from = deleted + n, seen + SWEEP_STEP, next_from
    if from and seen < SWEEP_BATCH then
      core.sleep(0)
    end
  until not from or seen >= SWEEP_BATCH
  return deleted, from
end

-- Every minute, a step through the idempotency keys (expired ones go) and
-- the run records (finished ones older than storage.runs_retention go), so
-- the data folder does not grow forever.
--- The sweep, as a background run of `chorus serve` with a data folder.
function sweep.loop()
  local st = state.store
  local retention = (state.config.storage or {}).runs_retention or DEFAULT_RETENTION
  local keys_from, runs_from, events_from
  while not state.draining do
    core.sleep(SWEEP_EVERY)
    local now = core.now()
    local keys, old_runs
    keys, keys_from = sweep_db(st, "idempotency", keys_from, function(rec, size, key)
      local old = rec.state ~= "running" and rec.expires_at ~= nil and rec.expires_at <= now
      if old then -- its stored response is its workflow's share again
        st:release_idempotency(key, rec, size)
      end
      return old
    end)
    old_runs, runs_from = sweep_db(st, "runs", runs_from, function(rec, size)
      local old = rec.status ~= "running" and rec.finished ~= nil and rec.finished < now - retention
      if old and type(rec.id) == "string" then
        -- the journal kept for a redrive goes with the record, and what
        -- both held is its workflow's again (storage.workflow_share_mb)
        st:release_run(rec, size)
        st:drop_deliveries(rec.id)
      end
      return old
    end)
    -- kept events no wait took, and seen event ids, once events.ttl is up
    local old_events
    old_events, events_from = sweep_db(st, "events", events_from, function(rec)
      local old = type(rec) ~= "table" or (tonumber(rec.expires) or 0) <= now
      if old and type(rec) == "table" and type(rec.kept_by) == "string" then
        events.forget_kept(rec.kept_by, rec.bytes) -- its place under limits.events_kept_per_workflow frees
      end
      return old
    end)
    if keys + old_runs + old_events > 0 then
      st:commit()
      log("info", "swept the data folder", { expired_keys = keys, old_runs = old_runs, old_events = old_events })
    end
  end
end

local COUNTS_EVERY = 1

--- Once a second, the changes other processes (the CLI: `chorus dlq drop`,
--- `dlq replay`, ...) made to what each workflow holds and to the outbox
--- lanes are folded into the server's counts (chorus.store, absorb_counts),
--- so its share checks, its metrics and its next writes see them.
function sweep.counts_loop()
  local st = state.store
  while not state.draining do
    core.sleep(COUNTS_EVERY)
    local ok, n = pcall(st.absorb_counts, st)
    if ok and n > 0 then
      ok, n = pcall(st.commit, st)
    end
    if not ok then
      log("error", "cannot fold in the counts another process changed", { error = tostring(n) })
    end
  end
end

return sweep
