-- chorus.script — loading a workflow script: read, compile as text in a
-- fresh sandbox, run its top level (no I/O, under the run limits) and check
-- that it returns a workflow. Used by run, check, serve and the specs.
local chorus = require "chorus"
local core = require "chorus.core"
local errors = require "chorus.errors"
local sandbox = require "chorus.sandbox"

local script = {}

--- Reads a whole file; returns its text, or nil and "cannot read WHAT: why".
function script.read_file(path, what)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, ("cannot read %s: %s"):format(what, err)
  end
  local src = f:read("a")
  f:close()
  if not src then
    return nil, ("cannot read %s: %s is not a regular file"):format(what, path)
  end
  return src
end

-- Runs fn as its own run: from the top level (CLI) or from inside a run
-- (a reload triggered by a request, a signal or a file change).
local function run_isolated(opts, fn)
  if core.run_id() then
    return core.execute(opts, fn)
  end
  return core.run(opts, fn)
end
script.run_isolated = run_isolated

--- Compiles source as a workflow script. Returns the workflow, or nil and a
--- one-line message naming the file. The workflow's memory_account is the
--- script's workflow account (core.workflow_account): what its top level
--- and its runs leave alive in its module state is counted there, against
--- limits.workflow_memory_mb. One per compiled version, so a reload starts
--- a workflow's count afresh.
function script.compile(source, path)
  local env = sandbox.env()
  local account = core.workflow_account(path)
  -- compiled under the run limits too, by the sandbox's load (a kilobyte
  -- at a time, so the limits stop it between pieces): Lua's parser is
  -- quadratic in gotos and labels, and a 4 MB script held the server's
  -- thread 6 s as it was reloaded
  local chunk, err
  local ok, value = run_isolated({ io = false, account = account }, function()
    chunk, err = env.load(source, "@" .. path)
    if chunk then
      return chunk()
    end
  end)
  if ok and not chunk then
    return nil, ("syntax error: %s"):format(err)
  end
  if not ok then
    return nil, ("%s: error while loading: %s"):format(path, errors.normalize(value).message)
  end
  if not chorus.is_workflow(value) then
    return nil, ("%s: the script must end with `return chorus.workflow { ... }` (it returned %s)")
      :format(path, value == nil and "nothing" or "a " .. type(value))
  end
  local workflow, werr = chorus.own(value)
  if not workflow then
    return nil, ("%s: %s"):format(path, werr)
  end
  sandbox.seal(env)
  core.workflow_account(account, workflow.name)
  workflow.memory_account = account
  return workflow
end

--- Loads a workflow script from a file. Returns workflow, source or nil, err.
function script.load(path)
  local source, err = script.read_file(path, "script")
  if not source then
    return nil, err
  end
  local workflow, cerr = script.compile(source, path)
  if not workflow then
    return nil, cerr
  end
  return workflow, source
end

return script
