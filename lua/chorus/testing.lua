-- chorus.testing — busted helpers for workflow specs: mock upstreams, a
-- virtual clock, a run helper that reports what the workflow did, and a
-- schedule's slots fired on the virtual clock (testing.schedule).
--
--   local testing = require "chorus.testing"
--   before_each(testing.reset)
--   testing.mock("cards", { { status = 503 }, { status = 201, json = { id = "ch_1" } } })
--   local r = testing.run("examples/donation/donation.lua", { amount = 500 })
--   assert.is_true(r.ok)
--   assert.called_upstream(r, "cards", "POST", "/charges")
--
-- The workflow runs on the same C core as `chorus serve` (chorus.core), with
-- chorus.http's transport swapped for the mocks and time made virtual: sleeps,
-- delays and timeouts advance the clock instantly, so a workflow that backs
-- off for minutes finishes in milliseconds of real time.
local core = require "chorus.core"
local http = require "chorus.http"
local script = require "chorus.script"
local json = core.json

local testing = {}

local mocks = {}      -- base URL → { spec =, hits = }
local calls = nil     -- calls of the run in progress
local emits = {}      -- testing.emit's events for the next run
local kept_events = {} -- the events a run left kept (chorus.emit, unclaimed): the next run finds them

local MOCK_HOST = ".upstream.test"

--- The path of a file next to the calling spec (specs run from any folder).
function testing.here(name)
  local source = debug.getinfo(2, "S").source
  local dir = source:match("^@(.*)/[^/]*$") or "."
  return dir .. "/" .. name
end

--- Forgets every mock and upstream declared so far.
function testing.reset()
  mocks = {}
  emits = {}
  kept_events = {}
  http.configure({})
  core.breakers_reset()
  require("chorus.breaker").reset()
  core.retry_budgets_reset()
  core.bulkheads_reset()
  core.rate_limits_reset()
end

local function base_of(target, upstream)
  if target:match("^https?://") then
    return (target:gsub("/+$", ""))
  end
  -- an upstream name: give it a base URL only the mocks answer, and the
  -- rest of its config (retry, breaker, timeout, headers) from `upstream`
  local config = { base_url = "http://" .. target .. MOCK_HOST }
  for k, v in pairs(upstream or {}) do
    if k ~= "base_url" then
      config[k] = v
    end
  end
  http.configure_upstream(target, config)
  return config.base_url
end

--- Declares how an upstream (by name, or by base URL) answers. spec is a
--- response { status =, json = | body =, headers =, delay =, fault = },
--- a list of responses (used in turn, the last repeats), or a function of
--- the request returning a response. fault is "timeout", "reset" or
--- "connect". upstream (for a name) is the rest of the upstream's config,
--- as in the config file: { retry =, breaker =, timeout =, headers = }.
function testing.mock(target, spec, upstream)
  if type(target) ~= "string" then
    error("testing.mock: target must be an upstream name or a base URL", 2)
  end
  if type(spec) ~= "table" and type(spec) ~= "function" then
    error("testing.mock: spec must be a response, a list of responses or a function", 2)
  end
  mocks[base_of(target, upstream)] = { spec = spec, hits = 0, name = target }
end

