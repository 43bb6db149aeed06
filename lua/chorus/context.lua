-- chorus.context — the ctx a workflow's run function receives.
--
-- ctx carries the run's identity and the run-scoped services: deterministic
-- idempotency keys, clock, randomness, durable-looking sleep, named steps in
-- the timeline and a structured logger that stamps run and trace ids.
local core = require "chorus.core"
local runstate = require "chorus.runstate"
local json = core.json

local context = {}

-- chorus.testing sets this to collect log lines instead of printing them.
context.log_sink = nil

local LEVELS = { debug = true, info = true, warn = true, error = true }

local function logger(ctx)
  local function write(level, msg, fields)
    local line = { level = level, msg = tostring(msg), run_id = ctx.run_id,
      workflow = ctx.workflow, trace_id = ctx.trace_id, ts = core.now() }
    for k, v in pairs(fields or {}) do
      if line[k] == nil then
        line[k] = v
      end
    end
    if context.log_sink then
      context.log_sink(line)
      return
    end
    local ok, text = pcall(json.encode, line)
    core.write_log(ok and text or json.encode({ level = level, msg = tostring(msg),
      run_id = ctx.run_id, log_error = text }))
  end
  local log = {}
  for level in pairs(LEVELS) do
    log[level] = function(msg, fields) write(level, msg, fields) end
  end
  return setmetatable(log, { __call = function(_, msg, fields) write("info", msg, fields) end })
end

-- In-process locks by name: the holder runs, the others wait FIFO (parked
-- with core.wait) and get the lock handed over when it is released. A
-- waiter cancelled meanwhile is skipped (notify finds nobody).
local locks = {}

local function release_lock(name)
  local l = locks[name]
  while l.first <= l.last do
    local token = l.queue[l.first]
    l.queue[l.first] = nil
    l.first = l.first + 1
    if core.notify(token, true) then
      return -- handed over: still held
    end
  end
  locks[name] = nil
end

local function with_lock(name, fn)
  local l = locks[name]
  if not l then
    locks[name] = { queue = {}, first = 1, last = 0 }
  else
    local token = core.wait_token()
    l.last = l.last + 1
    l.queue[l.last] = token
    core.wait(token)
  end
  local _ <close> = setmetatable({}, { __close = function() release_lock(name) end })
  return fn()
end

function context.new(state)
  local ctx = {
    run_id = state.run_id, input = state.input, workflow = state.workflow,
    trace_id = state.trace_id, timeline = state.timeline,
  }
  function ctx.key(name)
    if type(name) ~= "string" or name == "" then
      error("ctx.key: name must be a non-empty string", 2)
    end
    return ctx.run_id .. ":" .. name
  end
  ctx.now = core.now
  ctx.uuid = core.uuid
  function ctx.random(m, n)
    if m == nil then
      return math.random()
    end
    return math.random(m, n)
  end
  function ctx.sleep(seconds)
    if type(seconds) ~= "number" or seconds < 0 then
      error("ctx.sleep: seconds must be a non-negative number", 2)
    end
    local left = runstate.remaining()
    if seconds > left then -- never wait past the run's deadline
      core.sleep(math.max(left, 0))
      error(runstate.deadline_error("in ctx.sleep"), 2)
    end
    core.sleep(seconds)
  end
  function ctx.step(name, fn, ...)
    if type(name) ~= "string" or type(fn) ~= "function" then
      error("ctx.step(name, fn): name must be a string and fn a function", 2)
    end
    local entry = { step = name, start = core.now() }
    local timeline = state.timeline
    timeline[#timeline + 1] = entry
    local res = table.pack(pcall(fn, ...))
    entry.duration = core.now() - entry.start
    entry.status = res[1] and "ok" or "error"
    if not res[1] then
      error(res[2], 0)
    end
    return table.unpack(res, 2, res.n)
  end
  function ctx.lock(name, fn)
    if type(name) ~= "string" or name == "" or type(fn) ~= "function" then
      error("ctx.lock(name, fn): name must be a non-empty string and fn a function", 2)
    end
    return with_lock(name, fn)
  end
  ctx.log = logger(ctx)
  return ctx
end

return context
