-- chorus.runner — the body of every run's first task: builds ctx, registers
-- the run's state and calls the workflow. Used by `chorus run`, the server
-- and chorus.testing alike, so a workflow behaves the same under each.
local core = require "chorus.core"
local context = require "chorus.context"
local journal = require "chorus.journal"
local runstate = require "chorus.runstate"
local errors = require "chorus.errors"
local saga = require "chorus.saga"
local tracing = require "chorus.tracing"

local runner = {}

local ON_TIMEOUT_GRACE = 10
local ON_CANCEL_GRACE = 10

local function plain_results(packed)
  for i = 2, packed.n do
    packed[i] = errors.plain(packed[i])
  end
  return packed
end

-- The end of runner.execute once the workflow returned (ok, values...) or
-- raised (false, error): its values as plain data, or its error settled.
-- Takes them as arguments: a workflow returns one value nearly always, and
-- a table.pack of it was three heap blocks per run.
local function outcome(workflow, ctx, state, ok, ...)
  journal.finish(state)
  -- a control error ends the run whatever the script made of it
  -- (chorus.runstate): a __close handler cannot replace it
  local err = state.stopped
  -- from here a cancel can no longer change how the run ends (Service:cancel
  -- refuses it: a cancel mark stored with a run that ends succeeded)
  state.ended = true
  if ok and not err then -- plain data out: the server reads it outside the run
    if select("#", ...) == 1 then
      local pok, value = pcall(errors.plain, (...))
      if pok then
        return value
      end
      error(errors.settle(value), 0)
    end
    local pok, value = pcall(plain_results, table.pack(ok, ...))
    if pok then
      return table.unpack(value, 2, value.n)
    end
    error(errors.settle(value), 0)
  end
  local stopped = err ~= nil
  err = err or (...)
  local kind = type(err) == "table" and rawget(err, "kind")
  if kind == "deadline" and stopped then
    -- the run's own deadline only: a { kind = "deadline" } the script
    -- raised, or a child's that timed out on its own timeout and that the
    -- script let through, is an ordinary failure (it ran on_timeout and
    -- rolled back the sagas of a run that had no deadline)
    state.timed_out = true
    err = runner.after_deadline(workflow, ctx, state, err)
  elseif kind == "cancelled" and state.cancelled then
    err = runner.after_cancel(workflow, ctx, state, err)
  end
  error(errors.settle(err), 0)
end

-- Runs inside a task: returns the workflow's value or raises its error.
-- opts: trace_id, span_id (the run's span), trace_flags ("01" sampled or
-- "00"), tracestate (passed on to outbound calls as it came),
-- on_state(state, opts), deadline (seconds since the epoch: a resumed run
-- keeps the deadline it started with), journal = { store =,
-- recorded =, ... } to make the run durable (chorus.journal.attach), request (ctx.request:
-- the inbound request's recorded facts, nil when no request started the run),
-- env (the run service's environment, chorus.runs: where the run's outbox
-- entries, calls and log lines go).
function runner.execute(workflow, input, opts)
  opts = opts or {}
  local state = {
    run_id = core.run_id(), input = input, workflow = workflow.name, timeline = {},
    trace_id = tracing.valid_trace_id(opts.trace_id), allow_hosts = workflow.allow_hosts,
    redact = workflow.redact, request = opts.request, env = opts.env,
    -- as the record keeps them (a resumed run's were read back from disk)
    span_id = tracing.valid_span_id(opts.span_id), trace_flags = opts.trace_flags == "00" and "00" or "01",
    tracestate = tracing.parse_state(opts.tracestate), deadline = nil, -- (sized for it: set below)
  }
  state.deadline = opts.deadline or (workflow.timeout and core.now() + workflow.timeout)
  local _ <close> = runstate.begin(state.run_id, state)
  if opts.journal then
    journal.attach(state, opts.journal)
  end
  if opts.on_state then
    opts.on_state(state, opts)
  end
  local ctx = context.new(state)
  -- (not a tail call: the guard above closes once the outcome is settled)
  return outcome(workflow, ctx, state, pcall(workflow.run, ctx, input))
end

-- After the deadline stopped the run, with effects allowed again and a
-- short deadline of their own: the sagas the run left open are
-- compensated, then on_timeout runs to cancel, compensate or alert. Its
-- return value (or error) is kept as state.on_timeout = { ok =, value | error }
-- (plain data: the run record and the callback show it). Returns the
-- run's error: the deadline's, or a control error on_timeout itself hit
-- (a crash must still end the run as a crash).
function runner.after_deadline(workflow, ctx, state, err)
  return runner.after_stop(workflow.on_timeout, "on_timeout", ON_TIMEOUT_GRACE, ctx, state, err)
end

-- After a cancellation (chorus.runs, Service:cancel) stopped the run at
-- the wait it was in: the same as after the deadline, with on_cancel and
-- its own short deadline; its outcome is state.on_cancel.
-- They start once the cancel's mark is on disk (journal.sync): after a
-- crash the replay then knows the run was cancelled, stops it where it
-- was stopped and feeds back what they journaled, so they are not run
-- twice. A mark that cannot be stored runs neither (the run still ends
-- cancelled; its on_cancel outcome says why).
function runner.after_cancel(workflow, ctx, state, err)
  local ok, serr = pcall(journal.sync, state)
  if not ok then
    state.on_cancel = { ok = false, error = errors.settle(errors.new("storage",
      ("on_cancel did not run: the cancel could not be stored: %s"):format(tostring(serr)))) }
    return err
  end
  return runner.after_stop(workflow.on_cancel, "on_cancel", ON_CANCEL_GRACE, ctx, state, err)
end

-- The sagas the stopped run left open are compensated, then hook (the
-- workflow's on_timeout or on_cancel, may be nil) runs with grace seconds
-- of deadline; its outcome goes to state[field].
function runner.after_stop(hook, field, grace, ctx, state, err)
  state.stopped = nil
  state.deadline = core.now() + grace
  saga.on_deadline(state)
  local res = hook and table.pack(pcall(hook, ctx))
  local stop = state.stopped
  state.stopped = err
  if res and res[1] then
    local ok, value = pcall(errors.plain, res[2])
    state[field] = ok and { ok = true, value = value } or { ok = false, error = errors.settle(value) }
  elseif res then
    state[field] = { ok = false, error = errors.settle(res[2]) }
    ctx.log.error(field .. " failed", { error = state[field].error.message or tostring(res[2]) })
  end
  if stop and rawget(stop, "kind") ~= "deadline" then -- the hook's own deadline is its outcome's
    state.stopped = stop
    return stop
  end
  return err
end

return runner
