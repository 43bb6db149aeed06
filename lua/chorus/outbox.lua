-- chorus.outbox — work a run hands over to be done after it, durably:
-- ctx.later(workflow, input), HTTP calls made with later = true, saga
-- compensations and commits, and run-end webhooks.
--
-- An entry is written in the same group commit as the run's journal entry
-- for it, so it exists exactly when the run reached that point. The relay
-- delivers due entries in due order, each in its own run: a workflow start
-- (a durable run whose id is the entry id, so its ctx.key values and hence
-- its outbound idempotency keys are the same on every attempt), an HTTP
-- request (sent with the entry's Idempotency-Key), or a chain of HTTP
-- requests delivered one after the other (saga compensations, in order).
-- A failed delivery is retried with backoff, its attempts and next due time
-- persisted; permanent failures (4xx other than 408, 425, 429) and
-- exhausted attempts move the entry to the DLQ with the last error.
--
-- Two backends hold entries: the data folder (chorus.store) when there is
-- one, else memory (chorus run without --data, chorus.testing).
local core = require "chorus.core"
local errors = require "chorus.errors"
local journal = require "chorus.journal"
local metrics = require "chorus.metrics"
local runstate = require "chorus.runstate"

local outbox = {}

outbox.defaults = { attempts = 8, base = 1, cap = 300, concurrency = 64, poll = 0.1 }

local m = {
  delivered = metrics.counter("chorus_outbox_delivered_total", "Outbox entries delivered", { "kind" }),
  retried = metrics.counter("chorus_outbox_retries_total", "Outbox deliveries that failed and will retry",
    { "kind" }),
  dead = metrics.counter("chorus_outbox_dead_total", "Outbox entries moved to the DLQ", { "kind" }),
  depth = metrics.gauge("chorus_outbox_depth", "Outbox entries waiting"),
  -- the name is kept for dashboards; it measures from the entry's creation,
  -- so it grows while an entry fails and backs off
  age = metrics.gauge("chorus_outbox_oldest_due_age_seconds", "How long the oldest pending entry has existed"),
  dlq = metrics.gauge("chorus_dlq_depth", "Entries in the dead-letter queue"),
}

-- ---- backends -----------------------------------------------------------

local Durable = {}
Durable.__index = Durable

--- The outbox of a data folder (a chorus.store).
function outbox.durable(st)
  return setmetatable({ st = st }, Durable)
end

function Durable:add(e)
  self.st:put_outbox(e)
  self:track(e, "pending")
end
function Durable:update(e) self.st:put_outbox(e) end
function Durable:remove(e) self.st:del_outbox(e) end
function Durable:move(old_due, e)
  self.st:del_outbox({ due = old_due, id = e.id })
  self.st:put_outbox(e)
end
function Durable:bury(e) self.st:del_outbox(e); self.st:put_dlq(e) end
function Durable:due(now, limit, skip, skip_count) return self.st:due_outbox(now, limit, skip, skip_count) end
function Durable:commit() self.st:commit() end
function Durable:track(e, state)
  local run_id, row = outbox.delivery(e, state)
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

local Memory = {}
Memory.__index = Memory

-- The memory outbox keeps its pending entries in a binary heap by (due,
-- seq), so the relay finds the due ones in O(k log n) instead of sorting
-- every pending entry on each look (a look follows every delivery: with a
-- backlog of thousands that sort was most of the relay's time). A heap item
-- is { due =, seq =, e = }; one whose entry has since gone, or moved to
-- another due time, is stale and dropped when it comes up.
local function before(a, b)
  return a.due < b.due or (a.due == b.due and a.seq < b.seq)
end

local function heap_push(h, item)
  local i = #h + 1
  h[i] = item
  while i > 1 do
    local parent = i // 2
    if not before(h[i], h[parent]) then
      break
    end
    h[i], h[parent] = h[parent], h[i]
    i = parent
  end
end

local function heap_pop(h)
  local n = #h
  local top = h[1]
  h[1] = h[n]
  h[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, r, least = 2 * i, 2 * i + 1, i
    if l <= n and before(h[l], h[least]) then
      least = l
    end
    if r <= n and before(h[r], h[least]) then
      least = r
    end
    if least == i then
      break
    end
    h[i], h[least] = h[least], h[i]
    i = least
  end
  return top
end

--- An outbox in memory: entries (pending, by id), dead (the DLQ). With
--- keep (chorus.testing, chorus run) it also lists every entry ever added
--- (all, in order) and the delivered ones; a server does not, or the lists
--- would grow forever.
function outbox.memory(keep)
  return setmetatable({ entries = {}, heap = {}, indexed = setmetatable({}, { __mode = "k" }),
    dead = {}, n_dead = 0, keep = keep, all = keep and {} or nil, delivered = keep and {} or nil,
    rows = {}, row_runs = {}, row_first = 1 }, Memory)
end

-- Whether a heap item still stands for a pending entry at its due time.
local function live(self, item)
  local e = item.e
  return self.entries[e.id] == e and self.indexed[e] == item.due
end

-- Puts e in the heap at its due time unless it is there already.
local function index(self, e)
  if self.indexed[e] ~= e.due then
    self.indexed[e] = e.due
    heap_push(self.heap, { due = e.due, seq = e.seq, e = e })
  end
end

function Memory:add(e)
  self:track(e, "pending")
  self.entries[e.id] = e
  index(self, e)
  if self.keep then
    self.all[#self.all + 1] = e
  end
end
function Memory:update(e)
  self.entries[e.id] = e
  index(self, e)
end
function Memory:remove(e)
  self.entries[e.id] = nil
  if self.keep then
    self.delivered[#self.delivered + 1] = e
  end
end
function Memory:move(_, e)
  self.entries[e.id] = e
  index(self, e)
end
function Memory:bury(e)
  self.entries[e.id] = nil
  self.n_dead = self.n_dead + 1
  if self.keep then
    self.dead[#self.dead + 1] = e
  end
end
-- The first limit entries due by now, oldest first, leaving out those in
-- skip (in flight). Every live item taken off the heap goes back on it: the
-- entries stay pending until settled.
function Memory:due(now, limit, skip)
  local heap, out, back, seen = self.heap, {}, {}, {}
  limit = limit or math.huge
  while #out < limit and heap[1] and heap[1].due <= now do
    local item = heap_pop(heap)
    local e = item.e
    if live(self, item) and not seen[e] then
      seen[e] = true
      back[#back + 1] = item
      if not (skip and skip[e.id]) then
        out[#out + 1] = e
      end
    end
  end
  for i = 1, #back do
    heap_push(heap, back[i])
  end
  return out
end
function Memory.commit() end

-- The delivery rows of this many runs are kept (as many as a server keeps
-- finished records by default): a memory outbox must not grow forever.
local MEMORY_ROW_RUNS = 10000

function Memory:track(e, state)
  local run_id, row = outbox.delivery(e, state)
  if not run_id then
    return
  end
  local rows = self.rows[run_id]
  if not rows then
    rows = {}
    self.rows[run_id] = rows
    local runs = self.row_runs
    runs[#runs + 1] = run_id
    if #runs - self.row_first + 1 > MEMORY_ROW_RUNS then -- the oldest run's rows go
      self.rows[runs[self.row_first]] = nil
      runs[self.row_first] = nil
      self.row_first = self.row_first + 1
    end
  end
  rows[row.id] = row
end
function Memory:deliveries(run_id)
  local out = {}
  for _, row in pairs(self.rows[run_id] or {}) do
    out[#out + 1] = row
  end
  return out
end
function Memory:depth()
  local n, oldest = 0, nil
  for _, e in pairs(self.entries) do
    n = n + 1
    local created = e.created or e.due
    oldest = math.min(oldest or created, created)
  end
  return n, oldest, self.n_dead
end
function Memory:next_due()
  local heap = self.heap
  while heap[1] do
    if live(self, heap[1]) then
      return heap[1].due
    end
    heap_pop(heap) -- stale
  end
  return nil
end

-- The backend entries go to when a run has no journal; chorus run and
-- chorus.testing set it.
outbox.backend = outbox.memory(true)

-- ---- enqueueing ---------------------------------------------------------

local seq = 0

-- A new entry: kind "workflow" | "http" | "chain"; opts: delay, attempts,
-- base, cap (seconds).
local function new_entry(kind, fields, opts)
  opts = opts or {}
  seq = seq + 1
  local now = core.now()
  local e = { id = core.uuid(), kind = kind, due = now + (opts.delay or 0), created = now,
    attempts = 0, max_attempts = opts.attempts or outbox.defaults.attempts,
    base = opts.base or outbox.defaults.base, cap = opts.cap or outbox.defaults.cap, seq = seq }
  for k, v in pairs(fields) do
    e[k] = v
  end
  local run = runstate.current()
  if run then
    e.from_run = run.run_id
    e.redact = run.redact -- listings mask these fields; delivery uses the real ones
  end
  return e
end
outbox.new_entry = new_entry

-- ---- what became of each entry ----------------------------------------------
--
-- GET /runs/ID lists the outbox entries the run enqueued (ctx.later starts,
-- queued calls, saga chains, its run-end webhook) with their delivery state
-- as it stands when the record is read. The backend keeps a row per entry,
-- written when the entry is added and again each time a delivery settles:
-- whole rows, never read back and changed, so two entries settling in one
-- group commit cannot undo each other's news.

local function micro_or_nil(t)
  return t and runstate.micro(t)
end

--- The run an entry belongs to and its delivery row in state "pending",
--- "delivered" or "dead"; nil for an entry no run made.
function outbox.delivery(e, state)
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
function outbox.with_deliveries(text, rows)
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

-- Writes e where the current run keeps its state, journaled so a replay
-- does not enqueue it twice. Returns the entry id.
local function enqueue(e, target)
  return journal.effect("later", target, function()
    local run = runstate.current()
    local j = run and run.journal
    if run and run.env and run.env.backend then -- the run service's outbox (chorus.runs)
      run.env.backend:add(e)
    elseif j and j.store.put_outbox then -- a data folder
      outbox.durable(j.store):add(e)
    else
      outbox.backend:add(e)
    end
    if run then
      run.outbox = run.outbox or {}
      run.outbox[#run.outbox + 1] = e
    end
    return e.id
  end)
end

local LATER_OPTS = { delay = true, attempts = true, base = true, cap = true }

local function check_opts(who, opts)
  if opts == nil then
    return {}
  end
  if type(opts) ~= "table" then
    error(("%s: opts must be a table { delay =, attempts =, base =, cap = }"):format(who), 3)
  end
  for k, v in pairs(opts) do
    if not LATER_OPTS[k] then
      error(("%s: unknown option '%s' (known: delay, attempts, base, cap)"):format(who, tostring(k)), 3)
    end
    if type(v) ~= "number" or v < 0 or (k == "attempts" and (math.type(v) ~= "integer" or v < 1)) then
      error(("%s: option '%s' must be a %s"):format(who, k,
        k == "attempts" and "positive integer" or "non-negative number of seconds"), 3)
    end
  end
  return opts
end

--- ctx.later: a workflow start after this run. Returns the entry id.
function outbox.later(workflow, input, opts)
  if type(workflow) ~= "string" or workflow == "" then
    error("ctx.later(workflow, input, opts): workflow must be a workflow name", 2)
  end
  opts = check_opts("ctx.later", opts)
  return enqueue(new_entry("workflow", { workflow = workflow, input = input }, opts), workflow)
end

--- An HTTP request (prepared by chorus.http: method, url, headers, body)
--- sent after this run. Returns the entry id.
function outbox.request(req, opts)
  opts = check_opts("later", opts)
  local e = new_entry("http", { request = { method = req.method, url = req.url, headers = req.headers,
    body = req.body, timeout = req.timeout, upstream = req.path and req.upstream, path = req.path },
    upstream = req.upstream }, opts)
  return enqueue(e, req.method .. " " .. req.url)
end

--- A chain of HTTP requests delivered in order (saga compensations).
function outbox.chain(name, requests, opts)
  local e = new_entry("chain", { name = name, steps = requests, next = 1 }, opts)
  return enqueue(e, "chain " .. name)
end

-- ---- delivery -----------------------------------------------------------


-- Classifies an HTTP outcome: nil when delivered, else a failure.
local function http_failure(status, headers, body)
  if not status then -- an address the egress policy refuses will not change: no retry
    return { error = { kind = headers, message = body }, permanent = headers == "egress_denied" }
  end
  if status < 400 then
    return nil
  end
  local f = { error = { kind = "http", status = status, message = ("HTTP %d"):format(status),
    body = #body <= 512 and body or body:sub(1, 512) } }
  f.permanent = not core.retryable_status(status) -- a 4xx other than 408, 425, 429
  local ra = headers["retry-after"]
  if ra then
    f.retry_after = core.retry_after(ra, core.now())
  end
  return f
end

local function send(req, key, transport)
  local headers = {}
  for k, v in pairs(req.headers or {}) do
    headers[k] = v
  end
  if not headers["Idempotency-Key"] then
    headers["Idempotency-Key"] = key
  end
  local http = require "chorus.http"
  -- a call to a named upstream goes where the config points now (a fixed
  -- base_url applies to queued and replayed entries too); url is the
  -- address at queueing, used when the upstream is gone
  local url = req.upstream and req.path and http.resolve(req.upstream, req.path) or req.url
  -- restricted: the URL came from a request (callback_url), so the egress
  -- policy refuses non-public addresses (flag 4)
  local status, h, body = (transport or http.transport())(req.method, url, headers, req.body, 10, req.timeout or 30,
    req.restricted and 4 or 0)
  return http_failure(status, h, body)
end

local function backoff(e, failure)
  local wait = math.min(e.cap, e.base * 2 ^ (e.attempts - 1))
  wait = wait / 2 + math.random() * wait / 2 -- jitter: entries failing together spread out
  if failure and failure.retry_after then
    wait = math.max(wait, failure.retry_after)
  end
  return wait
end

-- Where the outbox's own lines go when its backend has no log_sink of
-- its own (a backend's log_sink: chorus.testing collects them there).
outbox.log_sink = nil

local function log(backend, level, msg, fields)
  return require("chorus.log").event(level, msg, fields, backend and backend.log_sink or outbox.log_sink)
end

-- settle's work: "delivered", "retry" or "dead".
local function settle_entry(backend, e, failure)
  if not failure then
    backend:remove(e)
    m.delivered.inc({ e.kind })
    return "delivered"
  end
  e.attempts = e.attempts + 1
  e.last_error = errors.normalize(failure.error)
  e.state = nil
  if failure.permanent or e.attempts >= e.max_attempts then
    e.failed_at = core.now()
    backend:bury(e)
    m.dead.inc({ e.kind })
    log(backend, "error", "outbox entry moved to the DLQ", { id = e.id, kind = e.kind, attempts = e.attempts,
      target = e.workflow or (e.request and e.request.url) or e.name, error = e.last_error })
    return "dead"
  end
  local old_due = e.due
  e.due = core.now() + backoff(e, failure)
  backend:move(old_due, e)
  m.retried.inc({ e.kind })
  return "retry"
end

--- Records the outcome of one delivery of e: removed when delivered,
--- rescheduled when it may retry, else moved to the DLQ. Returns
--- "delivered", "retry" or "dead", and updates the entry's delivery row.
--- The caller commits.
function outbox.settle(backend, e, failure)
  local outcome = settle_entry(backend, e, failure)
  if backend.track then
    backend:track(e, outcome == "retry" and "pending" or outcome)
  end
  return outcome
end

-- Delivers e once (inside its own run). opts: the relay's start_workflow
-- (starts a workflow entry's run: "started" when the run settles e itself,
-- else ok, err; a run service's, chorus.runs) and transport.
local function deliver(backend, e, opts)
  opts = opts or {}
  if e.kind == "http" then
    outbox.settle(backend, e, send(e.request, e.id, opts.transport))
  elseif e.kind == "chain" then
    while e.next <= #e.steps do
      local failure = send(e.steps[e.next], e.id .. ":" .. e.next, opts.transport)
      if failure then
        outbox.settle(backend, e, failure)
        backend:commit()
        return
      end
      e.next = e.next + 1
      if e.next <= #e.steps then
        backend:update(e)
      end
    end
    outbox.settle(backend, e, nil)
  elseif e.kind == "workflow" then
    if not opts.start_workflow then
      outbox.settle(backend, e, { permanent = true, error = { kind = "unknown_workflow",
        message = "no workflow runner in this process" } })
    else
      local ok, err = opts.start_workflow(backend, e)
      if ok == "started" then
        return
      end
      outbox.settle(backend, e, not ok and err or nil)
    end
  else
    outbox.settle(backend, e, { permanent = true, error = { kind = "bad_entry",
      message = "unknown outbox entry kind " .. tostring(e.kind) } })
  end
  backend:commit()
end
outbox.deliver = deliver

-- ---- the relay ----------------------------------------------------------

local Relay = {}
Relay.__index = Relay

--- A relay over backend. opts: concurrency, poll (seconds), alerts =
--- { outbox_depth =, outbox_age =, dlq_depth = } (log a line when a value
--- reaches its threshold, and when it is back under), start_workflow
--- (function(backend, e) that runs a workflow entry: a run service's,
--- chorus.runs; without one such entries are dead), transport (the HTTP
--- function deliveries use; nil: chorus.http's).
function outbox.relay(backend, opts)
  opts = opts or {}
  return setmetatable({ backend = backend, inflight = {}, n_inflight = 0,
    start_workflow = opts.start_workflow, transport = opts.transport,
    concurrency = opts.concurrency or outbox.defaults.concurrency, poll = opts.poll or outbox.defaults.poll,
    alerts = opts.alerts or {}, alerting = {}, stopped = false }, Relay)
end

-- Starts the due entries not already in flight; returns how many started.
function Relay:tick()
  local started = 0
  local room = self.concurrency - self.n_inflight
  if room <= 0 then
    return 0
  end
  for _, e in ipairs(self.backend:due(core.now(), room, self.inflight, self.n_inflight)) do
    if not self.inflight[e.id] and e.state ~= "started" and started < room then
      self.inflight[e.id] = true
      self.n_inflight = self.n_inflight + 1
      started = started + 1
      core.start(nil, function()
        local ok, err = pcall(deliver, self.backend, e, self)
        if not ok then
          log(self.backend, "error", "outbox delivery failed", { id = e.id, error = tostring(err) })
        end
        self.inflight[e.id] = nil
        self.n_inflight = self.n_inflight - 1
        if self.waiting then -- a slot is free: the relay looks again
          core.notify(self.waiting, true)
        end
      end)
    end
  end
  return started
end

local function alert(self, name, value, limit)
  if not limit then
    return
  end
  local over = value >= limit and value > 0 -- fires at the threshold (0 fires at the first)
  if over and not self.alerting[name] then
    log(self.backend, "warn", "outbox alert: " .. name .. " over its threshold", { alert = name, value = value,
      threshold = limit })
  elseif not over and self.alerting[name] then
    log(self.backend, "info", "outbox alert: " .. name .. " back under its threshold", { alert = name, value = value,
      threshold = limit })
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
    local started = self:tick()
    if core.monotime() - last_observe >= 1 then
      last_observe = core.monotime()
      self:observe()
    end
    if self.n_inflight >= self.concurrency then -- full: until a slot frees
      self.waiting = core.wait_token()
      core.wait(self.waiting)
      self.waiting = nil
    elseif started > 0 then -- there may be more due: look again next turn
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
function outbox.drain(backend, opts)
  local relay = outbox.relay(backend, opts)
  while true do
    relay:tick()
    if relay.n_inflight == 0 then
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

return outbox
