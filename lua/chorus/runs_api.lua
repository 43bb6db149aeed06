-- chorus.runs_api — finding runs by filter, and acting on every run a filter
-- finds: GET /admin/runs, POST /admin/runs/redrive and /admin/runs/cancel,
-- POST /admin/dlq/replay and /admin/dlq/drop (chorus.admin), and
-- `chorus runs list` (chorus.cli).
--
-- Filters: workflow, status, since, until (the run's start time: unix
-- seconds or RFC 3339; since <= started < until), key (the idempotency
-- key), limit (1..1000) and cursor (from the previous page's next_cursor).
-- A listing walks one key of the runs' index in the data folder
-- (chorus.store find_runs: the key's runs by start time, newest first), never
-- the runs themselves: the most selective key the filters name, the other
-- filters checked on each run's index row.
local core = require "chorus.core"
local store = require "chorus.store"
local json = core.json

local runs_api = {}

runs_api.STATUSES = { running = true, succeeded = true, failed = true, timed_out = true, compensated = true,
  cancelled = true }
runs_api.MAX_LIMIT = 1000
runs_api.DEFAULT_LIMIT = 50

-- ---- parameters -----------------------------------------------------------------

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- Seconds since the epoch of an RFC 3339 date-time, or nil.
local function rfc3339(s)
  local y, mo, d, h, mi, sec, frac, zone =
    s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
  if not y then
    return nil
  end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or sec > 60 or frac == "." then
    return nil
  end
  local offset = 0
  if zone ~= "Z" and zone ~= "z" then
    local sign, oh, om = zone:match("^([+-])(%d%d):(%d%d)$")
    if not sign then
      return nil
    end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  local t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset
  return t + (frac ~= "" and tonumber("0" .. frac) or 0)
end

-- A time parameter in µs since the epoch, or nil.
local function time_param(v)
  local t = type(v) == "number" and v or (type(v) == "string" and (v:match("^%d+%.?%d*$") and tonumber(v)
    or rfc3339(v))) or nil
  if not t or t ~= t or t < 0 or t > 1e11 then
    return nil
  end
  return math.floor(t * 1e6 + 0.5)
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- The time key a cursor carries, or nil.
local function unhex(s)
  if type(s) ~= "string" or #s < 18 or #s > 1038 or #s % 2 == 1 or s:find("[^%x]") then
    return nil
  end
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function as_text(v)
  if type(v) == "number" then
    return math.type(v) == "integer" and tostring(v) or nil
  end
  return type(v) == "string" and v or nil
end

local PARSERS = {
  workflow = function(v)
    v = as_text(v)
    return v and #v >= 1 and #v <= 200 and v or nil, "a workflow name"
  end,
  status = function(v)
    return runs_api.STATUSES[v] and v or nil,
      "one of running, succeeded, failed, timed_out, compensated, cancelled"
  end,
  since = function(v) return time_param(v), "unix seconds or an RFC 3339 date-time" end,
  ["until"] = function(v) return time_param(v), "unix seconds or an RFC 3339 date-time" end,
  key = function(v)
    v = as_text(v)
    return v and #v >= 1 and #v <= 255 and v or nil, "an idempotency key (1 to 255 characters)"
  end,
  limit = function(v)
    local n = math.tointeger(tonumber(as_text(v) or ""))
    return n and n >= 1 and n <= runs_api.MAX_LIMIT and n or nil,
      ("an integer from 1 to %d"):format(runs_api.MAX_LIMIT)
  end,
  cursor = function(v) return unhex(v), "the next_cursor of a previous page" end,
  dry_run = function(v)
    if v == true or v == "true" or v == "1" or v == "" then
      return true
    elseif v == false or v == "false" or v == "0" then
      return false
    end
    return nil, "true or false"
  end,
}

--- The filter of params (a query table, a JSON body's object, or both
--- merged), taking the names of `allowed` (a set; default: every filter but
--- dry_run). Returns the filter, or nil, the bad parameter's name and why.
function runs_api.parse(params, allowed)
  local f = {}
  for name, v in pairs(params) do
    local parse = PARSERS[name]
    if not parse or (allowed and not allowed[name]) or (not allowed and name == "dry_run") then
      return nil, tostring(name), "is not a filter here"
    end
    local value, expected = parse(v)
    if value == nil then
      return nil, name, ("must be %s"):format(expected)
    end
    f[name] = value
  end
  return f
end

-- ---- listing ---------------------------------------------------------------------

-- The index key walked and the keys each run must also be under.
local function plan(f)
  if f.key then
    local also = {}
    if f.workflow then
      also[#also + 1] = store.workflow_key(f.workflow)
    end
    if f.status then
      also[#also + 1] = store.status_key(f.status)
    end
    return store.idem_key_key(f.key), also
  elseif f.workflow and f.status then
    return store.workflow_status_key(f.workflow, f.status)
  elseif f.workflow then
    return store.workflow_key(f.workflow)
  elseif f.status then
    return store.status_key(f.status)
  end
  return store.ALL_RUNS
end

local SHOWN = { "id", "workflow", "status", "started_at", "finished_at", "key", "version", "error_kind" }

--- One page of the runs f finds in the store st, newest first: the rows
--- (each { id, t, summary }), at most f.limit (else limit_default), and the
--- cursor of the next page (nil: this was the last).
function runs_api.page(st, f, limit_default)
  local limit = f.limit or limit_default or runs_api.DEFAULT_LIMIT
  if f["until"] and f["until"] <= 0 then
    return {}, nil
  end
  local key, also = plan(f)
  local rows = st:find_runs(key, { also = also, before = f.cursor, since = f.since, ["until"] = f["until"],
    limit = limit + 1 })
  local next_cursor
  if #rows > limit then
    rows[limit + 1] = nil
    next_cursor = hex(store.time_key(rows[limit].t, rows[limit].id))
  end
  return rows, next_cursor
end

--- GET /admin/runs's body: { runs = { summary, ... }, next_cursor = string | null }.
function runs_api.list(st, f)
  local rows, next_cursor = runs_api.page(st, f)
  local out = {}
  for i, row in ipairs(rows) do
    local s, shown = row.summary, {}
    for _, name in ipairs(SHOWN) do
      local v = s[name]
      shown[name] = v == nil and json.null or v
    end
    out[i] = shown
  end
  return { runs = json.array(out), next_cursor = next_cursor or json.null }
end

-- ---- bulk actions -------------------------------------------------------------------

--- Acts on every run f finds, up to f.limit (default 1000): act(id, summary)
--- returns true, or false and why it skipped the run. With f.dry_run nothing
--- is done: { count = N, more = bool }. Else { done = N, skipped = N,
--- reasons = { why = count }, skipped_runs = { {id, reason} } (the first
--- 100), next_cursor = where the rest begins, or null }.
function runs_api.bulk(st, f, act)
  local rows, next_cursor = runs_api.page(st, f, runs_api.MAX_LIMIT)
  return runs_api.apply(rows, f.dry_run, next_cursor, act)
end

--- The bulk outcome of act over rows ({ id, summary? }), as runs_api.bulk.
function runs_api.apply(rows, dry_run, next_cursor, act)
  if dry_run then
    return { count = #rows, more = next_cursor ~= nil }
  end
  local done, skipped, reasons, skipped_runs = 0, 0, {}, {}
  for _, row in ipairs(rows) do
    local ok, why = act(row.id, row.summary)
    if ok then
      done = done + 1
    else
      why = tostring(why or "skipped")
      skipped = skipped + 1
      reasons[why] = (reasons[why] or 0) + 1
      if #skipped_runs < 100 then
        skipped_runs[#skipped_runs + 1] = { id = row.id, reason = why }
      end
    end
  end
  return { done = done, skipped = skipped, reasons = reasons, skipped_runs = json.array(skipped_runs),
    next_cursor = next_cursor or json.null }
end

-- ---- the DLQ ------------------------------------------------------------------------

--- The DLQ entries f finds (workflow: the workflow entry's target; since,
--- until: when it failed), newest failure first, at most f.limit (default
--- 1000), and whether more matched. The DLQ is read whole: it holds what
--- an operator has yet to look at, not the history the runs' index serves.
function runs_api.dlq_rows(st, f)
  local limit = f.limit or runs_api.MAX_LIMIT
  local found = {}
  for _, e in ipairs(st:list_dlq(math.maxinteger)) do
    local at = math.floor((tonumber(e.failed_at) or tonumber(e.created) or 0) * 1e6 + 0.5)
    if (not f.workflow or e.workflow == f.workflow) and (not f.since or at >= f.since)
        and (not f["until"] or at < f["until"]) then
      found[#found + 1] = { id = e.id, at = at }
    end
  end
  table.sort(found, function(a, b)
    if a.at ~= b.at then
      return a.at > b.at
    end
    return tostring(a.id) > tostring(b.id)
  end)
  local more = #found > limit
  for i = #found, limit + 1, -1 do
    found[i] = nil
  end
  return found, more
end

runs_api.DLQ_FILTERS = { workflow = true, since = true, ["until"] = true, limit = true, dry_run = true }
runs_api.BULK_FILTERS = { workflow = true, status = true, since = true, ["until"] = true, key = true, limit = true,
  cursor = true, dry_run = true }

return runs_api
