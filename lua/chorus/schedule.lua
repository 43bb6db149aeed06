-- chorus.schedule — a workflow's schedule as pure functions: the
-- declaration's check, its slots, the run id of a slot, and what one step of
-- the scheduler does given what was handled and what time it is. The
-- scheduler of `chorus serve` (chorus.scheduler) and chorus.testing apply
-- these; nothing here reads a clock or a store.
--
--   chorus.workflow { name = "report", schedule = { cron = "0 6 * * *" }, run = ... }
--   chorus.workflow { name = "poll", schedule = { every = 300, catch_up = "skip" }, run = ... }
--
-- A slot is a time (seconds since the epoch, UTC) at which the schedule
-- fires: the cron expression's minutes (chorus.cron), or the multiples of
-- `every` seconds since the epoch (every = 300 fires at :00, :05, ...).
-- A slot starts at most one run, whose id is made of the workflow's name and
-- the slot (run_id): the slot is the run's key.
local cron = require "chorus.cron"

local schedule = {}

local floor = math.floor

--- At most this many missed slots run when catch_up = "all" (the newest of
--- them); the older ones are skipped.
schedule.MAX_CATCH_UP = 100

local FIELDS = { cron = true, every = true, catch_up = true, overlap = true }
local CATCH_UP = { skip = true, latest = true, all = true }
local OVERLAP = { skip = true, allow = true }

local compiled = setmetatable({}, { __mode = "k" }) -- checked schedule → its chorus.cron schedule

--- Checks a declaration's schedule table (read raw). Returns its copy
--- { cron | every, catch_up, overlap } with the defaults filled in, or nil
--- and a message naming the field.
function schedule.check(t)
  for k in next, t do
    if not FIELDS[k] then
      return nil, ("schedule: unknown field '%s' (known: cron, every, catch_up, overlap)"):format(tostring(k))
    end
  end
  local expr, every = rawget(t, "cron"), rawget(t, "every")
  if (expr == nil) == (every == nil) then
    return nil, "schedule: give exactly one of cron = \"MIN HOUR DOM MON DOW\" or every = SECONDS"
  end
  local out = { catch_up = rawget(t, "catch_up") or "latest", overlap = rawget(t, "overlap") or "skip" }
  if expr ~= nil then
    if type(expr) ~= "string" then
      return nil, ("schedule.cron must be a string, got %s"):format(type(expr))
    end
    local c, err = cron.parse(expr)
    if not c then
      return nil, "schedule.cron: " .. err
    end
    out.cron = expr
    compiled[out] = c
  elseif type(every) ~= "number" or every ~= floor(every) or every < 1 or every >= 2 ^ 53 then
    return nil, ("schedule.every must be a whole number of seconds, at least 1 (got %s)"):format(tostring(every))
  else
    out.every = math.tointeger(every)
  end
  if not CATCH_UP[out.catch_up] then
    return nil, ("schedule.catch_up must be \"skip\", \"latest\" or \"all\" (got %s)"):format(tostring(out.catch_up))
  end
  if not OVERLAP[out.overlap] then
    return nil, ("schedule.overlap must be \"skip\" or \"allow\" (got %s)"):format(tostring(out.overlap))
  end
  return out
end

local function cron_of(spec)
  local c = compiled[spec]
  if not c then
    c = assert(cron.parse(spec.cron))
    compiled[spec] = c
  end
  return c
end

