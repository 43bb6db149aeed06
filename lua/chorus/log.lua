-- chorus.log — the one writer of the process's log: JSON lines on stderr,
-- secrets redacted (chorus.secrets), or a sink a caller gives (chorus.testing
-- and the run service collect lines there instead of printing them).
--
--   log.event("info", "scripts loaded", { workflows = names })
--   log.event("error", "outbox entry moved to the DLQ", fields, sink)
--   log.write(line, sink)   -- a line already made: { ts, level, msg, ... }
--   log.text(line)          -- its JSON text, nil when its level is not printed
--
-- The server, the run service, the outbox and ctx.log all write through it;
-- runtime/lua_server.c writes its one line (a request handler that could
-- not run) in C, where no Lua may run.
local core = require "chorus.core"
local secrets = require "chorus.secrets"
local json = core.json

local log = {}

-- The levels in order; lines below the process's level (config log_level,
-- "info" by default) are not printed. A sink gets every line: a spec reads
-- what a run logged whatever the level.
log.LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
local threshold = log.LEVELS.info

--- Sets the level below which lines are not printed; returns nothing, or
--- raises naming the levels.
function log.set_level(name)
  local rank = log.LEVELS[name]
  if not rank then
    error(("log_level must be one of debug, info, warn, error (got %s)"):format(tostring(name)), 2)
  end
  threshold = rank
end

--- The JSON text log.write prints for line (a table), nil when its level
--- is below the process's. A line JSON cannot carry keeps its level and
--- message and says why.
function log.text(line)
  if (log.LEVELS[line.level] or log.LEVELS.error) < threshold then
    return nil
  end
  local ok, text = pcall(json.encode, line)
  if not ok then
    text = json.encode({ ts = line.ts, level = line.level, msg = tostring(line.msg), run_id = line.run_id,
      log_error = tostring(text) })
  end
  return text
end

--- Writes line (a table) to sink, or as a JSON line on stderr (text: its
--- log.text, when the caller made it already).
function log.write(line, sink, text)
  if sink then
    return sink(line)
  end
  text = text or log.text(line)
  if text then
    secrets.write_log(text)
  end
end

--- A line { ts, level, msg, ...fields } (fields never replace those three).
function log.line(level, msg, fields)
  local line = { ts = core.now(), level = level, msg = msg }
  for k, v in pairs(fields or {}) do
    if line[k] == nil then
      line[k] = v
    end
  end
  return line
end

--- log.write of log.line.
function log.event(level, msg, fields, sink)
  return log.write(log.line(level, msg, fields), sink)
end

return log
