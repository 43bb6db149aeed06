-- chorus.events — durable events: ctx.event(name, { key =, timeout = })
-- parks a run until an event with that name and key arrives and returns its
-- payload; events arrive by POST /events/NAME/KEY (chorus.event_requests)
-- or from a workflow with chorus.emit(name, key, payload).
--
-- Delivery is durable before it is acknowledged: an arriving event is
-- written to the store's "events" database (kept for events.ttl) and
-- committed, then the run waiting in this process, if any, is woken. A
-- wait takes the oldest kept event of its name and key: it deletes the
-- kept event and journals the payload (an "event" effect) in the same
-- group commit, so after a crash the run either replays the payload from
-- its journal or finds the event still kept; it never gets it twice nor
-- loses it. A wait that started before a crash starts again on resume
-- (its expiry is journaled, so the timeout counts from the first wait).
--
-- Each event goes to exactly one wait: when several runs wait on the same
-- name and key, the one that has waited longest gets it and the others
-- wait on for the next event (a queue, not a broadcast).
--
-- Redeliveries are absorbed: an event with an id (Idempotency-Key header,
-- an `id` field of a JSON object payload, or chorus.emit's) that was seen
-- within events.ttl is not kept again.
--
-- Isolation: the events a workflow's runs emitted (chorus.emit) and no wait
-- took yet are counted per workflow, and a workflow has at most
-- limits.events_kept_per_workflow of them, of at most
-- limits.events_kept_bytes_per_workflow bytes of payload together (a count
-- alone let 10,000 payloads of 1 MiB each be kept): the emit past either
-- stops its run with { kind = "events_full" } (pcall cannot swallow it), so runs emitting
-- in a loop fill neither memory nor the data folder the other workflows
-- share. An emitted payload is at most limits.max_body_bytes as JSON, the
-- bound POST /events has. Events sent by POST /events belong to no workflow
-- (their auth and body bound guard them) and are not counted.
--
-- Keys in the "events" database (names and keys carry no NUL byte):
--   "k\0" name "\0" key "\0" arrival (ms, 8 bytes, then a counter, 4 bytes,
--   big-endian) id → kept event
--   "d\0" name "\0" key "\0" id → an event id seen, until it expires
--   "o\0" workflow "\0" kept event's key → { kept_by, expires, bytes }: an
--   event a workflow emitted, kept, and its payload's size; counted at start
--   (small values, no payload decoded) and then counted in memory, so the
--   caps need no scan
local core = require "chorus.core"
local errors = require "chorus.errors"
local journal = require "chorus.journal"
local runstate = require "chorus.runstate"

local events = { DEFAULT_TTL = 7 * 86400, MAX_NAME = 200 }

-- Events a workflow's runs may have kept and not taken (config
-- limits.events_kept_per_workflow; 0: no cap): without it five failed runs
-- emitting in a loop grew the process by 145 MB, or filled the data folder
-- every workflow writes to.
events.kept_cap = 10000
-- Their payloads' bytes (as JSON) together (limits.events_kept_bytes_per_workflow; 0: no cap).
events.kept_bytes_cap = 64 * 1024 * 1024
-- The most bytes an emitted payload takes as JSON (limits.max_body_bytes).
events.max_payload = 1048576

-- The process's events: where they are kept, for how long, who waits, and
-- how many each workflow keeps (its "o" rows).
local hub = { store = nil, ttl = events.DEFAULT_TTL, waiting = {}, claimed = {}, kept = {}, bytes = {} }
local arrivals = 0 -- orders the events kept in the same millisecond (never reset: testing reuses its times)

