-- chorus.children — ctx.call(workflow, input, opts): another workflow run as
-- a durable child of the calling run, waited for; its result is returned,
-- its error raised ({kind, message, child_run_id}).
--
-- The call is one journaled effect whose value is the child's outcome, and
-- the child's run id is made from the parent's id and that effect's step:
-- a parent replayed after a restart gets a finished child's outcome from
-- its journal, and one whose child had not finished finds that child under
-- the same id (chorus.runs, Service:call_child) instead of starting a
-- second. The child's record names its parent (`parent`), the parent's its
-- children (`children`). The child runs as a run of its own that the
-- parent waits for (Service:await_child): cancelling the parent cancels it,
-- and so does the parent's ceasing to wait for it (a chorus.all whose
-- sibling failed, a race it lost, the parent's end), so its record always
-- ends. ctx.later stays fire-and-forget.
local core = require "chorus.core"
local errors = require "chorus.errors"
local journal = require "chorus.journal"
local runstate = require "chorus.runstate"

local children = {}

-- A run id (36 characters, UUID-shaped) made of the parent's and the step.
local function child_id(parent_id, step)
  local h = core.sha256(parent_id .. "/" .. step)
  return ("%s-%s-%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20), h:sub(21, 32))
end

function children.call(workflow, input, opts)
  if type(workflow) ~= "string" or workflow == "" then
    error("ctx.call(workflow, input, opts): workflow must be the name of a workflow", 2)
  end
  if input ~= nil and type(input) ~= "table" then
    error("ctx.call: input must be a table", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("ctx.call: opts must be a table", 2)
  end
  for k in pairs(opts or {}) do
    error(("ctx.call: unknown option '%s'"):format(tostring(k)), 2)
  end
  input = errors.json_copy(input or {}, "ctx.call", 2)
  local run = runstate.current()
  local svc = run and run.env and run.env.service
  if not svc then
    error("ctx.call: only inside a run of a run service (chorus serve, chorus run, chorus.testing)", 2)
  end
  local entry = svc.env.workflow and svc.env.workflow(workflow)
  if not entry then
    error(errors.new("unknown_workflow", ("ctx.call: no workflow named '%s'"):format(workflow)), 2)
  end
  svc:check_start(run.workflow, workflow, "ctx.call")
  return journal.effect("call", workflow, function()
    local step = journal.current_step()
    local id = step and child_id(run.run_id, step) or core.uuid()
    local started = core.now()
    local ok, value = svc:call_child(entry, input, id, run)
    -- the call's timeline entry, kept with the effect: a replay shows it too
    journal.note(run, { kind = "child", workflow = workflow, run_id = id, start = runstate.micro(started),
      duration = runstate.micro(core.now() - started), status = ok and "succeeded" or "failed",
      error_kind = not ok and type(value) == "table" and value.kind or nil })
    if not ok then
      error(value, 0)
    end
    return value
  end)
end

return children