--- What identifies the slots of a schedule: a reload that changes it starts
--- the schedule afresh (no catch-up of the old one's slots).
function schedule.key(spec)
  return spec.cron and ("cron " .. spec.cron) or ("every " .. spec.every)
end

--- The first slot strictly after t (nil: a cron expression that never
--- fires again, which cron.parse refuses).
function schedule.next_after(spec, t)
  if spec.every then
    return (floor(t / spec.every) + 1) * spec.every
  end
  return cron_of(spec):next(t)
end

--- The newest slots s with after < s <= upto, oldest first, at most max of
--- them; and whether older slots of that range were left out.
function schedule.due(spec, after, upto, max)
  local first = schedule.next_after(spec, after)
  if not first or first > upto then
    return {}, false
  end
  local list = {}
  if spec.every then
    local last = floor(upto / spec.every) * spec.every
    local n = (last - first) // spec.every + 1
    for i = math.min(n, max), 1, -1 do
      list[#list + 1] = last - (i - 1) * spec.every
    end
    return list, n > max
  end
  -- cron only goes forward: look back over a window growing from a minute
  -- until it holds max slots or reaches `after`
  local c, window = cron_of(spec), 60
  while true do
    local from = math.max(after, upto - window)
    list = {}
    local t = c:next(from)
    while t and t <= upto do
      list[#list + 1] = t
      if #list > max then
        table.remove(list, 1)
      end
      t = c:next(t)
    end
    if #list >= max or from == after then
      return list, list[1] ~= nil and first < list[1]
    end
    window = window * 4
  end
end

--- The run id of a slot: UUID-shaped (36 characters, as every run id: the
--- data folder's keys rely on it) and the same for the same workflow and
--- slot, so a slot already started is found by its run's record.
function schedule.run_id(sha256, name, slot)
  local h = sha256("chorus.schedule\0" .. name .. "\0" .. ("%d"):format(slot))
  local v = tonumber(h:sub(17, 17), 16) % 4 + 1
  local variant = ("89ab"):sub(v, v)
  return ("%s-%s-5%s-%s%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(14, 16), variant, h:sub(18, 20),
    h:sub(21, 32))
end

--- A slot as ISO 8601 UTC text.
function schedule.iso(slot)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", floor(slot))
end

--- One step of a schedule at time now. s holds what the scheduler knows:
---   through        every slot <= through is handled (started or skipped)
---   backlog_until  set while the slots missed before a start (<= it) are
---                  not handled yet: they follow spec.catch_up; nil after
--- busy: a run of the schedule is in flight. Returns the actions, in order:
--- { start = slot } or { skip = newest skipped slot, count = n (nil: more
--- than were counted), reason = "catch_up" | "overlap" }; s.through and
--- s.backlog_until are updated as if each action was taken.
function schedule.step(spec, s, now, busy)
  local actions = {}
  local overlap_skip = spec.overlap == "skip"
  local function start(slot)
    actions[#actions + 1] = { start = slot }
    s.through = slot
    busy = true
  end
  local function skip(slot, count, reason)
    actions[#actions + 1] = { skip = slot, count = count, reason = reason }
    s.through = slot
  end
  if s.backlog_until then
    local missed, older = schedule.due(spec, s.through, s.backlog_until, schedule.MAX_CATCH_UP)
    local n = #missed
    local mode = spec.catch_up
    if n == 0 then
      s.backlog_until = nil
    elseif mode == "skip" then
      skip(missed[n], not older and n or nil, "catch_up")
      s.backlog_until = nil
    elseif mode == "latest" then
      if n > 1 then
        skip(missed[n - 1], not older and n - 1 or nil, "catch_up")
      end
      if overlap_skip and busy then
        skip(missed[n], 1, "overlap")
      else
        start(missed[n])
      end
      s.backlog_until = nil
    else -- all: oldest first; with overlap = "skip", one at a time
      if older then
        skip(schedule.due(spec, s.through, missed[1] - 1, 1)[1] or s.through, nil, "catch_up")
      end
      if not overlap_skip then
        for _, slot in ipairs(missed) do
          start(slot)
        end
        s.backlog_until = nil
      elseif not busy then
        start(missed[1])
        if n == 1 then
          s.backlog_until = nil
        end
      end
      if s.backlog_until then -- the rest wait their turn
        return actions
      end
    end
  end
  local due, older = schedule.due(spec, s.through, now, schedule.MAX_CATCH_UP)
  local n = #due
  if n == 0 then
    return actions
  end
  if not overlap_skip then
    if older then
      skip(schedule.due(spec, s.through, due[1] - 1, 1)[1] or s.through, nil, "overlap")
    end
    for _, slot in ipairs(due) do
      start(slot)
    end
  elseif busy then
    skip(due[n], not older and n or nil, "overlap")
  else
    if n > 1 or older then -- came due while the loop could not look (a stall): the newest runs
      skip(due[n - 1], not older and n - 1 or nil, "overlap")
    end
    start(due[n])
  end
  return actions
end

return schedule
