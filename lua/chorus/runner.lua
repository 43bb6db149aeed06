-- chorus.runner — the body of every run's first task: builds ctx, registers
-- the run's state and calls the workflow. Used by `chorus run`, the server
-- and chorus.testing alike, so a workflow behaves the same under each.
local core = require "chorus.core"
local context = require "chorus.context"
local runstate = require "chorus.runstate"

local runner = {}

local function new_trace_id()
  return (core.uuid():gsub("-", ""))
end

-- Runs inside a task: returns the workflow's value or raises its error.
function runner.execute(workflow, input, opts)
  opts = opts or {}
  local state = {
    run_id = core.run_id(), input = input, workflow = workflow.name, timeline = {},
    trace_id = opts.trace_id or new_trace_id(),
  }
  state.traceparent = ("00-%s-%s-01"):format(state.trace_id, core.uuid():gsub("-", ""):sub(1, 16))
  local _ <close> = runstate.begin(state.run_id, state)
  if opts.on_state then
    opts.on_state(state)
  end
  return workflow.run(context.new(state), input)
end

return runner
