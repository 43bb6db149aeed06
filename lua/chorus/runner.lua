-- chorus.runner — the body of every run's first task: builds ctx, registers
-- the run's state and calls the workflow. Used by `chorus run`, the server
-- and chorus.testing alike, so a workflow behaves the same under each.
local core = require "chorus.core"
local context = require "chorus.context"
local journal = require "chorus.journal"
local runstate = require "chorus.runstate"
local errors = require "chorus.errors"

local runner = {}

local ON_TIMEOUT_GRACE = 10

local function new_trace_id()
  return core.random_hex(16)
end

local function plain_results(packed)
  for i = 2, packed.n do
    packed[i] = errors.plain(packed[i])
  end
  return packed
end

-- Runs inside a task: returns the workflow's value or raises its error.
-- opts: trace_id, on_state(state), deadline (seconds since the epoch: a
-- resumed run keeps the deadline it started with), journal = { store =,
-- recorded = } to make the run durable (chorus.journal), request (ctx.request:
-- the inbound request's recorded facts, nil when no request started the run).
function runner.execute(workflow, input, opts)
  opts = opts or {}
  local state = {
    run_id = core.run_id(), input = input, workflow = workflow.name, timeline = {},
    trace_id = opts.trace_id or new_trace_id(), allow_hosts = workflow.allow_hosts,
    redact = workflow.redact, request = opts.request,
  }
  state.traceparent = "00-" .. state.trace_id .. "-" .. core.random_hex(8) .. "-01"
  state.deadline = opts.deadline or (workflow.timeout and core.now() + workflow.timeout)
  local _ <close> = runstate.begin(state.run_id, state)
  if opts.journal then
    journal.attach(state, opts.journal.store, opts.journal.recorded, opts.journal.crash_after)
  end
  if opts.on_state then
    opts.on_state(state)
  end
  local ctx = context.new(state)
  local result = table.pack(pcall(workflow.run, ctx, input))
  if result[1] then -- plain data out: the server reads it outside the run
    local ok, value = pcall(plain_results, result)
    if ok then
      return table.unpack(value, 2, value.n)
    end
    error(errors.settle(value), 0)
  end
  local err = result[2]
  if type(err) == "table" and rawget(err, "kind") == "deadline" and workflow.on_timeout then
    -- on_timeout gets its own short deadline to cancel, compensate or alert
    state.deadline = core.now() + ON_TIMEOUT_GRACE
    local ok, oerr = pcall(workflow.on_timeout, ctx)
    if not ok then
      ctx.log.error("on_timeout failed", { error = errors.settle(oerr).message })
    end
  end
  error(errors.settle(err), 0)
end

return runner