--- Sets where events are kept (a chorus.store; store.memory() when the
--- server keeps no data folder) and events.ttl; forgets who waits (a new
--- process, or chorus.testing's restart).
--- Counts the events each workflow keeps (before any run can emit).
function events.configure(opts)
  hub = { store = opts.store, ttl = opts.ttl or events.DEFAULT_TTL, waiting = {}, claimed = {}, kept = {},
    bytes = {} }
  if opts.store then
    for _, row in ipairs(opts.store.st:scan("events", { prefix = "o\0", limit = math.maxinteger })) do
      local owner = row[1]:sub(3, row[1]:find("\0", 3, true) - 1)
      local ok, v = pcall(core.json.decode, row[2])
      hub.kept[owner] = (hub.kept[owner] or 0) + 1
      hub.bytes[owner] = (hub.bytes[owner] or 0) + (ok and type(v) == "table" and tonumber(v.bytes) or 0)
    end
  end
end

--- How many events workflow owner keeps (emitted, not taken by a wait).
function events.kept(owner)
  return hub.kept[owner] or 0
end

--- How many bytes of payload the events workflow owner keeps take.
function events.kept_bytes(owner)
  return hub.bytes[owner] or 0
end

--- One of owner's kept events (of bytes of payload) went (taken, expired, swept).
function events.forget_kept(owner, bytes)
  local n = (hub.kept[owner] or 0) - 1
  hub.kept[owner] = n > 0 and n or nil
  local b = (hub.bytes[owner] or 0) - (tonumber(bytes) or 0)
  hub.bytes[owner] = (n > 0 and b > 0) and b or nil
end

local function owner_key(owner, kkey)
  return "o\0" .. owner .. "\0" .. kkey
end

--- The simulated process died: nobody waits in it any more.
function events.forget_waiters()
  hub.waiting, hub.claimed = {}, {}
end

local function store_of()
  if not hub.store then
    hub.store = require("chorus.store").memory()
  end
  return hub.store
end

--- nil when name (or key) can name an event, else why not.
function events.check_name(what, s)
  if type(s) ~= "string" or s == "" then
    return ("the event's %s must be a non-empty string"):format(what)
  end
  if #s > events.MAX_NAME then
    return ("the event's %s must be at most %d bytes"):format(what, events.MAX_NAME)
  end
  if s:find("\0", 1, true) then
    return ("the event's %s must not contain a NUL byte"):format(what)
  end
  return nil
end

local function slot(name, key)
  return name .. "\0" .. key .. "\0"
end

local function wake_one(name, key)
  local q = hub.waiting[slot(name, key)]
  while q and q.first <= q.last do
    local token = q.items[q.first]
    q.items[q.first] = nil
    q.first = q.first + 1
    if token and core.notify(token, true) then -- a wait that gave up is gone: the next one
      return true
    end
  end
  if q and hub.waiting[slot(name, key)] == q then
    hub.waiting[slot(name, key)] = nil
  end
  return false
end

-- Drops owner's kept events that expired (a folder's sweep drops them
-- within a minute; events kept in memory are never swept): at the cap, so
-- a workflow whose events nobody took gets its places back after events.ttl.
local function drop_expired(st, owner, now)
  local gone = {}
  for _, row in ipairs(st:scan_json("events", { prefix = owner_key(owner, ""), limit = math.maxinteger })) do
    local kkey, v = row.key:sub(#owner + 4), row.value
    if not hub.claimed[kkey] and not (type(v) == "table" and (tonumber(v.expires) or 0) > now) then
      st.st:del("events", row.key)
      st.st:del("events", kkey)
      gone[#gone + 1] = type(v) == "table" and v.bytes or 0
    end
  end
  if #gone > 0 then
    st:commit()
    for _, bytes in ipairs(gone) do
      events.forget_kept(owner, bytes)
    end
  end
end

-- Why workflow owner may not keep one more event of bytes, or nil.
local function over_cap(owner, bytes)
  local cap, bcap = events.kept_cap, events.kept_bytes_cap
  if cap ~= 0 and events.kept(owner) >= cap then
    return ("keeps %d events no wait took, the most limits.events_kept_per_workflow allows"):format(cap)
  end
  if bcap ~= 0 and events.kept_bytes(owner) + bytes > bcap then
    return ("keeps events no wait took of %d bytes of payload; %d more would pass "
      .. "limits.events_kept_bytes_per_workflow (%d)"):format(events.kept_bytes(owner), bytes, bcap)
  end
  return nil
end

-- Stops the current run with { kind = "events_full" } when workflow owner
-- keeps events.kept_cap events, or bytes more would pass
-- events.kept_bytes_cap: a limit, like the outbox's, whatever the script
-- catches.
local function check_cap(st, owner, now, bytes)
  if not over_cap(owner, bytes) then
    return
  end
  drop_expired(st, owner, now)
  local why = over_cap(owner, bytes)
  if why then
    error(runstate.stop(errors.new("events_full", ("chorus.emit: workflow '%s' %s; waits must take them "
      .. "(or events.ttl pass) before it emits more"):format(owner, why))), 0)
  end
end

--- Delivers an event (from inside a task): kept durably, unless its id was
--- seen within events.ttl, then the longest wait on name and key woken.
--- owner: the workflow whose run emitted it (counted against
--- events.kept_cap and, with bytes, the payload's size as JSON, against
--- events.kept_bytes_cap), nil for POST /events. Returns "kept" or
--- "duplicate"; raises when the store cannot take it.
function events.deliver(name, key, payload, id, owner, bytes)
  local st = store_of()
  local now = core.now()
  if id ~= nil then
    local seen = st:get_json("events", "d\0" .. slot(name, key) .. id)
    if type(seen) == "table" and (tonumber(seen.expires) or 0) > now then
      return "duplicate"
    end
  end
  if owner then
    bytes = bytes or #core.json.encode(payload)
    check_cap(st, owner, now, bytes)
  end
  local eid = id or core.uuid()
  local expires = now + hub.ttl
  -- keyed by arrival (ms, then a counter for the same ms): waits take them in that order
  arrivals = (arrivals + 1) & 0xffffffff
  local arrival = string.pack(">I8I4", math.floor(now * 1000), arrivals)
  local kkey = "k\0" .. slot(name, key) .. arrival .. eid
  st:put_json("events", kkey, { id = eid, payload = payload, at = runstate.micro(now), expires = expires,
    owner = owner, bytes = owner and bytes })
  if id ~= nil then
    st:put_json("events", "d\0" .. slot(name, key) .. id, { expires = expires })
  end
  if owner then
    st:put_json("events", owner_key(owner, kkey), { kept_by = owner, expires = expires, bytes = bytes })
  end
  st:commit() -- acknowledged (and handed to a wait) only once durable
  if owner then
    hub.kept[owner], hub.bytes[owner] = events.kept(owner) + 1, events.kept_bytes(owner) + bytes
  end
  wake_one(name, key)
  return "kept"
end

-- Takes the oldest kept event of name and key not taken yet: queues its
-- deletion (it lands with the journal entry of the wait that took it) and
-- returns it, or nil. Expired events found on the way go.
local function claim(name, key)
  local st = store_of()
  local now = core.now()
  for _, row in ipairs(st:scan_json("events", { prefix = "k\0" .. slot(name, key), limit = math.maxinteger })) do
    if not hub.claimed[row.key] then
      st.st:del("events", row.key)
      local e = row.value
      if type(e) == "table" and type(e.owner) == "string" then -- its place under the emitter's cap frees
        st.st:del("events", owner_key(e.owner, row.key))
        events.forget_kept(e.owner, e.bytes)
      end
      if type(e) == "table" and (tonumber(e.expires) or 0) > now then
        hub.claimed[row.key] = true -- until the deletion is committed
        return e, row.key
      end
    end
  end
  return nil
end

-- Parks the current task until an event of name and key may be kept or
-- `seconds` pass; false when they passed.
local function park(name, key, seconds)
  local s = slot(name, key)
  local q = hub.waiting[s]
  if not q then
    q = { items = {}, first = 1, last = 0 }
    hub.waiting[s] = q
  end
  local token = core.wait_token()
  q.last = q.last + 1
  local mine = q.last
  q.items[mine] = token
  local woken = runstate.wait(token, seconds)
  if woken == nil then -- gave up (or cancelled): out of the queue, so waits on unique keys leave nothing
    q.items[mine] = nil
    while q.first <= q.last and q.items[q.first] == nil do
      q.first = q.first + 1
    end
  end
  if q.first > q.last and hub.waiting[s] == q then
    hub.waiting[s] = nil
  end
  return woken ~= nil
end

--- How many waits are parked in this process, over how many names and keys.
function events.waiting()
  local waits, slots = 0, 0
  for _, q in pairs(hub.waiting) do
    slots = slots + 1
    for i = q.first, q.last do
      waits = waits + (q.items[i] and 1 or 0)
    end
  end
  return waits, slots
end

local OPTIONS = { key = true, timeout = true }

--- ctx.event(name, { key = K, timeout = S }): the payload of the event,
--- raising { kind = "timeout" } when none came within S seconds (the run's
--- deadline still applies: the deadline error when it comes first).
function events.wait(name, opts)
  local err = events.check_name("name", name)
  if err then
    error("ctx.event: " .. err, 2)
  end
  if type(opts) ~= "table" then
    error("ctx.event(name, { key = K, timeout = S }): opts must be a table", 2)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      error(("ctx.event: unknown option '%s' (key, timeout)"):format(tostring(k)), 2)
    end
  end
  local key = opts.key
  if math.type(key) == "integer" then
    key = tostring(key)
  end
  err = events.check_name("key", key)
  if err then
    error("ctx.event: " .. err, 2)
  end
  local timeout = opts.timeout
  if timeout ~= nil and not (type(timeout) == "number" and timeout > 0 and timeout == timeout) then
    error("ctx.event: timeout must be a positive number of seconds", 2)
  end
  local run = runstate.current()
  local svc = run and run.env and run.env.service
  if svc then
    svc:check_wait(run.workflow, name, "ctx.event")
  end
  local target = name .. "/" .. key
  -- when the wait gives up, journaled: a run resumed after a crash waits
  -- only what is left of it
  local expires = journal.effect("event", target .. " wait", function()
    return timeout and timeout < math.huge and core.now() + timeout or false
  end)
  local taken
  local got = journal.effect("event", target, function()
    local asked = core.now()
    local function noted(outcome, value) -- the wait's timeline entry, kept with the effect
      local now_run = runstate.current()
      if now_run then
        journal.note(now_run, { kind = "event", event = name, key = key, start = runstate.micro(asked),
          waited = runstate.micro(core.now() - asked), outcome = outcome })
      end
      return value
    end
    while true do
      local stopped = runstate.stopped()
      if stopped then -- the run is ending (its deadline, ...): it takes no event it cannot record
        error(stopped, 0)
      end
      local e, k = claim(name, key)
      if e then
        taken = k
        return noted("came", { id = e.id, payload = e.payload })
      end
      local left = expires and expires - core.now() or math.huge
      local deadline = runstate.remaining()
      if deadline <= left then -- the run's deadline comes first
        if not park(name, key, math.max(deadline, 0)) then
          error(runstate.deadline_error(("waiting for event %s"):format(target)), 0)
        end
      elseif left <= 0 or not park(name, key, left) then
        return noted("timeout", { timeout = true })
      end
    end
  end)
  if taken then -- the deletion has landed with the journal entry: forget the claim
    local st = store_of()
    pcall(st.commit, st)
    hub.claimed[taken] = nil
  end
  if got.timeout then
    error(errors.new("timeout", ("no event %s arrived within %g s"):format(target, timeout),
      { event = name, key = key }), 0)
  end
  return got.payload
end

--- chorus.emit(name, key, payload): delivers an event from a workflow, as
--- POST /events/NAME/KEY does. Its id is payload.id when the payload is a
--- table with a string or integer id (a provider's redelivered webhook is
--- absorbed), else one made of the run id and the emit's journal step; an
--- effect, so a replayed run does not emit again. Returns "kept"
--- or "duplicate".
function events.emit(name, key, payload)
  local err = events.check_name("name", name)
  if math.type(key) == "integer" then
    key = tostring(key)
  end
  err = err or events.check_name("key", key)
  if err then
    error("chorus.emit: " .. err, 2)
  end
  local run = runstate.current()
  if not run then
    -- a script's top level (or a config file) has no run: its events were
    -- no workflow's, past every workflow's caps and share, and emitted
    -- again at each load (a load's events filled the data folder: 507
    -- for every workflow)
    error("chorus.emit: only inside a run; at a script's top level it would emit at every load, "
      .. "counted against no workflow; call it inside run()", 2)
  end
  local id = type(payload) == "table" and payload.id
  if math.type(id) == "integer" then
    id = tostring(id)
  end
  if type(id) ~= "string" or id == "" then
    id = nil
  end
  local ok, text = pcall(core.json.encode, payload)
  local bytes = ok and #text or nil
  if ok and #text > events.max_payload then
    error(errors.new("too_large", ("chorus.emit: the payload is %d bytes as JSON, more than the %d "
      .. "limits.max_body_bytes allows"):format(#text, events.max_payload)), 2)
  end
  local svc = run.env and run.env.service
  if svc then
    svc:check_emit(run.workflow, name, "chorus.emit")
  end
  if not id then -- the emit's journal step: the same id when a replay emits again
    run.emits = (run.emits or 0) + 1
    id = run.run_id .. ":emit:" .. (journal.next_step() or run.emits)
  end
  return journal.effect("emit", name .. "/" .. key, function()
    return events.deliver(name, key, payload, id, run.workflow, bytes)
  end)
end

return events
