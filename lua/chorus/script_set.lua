-- chorus.script_set — the workflows of the scripts folder: found (every
-- *.lua but specs and config files, in sorted order), compiled each in a
-- fresh sandbox (chorus.script), and swapped in as a whole by a reload only
-- when every script compiles; each version kept by hash for runs resumed on
-- the code they started with.
local core = require "chorus.core"
local log = require("chorus.log").event
local metrics = require "chorus.metrics"
local script = require "chorus.script"

local script_set = {}

local m = {
  reloads = metrics.counter("chorus_reloads_total", "Script reloads by result", { "result" }),
  workflows = metrics.gauge("chorus_workflows", "Workflows loaded"),
}

local function walk(dir, out)
  local entries, err = core.scandir(dir)
  if not entries then
    return nil, err
  end
  table.sort(entries, function(a, b) return a.name < b.name end)
  for _, e in ipairs(entries) do
    local path = dir .. "/" .. e.name
    if e.dir then
      out.dirs[#out.dirs + 1] = path
      local ok, werr = walk(path, out)
      if not ok then
        return nil, werr
      end
    elseif e.name:match("%.lua$") and not e.name:match("_spec%.lua$") and not e.name:match("%.conf%.lua$") then
      out.files[#out.files + 1] = path
    end
  end
  return true
end

-- Compiles every script of dir in fresh sandboxes; returns the new set or
-- nil and every error.
function script_set.compile_all(dir)
  local found = { files = {}, dirs = { dir } }
  local ok, err = walk(dir, found)
  if not ok then
    return nil, { err }
  end
  local set, errs = {}, {}
  for _, path in ipairs(found.files) do
    local wf, werr = script.load(path)
    if not wf then
      errs[#errs + 1] = werr
    elseif set[wf.name] then
      errs[#errs + 1] = ("%s: workflow name '%s' is also used by %s"):format(path, wf.name, set[wf.name].path)
    else
      set[wf.name] = { workflow = wf, path = path, source = werr, hash = core.sha256(werr) }
    end
  end
  if #errs > 0 then
    return nil, errs
  end
  return set, nil, found.dirs
end

--- Reloads the scripts folder into state.workflows (the server's state);
--- the running set stays when any script fails. Returns true, the names
--- and the folders to watch, or false and every error.
function script_set.reload(state, reason)
  local set, errs, dirs = script_set.compile_all(state.config.scripts)
  if not set then
    m.reloads.inc({ "error" })
    log("error", "reload failed; keeping the running scripts", { reason = reason, errors = errs })
    return false, errs
  end
  state.workflows = set
  local names = {}
  for name, entry in pairs(set) do
    names[#names + 1] = name
    -- every version is kept by hash, so a run resumed after a restart
    -- replays on the code it started with
    state.runs:keep_version(entry)
    entry.source = nil
  end
  table.sort(names)
  -- the set replaced, and the versions no run runs, can go now, with what
  -- their top levels kept (limits.workflow_memory_mb: "a reload starts it
  -- afresh"): a generational collector would leave them to a major
  -- collection that a heap no longer growing may not start for long
  collectgarbage()
  m.reloads.inc({ "ok" })
  m.workflows.set(nil, #names)
  log("info", "scripts loaded", { reason = reason, workflows = names })
  return true, names, dirs
end

return script_set