local function find_mock(url)
  local best, best_len
  for base, mock in pairs(mocks) do
    if url:sub(1, #base) == base and (best_len == nil or #base > best_len) then
      local rest = url:sub(#base + 1, #base + 1)
      if rest == "" or rest == "/" or rest == "?" then
        best, best_len = mock, #base
      end
    end
  end
  return best, best_len
end

local function pick(mock, req)
  mock.hits = mock.hits + 1
  local spec = mock.spec
  if type(spec) == "function" then
    return spec(req) or {}
  end
  if spec[1] ~= nil then
    return spec[math.min(mock.hits, #spec)]
  end
  return spec
end

local function lower_keys(t)
  local out = {}
  for k, v in pairs(t or {}) do
    out[k:lower()] = tostring(v)
  end
  return out
end

local function table_copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = v
  end
  return c
end

-- core.http's contract, answered by the mocks on virtual time.
local function transport(o)
  core.waitable() -- refused where core.http refuses to wait (a closing task's __close, a metamethod)
  local method, url, headers, body, timeout = o.method, o.url, o.headers, o.body, o.timeout
  local max_response_bytes = o.max_response_bytes or 16 * 1024 * 1024 -- core.http's default
  local mock, base_len = find_mock(url)
  local path_query = mock and url:sub(base_len + 1) or url
  local req = {
    -- a copy: each attempt of a call sends its own traceparent in the same table
    method = method, url = url, upstream = mock and mock.name, headers = table_copy(headers or {}),
    body = body, path = path_query:match("^[^?]*"), query = path_query:match("%?(.*)$"),
    idempotency_key = headers and headers["Idempotency-Key"],
  }
  if body and body ~= "" then
    local ok, value = pcall(json.decode, body)
    req.json = ok and value or nil
  end
  if calls then
    calls[#calls + 1] = req
  end
  if not mock then
    return nil, "connect", ("no mock for %s %s (declare it with testing.mock)"):format(method, url), 0
  end
  local res = pick(mock, req)
  timeout = timeout and timeout > 0 and timeout or math.huge
  local delay = res.delay or 0
  if res.fault == "timeout" or delay > timeout then
    core.sleep(timeout == math.huge and 3600 or timeout)
    return nil, "timeout", ("mock timed out after %g s"):format(timeout), timeout
  end
  if delay > 0 then
    core.sleep(delay)
  end
  if res.fault == "reset" then
    return nil, "reset", "connection reset by the mock", delay
  elseif res.fault == "connect" then
    return nil, "connect", "connection refused by the mock", delay
  end
  local resp_headers = lower_keys(res.headers)
  local resp_body = res.body or ""
  if res.json ~= nil then
    resp_body = json.encode(res.json)
    resp_headers["content-type"] = resp_headers["content-type"] or "application/json"
  end
  if max_response_bytes and #resp_body > max_response_bytes then
    return nil, "too_large", ("response body exceeds max_response_bytes (%d bytes)"):format(max_response_bytes),
      delay
  end
  return res.status or 200, resp_headers, resp_body, delay
end

--- An event for the next testing.run, as POST /events/NAME/KEY sends it:
--- opts.at = seconds after the run's start (virtual time) when it arrives
--- (default: before the run starts, kept until a ctx.event takes it);
--- opts.id = its event id (default: payload.id), a redelivery of a seen
--- id is absorbed. The events a run leaves kept (its chorus.emit's, or
--- those no wait took) and the event ids it saw stay for the next
--- testing.run, until testing.reset: a spec can run a webhook-receiver
--- workflow, then the workflow that waits for what it emitted.
function testing.emit(name, key, payload, opts)
  opts = opts or {}
  local err = require("chorus.events").check_name("name", name)
    or require("chorus.events").check_name("key", key)
  if err then
    error("testing.emit: " .. err, 2)
  end
  if opts.at ~= nil and not (type(opts.at) == "number" and opts.at >= 0) then
    error("testing.emit: at must be a non-negative number of seconds after the run's start", 2)
  end
  local id = opts.id
  local pid = type(payload) == "table" and payload.id
  if id == nil and (type(pid) == "string" or math.type(pid) == "integer") then
    id = tostring(pid)
  end
  emits[#emits + 1] = { name = name, key = key, payload = payload, at = opts.at, id = id }
end

-- Delivers the run's testing.emit events: those without `at` now, the
-- others from tasks that sleep until then. Returns the tasks.
local function schedule_emits(list, started)
  local events = require "chorus.events"
  local tasks = {}
  for _, e in ipairs(list) do
    if e.at == nil then
      events.deliver(e.name, e.key, e.payload, e.id)
    else
      tasks[#tasks + 1] = core.spawn(function()
        core.sleep(math.max(0, started + e.at - core.now()))
        events.deliver(e.name, e.key, e.payload, e.id)
      end)
    end
  end
  return tasks
end

local function load_workflow(workflow)
  if type(workflow) == "string" then
    local wf, err = script.load(workflow)
    if not wf then
      error("testing.run: " .. err, 3)
    end
    return wf
  end
  return workflow
end

--- Runs a workflow (a loaded workflow or a script path) to its end on the
--- mocks and the virtual clock, through the run service `chorus serve` uses
--- (chorus.runs). Returns { ok, value, error, calls, timeline, logs (the
--- ctx.log lines, as tables), elapsed (virtual seconds), run_id, outbox,
--- on_timeout ({ ok =, value | error } when the run timed out and
--- on_timeout ran) }.
---
--- opts.now: the virtual start time (seconds since the epoch).
--- opts.deliver: deliver the outbox after the run (its calls join
---   result.calls; each entry of result.outbox gets .delivery = "delivered"
---   or "dead"); opts.workflows maps the workflow names ctx.later starts
---   to workflows or script paths.
--- opts.crash_after = n: the process "dies" right after the run's n-th
---   effect is journaled: the run's records live in a store kept in memory
---   (store.memory(), the data folder's contract), what the last commit did
---   not take is lost, and a new run service over that store recovers the
---   run exactly as a restarted server does (Service:recover: replayed from
---   its journal); result.crashed and result.replayed (effects fed back
---   from the journal by the last restart) tell what happened, and
---   result.timeline shows the effects of every execution with a
---   { kind = "resumed" } mark where each restart went live. A list
---   { n1, n2, ... } crashes the run again after its n2-th effect, ...
--- opts.cancel_at = seconds: the run is cancelled (as DELETE /runs/ID
---   does) that many virtual seconds after it started, at the wait it is
---   in then; result.status says "cancelled" and result.on_cancel is
---   on_cancel's outcome ({ ok =, value | error }).
function testing.run(workflow, input, opts)
  opts = opts or {}
  local wf = load_workflow(workflow)
  local outbox = require "chorus.outbox"
  local runs = require "chorus.runs"
  core.set_clock("virtual", opts.now or 1767225600)
  calls = {}
  local logs = {}
  local function sink(line)
    logs[#logs + 1] = line
  end
  local loaded = {}
  local state
  local run_id = core.uuid()
  -- crash_after = n, or { n1, n2, ... }: a crash after the n1-th effect,
  -- another after the n2-th (counted from the run's start), ...
  local crashes = type(opts.crash_after) == "table" and opts.crash_after or { opts.crash_after }
  local env = {
    store = crashes[1] and require("chorus.store").memory() or nil,
    backend = outbox.memory(true), transport = transport, log_sink = sink, crash_after = crashes[1],
    log = function() end, -- the result tells how the run ended
    unknown_upstream_hint = function(name)
      return ("no mock for it: declare one with testing.mock(%q, ...)"):format(name)
    end,
    -- the run's own state (a ctx.call child has its own, with its own timeline)
    on_state = function(rec, s)
      if rec.id == run_id then
        state = s
      end
    end,
    workflow = function(name) -- ctx.later's workflows: opts.workflows
      if not loaded[name] and opts.workflows and opts.workflows[name] then
        local child = load_workflow(opts.workflows[name])
        loaded[name] = { workflow = child, hash = "testing:" .. tostring(child) } -- ctx.call's resume needs it
      end
      return loaded[name]
    end,
  }
  env.backend.log_sink = sink -- the outbox's own lines (DLQ moves) join the logs
  local entry = { workflow = wf, hash = "testing:" .. tostring(wf), path = type(workflow) == "string" and workflow }
  local started = core.now()
  local crashed, replayed, ended = false, nil, nil
  local events = require "chorus.events"
  local events_store = env.store or require("chorus.store").memory()
  for _, row in ipairs(kept_events) do -- what earlier runs left kept, as a server keeps it
    events_store.st:put("events", row[1], row[2])
  end
  events_store:commit()
  events.configure({ store = events_store })
  local pending_emits = emits
  emits = {}
  local pok, rok, res = pcall(core.run, nil, function()
    local emit_tasks = schedule_emits(pending_emits, started)
    local svc = runs.service(env)
    if opts.cancel_at then -- the canceller: a task of its own, cancelled itself if the run ends first
      core.spawn(function()
        core.sleep(opts.cancel_at)
        svc:cancel(run_id, "testing")
      end)
    end
    local ok, value, rec, _, _, info, crash = svc:start(entry, input or {}, { id = run_id })
    local restarts = 0
    while crash do -- the restart: a new service over the same store recovers the run
      crashed, restarts, crash = true, restarts + 1, nil
      events.forget_waiters() -- the process died: nobody waits in it
      env.crash_after = crashes[restarts + 1] -- the next crash, if any
      svc = runs.service(env)
      svc:keep_version(entry) -- as a server's reload keeps the scripts it loads
      for _, e in pairs(loaded) do
        svc:keep_version(e)
      end
      local resumed = {}
      svc:recover({ start = function(fn, r) resumed[#resumed + 1] = { fn, r } end })
      -- side by side, as a server's detached runs: a parent's ctx.call
      -- waits for its resumed child
      local recs = {}
      for _, r in ipairs(resumed) do
        recs[core.spawn(r[1])] = r[2]
      end
      local left = #resumed
      while left > 0 do
        local tid = core.await()
        local res = table.pack(core.result(tid))
        if recs[tid] then -- not the canceller (cancel_at)
          left = left - 1
          if not res[1] then
            error(res[2], 0)
          end
          crash = crash or res[7]
          if recs[tid].id == run_id then -- the run under test (the others: its children)
            rec, ok, value, info = recs[tid], res[2], res[3], res[6]
          end
        end
      end
      replayed = state and state.journal and state.journal.replayed
    end
    ended = core.now()
    -- the children the run left (a chorus.race it lost, a chorus.all whose
    -- sibling failed) are being cancelled: their ends are part of the run's
    -- story, and must not go on in the next test's loop
    svc:settle(1000, 1)
    for _, t in ipairs(emit_tasks) do -- events due after the run's end arrive at nobody
      core.cancel(t)
    end
    if opts.deliver then
      outbox.drain(env.backend, { transport = transport,
        start_workflow = function(backend, e) return svc:start_outbox_workflow(backend, e) end })
    end
    return { ok = ok, value = value, id = rec.id, info = info, status = rec.status }
  end)
  kept_events = events_store.st:scan("events", { limit = math.maxinteger })
  local entries = env.backend.all
  if opts.deliver then
    local fate = {}
    for _, e in ipairs(env.backend.delivered) do
      fate[e.id] = "delivered"
    end
    for _, e in ipairs(env.backend.dead) do
      fate[e.id] = "dead"
    end
    for _, e in ipairs(entries) do
      e.delivery = fate[e.id] or "pending"
    end
  end
  -- virtual times are large epoch numbers: keep the difference to the µs
  local elapsed = (ended or core.now()) - started -- to the run's end, not its children's
  local result = { calls = calls, logs = logs, elapsed = math.floor(elapsed * 1e6 + 0.5) / 1e6,
    outbox = entries, crashed = crashed or nil, replayed = crashed and replayed or nil }
  calls = nil
  core.set_clock("real")
  if not pok then
    error(rok, 0)
  end
  local ok, value = false, res -- the delivery itself failed
  if rok then
    ok, value, result.run_id, result.status = res.ok, res.value, res.id, res.status
  end
  result.ok = ok
  result.timeline = state and state.timeline or {}
  result.on_timeout = state and state.on_timeout -- { ok =, value | error } when on_timeout ran
  result.on_cancel = state and state.on_cancel -- the same, when on_cancel ran
  if ok then
    result.value = value
  else
    result.error = value
  end
  return result
end

--- Fires a workflow's schedule on the virtual clock: each slot in
--- (opts.from, opts.to] (seconds since the epoch) starts a run as `chorus
--- serve` would (chorus.schedule's step: overlap, catch_up), each run through
--- testing.run on the mocks at its slot's time, with the input a scheduled
--- run gets ({ slot =, slot_time = }). A run in flight is the virtual time
--- it took (result.elapsed): with overlap = "skip" the slots that come due
--- meanwhile are skipped. opts.down = { t1, t2 }: the server is down from
--- t1 until t2, and the slots missed then follow catch_up when it is back.
--- opts.max_runs (1000) bounds the runs; more raises. Returns { slots (the
--- slots started, in order), runs (their testing.run results, each with
--- .slot), skipped ({ through =, count =, reason = "overlap" | "catch_up" }
--- for each skip, count nil when not counted) }.
function testing.schedule(workflow, opts)
  local schedule = require "chorus.schedule"
  local wf = load_workflow(workflow)
  local spec = wf.schedule
  if not spec then
    error("testing.schedule: the workflow has no schedule", 2)
  end
  opts = opts or {}
  if type(opts.from) ~= "number" or type(opts.to) ~= "number" or opts.to < opts.from then
    error("testing.schedule: opts.from and opts.to must be times (seconds since the epoch), from <= to", 2)
  end
  local max_runs = opts.max_runs or 1000
  local down_from, down_to = opts.down and opts.down[1], opts.down and opts.down[2]
  local out = { slots = {}, runs = {}, skipped = {} }
  local s, t, busy_until = { through = opts.from }, opts.from, nil
  while true do
    local nxt
    if s.backlog_until then -- catch-up slots wait for the run in flight (overlap = "skip")
      nxt = math.max(t, busy_until or t)
    else
      nxt = schedule.next_after(spec, math.max(s.through, t))
    end
    if not nxt then
      break
    end
    if down_from and nxt >= down_from then -- down: back at down_to, the missed slots follow catch_up
      t, s.backlog_until, down_from = math.max(down_to, t), math.max(down_to, t), nil
    else
      t = nxt
    end
    if t > opts.to then
      break
    end
    for _, a in ipairs(schedule.step(spec, s, t, busy_until ~= nil and busy_until > t)) do
      if a.start then
        if #out.runs >= max_runs then
          error(("testing.schedule: more than %d runs from %s to %s; narrow the range or raise opts.max_runs")
            :format(max_runs, schedule.iso(opts.from), schedule.iso(opts.to)), 2)
        end
        local r = testing.run(wf, { slot = a.start, slot_time = schedule.iso(a.start) }, { now = t })
        r.slot = a.start
        out.slots[#out.slots + 1] = a.start
        out.runs[#out.runs + 1] = r
        busy_until = math.max(busy_until or t, t + r.elapsed)
      else
        out.skipped[#out.skipped + 1] = { through = a.skip, count = a.count, reason = a.reason }
      end
    end
  end
  return out
end

function testing.calls_to(result, target, method, path)
  local out = {}
  for _, c in ipairs(result.calls) do
    if (c.upstream == target or c.url:sub(1, #target) == target)
        and (method == nil or c.method == method) and (path == nil or c.path == path) then
      out[#out + 1] = c
    end
  end
  return out
end

-- luassert matchers, when specs run under busted:
--   assert.called_upstream(result, "cards", "POST", "/charges")
--   assert.not_called_upstream(result, "mailer")
local has_luassert, luassert = pcall(require, "luassert")
if has_luassert then
  local say = require "say"
  local function describe_calls(result)
    local lines = {}
    for _, c in ipairs(result.calls or {}) do
      lines[#lines + 1] = ("  %s %s"):format(c.method, c.url)
    end
    return #lines > 0 and table.concat(lines, "\n") or "  (none)"
  end
  say:set("assertion.called_upstream.positive",
    "Expected a call to upstream %s %s %s; the calls made were:\n%s")
  say:set("assertion.called_upstream.negative",
    "Expected no call to upstream %s %s %s; the calls made were:\n%s")
  luassert:register("assertion", "called_upstream", function(_, arguments)
    local result, target, method, path = table.unpack(arguments, 1, 4)
    local found = #testing.calls_to(result, target, method, path) > 0
    -- the message shows target, method, path and the calls made
    arguments[1], arguments[2], arguments[3], arguments[4] =
      tostring(target), tostring(method or "*"), tostring(path or "*"), describe_calls(result)
    arguments.n = 4
    return found
  end, "assertion.called_upstream.positive", "assertion.called_upstream.negative")
end

return testing
