-- chorus.cron — cron expressions, for schedules.
--
--   local s, err = cron.parse "*/15 9-17 * * MON-FRI"
--   local t = s:next(os.time())   -- the next slot strictly after, in UTC
--
-- Five fields, as in crontab(5) of Vixie cron (cronie): minute (0-59), hour
-- (0-23), day of month (1-31), month (1-12 or JAN-DEC), day of week (0-7 or
-- SUN-SAT; 0 and 7 are both Sunday). A field is `*`, a value, a range
-- `a-b`, any of these with a step (`*/5`, `1-30/5`, and `a/5` = `a-max/5`),
-- or a comma list of them; names are case-insensitive. The aliases @yearly
-- (@annually), @monthly, @weekly, @daily (@midnight) and @hourly stand for
-- their usual expressions.
--
-- Day of month and day of week: when both are restricted (neither field
-- starts with `*`), a day matches when EITHER does ("0 0 1 * MON": the 1st
-- and every Monday); when one starts with `*` (also `*/2`), a day must match
-- both. This is Vixie cron's rule, quirk included.
--
-- Times are seconds since the epoch and the schedule runs in UTC: no time
-- zones, so no daylight-saving gaps or repeats. An expression that can never
-- fire (`0 0 30 2 *`) is refused by parse rather than left to wait forever.
local cron = {}

local floor = math.floor

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
  jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }
local DAYS = { sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6 }

local FIELDS = {
  { name = "minute", min = 0, max = 59 },
  { name = "hour", min = 0, max = 23 },
  { name = "day-of-month", min = 1, max = 31 },
  { name = "month", min = 1, max = 12, names = MONTHS },
  { name = "day-of-week", min = 0, max = 7, names = DAYS },
}

local ALIASES = {
  ["@yearly"] = "0 0 1 1 *", ["@annually"] = "0 0 1 1 *", ["@monthly"] = "0 0 1 * *",
  ["@weekly"] = "0 0 * * 0", ["@daily"] = "0 0 * * *", ["@midnight"] = "0 0 * * *",
  ["@hourly"] = "0 * * * *",
}

-- ---- parsing ---------------------------------------------------------------

local function field_error(field, token, why)
  return ("%s %q: %s"):format(field.name, token, why)
end

-- A value of the field (a number or one of its names), or nil, error.
local function value_of(field, token, text)
  local n
  if text == "" then
    return nil, field_error(field, token, "a value is missing")
  elseif text:match("^%d+$") then
    n = tonumber(text)
  elseif text:match("^%a+$") then
    n = field.names and field.names[text:lower()]
    if not n then
      return nil, field_error(field, token, field.names
        and ("unknown name %q"):format(text) or "names are for month and day-of-week only")
    end
    return n
  else
    return nil, field_error(field, token, ("%q is not a number%s"):format(text, field.names and " or name" or ""))
  end
  if n < field.min or n > field.max then
    return nil, field_error(field, token, ("%d is out of range %d-%d"):format(n, field.min, field.max))
  end
  return n
end

-- Adds the values of one list item (`*`, `a`, `a-b`, each with `/step`).
local function add_item(field, set, token)
  local range, step_text = token:match("^([^/]*)/(.*)$")
  range = range or token
  local step = 1
  if step_text then
    if not step_text:match("^%d+$") or tonumber(step_text) == 0 then
      return field_error(field, token, "the step must be a positive integer")
    end
    step = tonumber(step_text)
  end
  local lo, hi
  if range == "*" then
    lo, hi = field.min, field.max
  else
    local a, b = range:match("^([^-]*)-(.*)$")
    local err
    lo, err = value_of(field, token, a or range)
    if not lo then
      return err
    end
    if b then
      hi, err = value_of(field, token, b)
      if not hi then
        return err
      end
      if hi < lo then
        return field_error(field, token, ("the range %s runs backwards"):format(range))
      end
    else
      hi = step_text and field.max or lo -- `a/step` runs to the field's end
    end
  end
  for v = lo, hi, step do
    set[v] = true
  end
end

-- The field's allowed values as a set, or nil, error.
local function parse_field(field, text)
  local set = {}
  for token in (text .. ","):gmatch("([^,]*),") do
    if token == "" then
      return nil, field_error(field, text, "an empty list item")
    end
    local err = add_item(field, set, token)
    if err then
      return nil, err
    end
  end
  return set
end

-- next_at[v] = the smallest allowed value >= v, or nil.
local function nexts(set, min, max)
  local next_at, upcoming = {}, nil
  for v = max, min, -1 do
    if set[v] then
      upcoming = v
    end
    next_at[v] = upcoming
  end
  return next_at
end

-- ---- calendar (UTC, proleptic Gregorian) -----------------------------------

local function is_leap(y)
  return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)
end

local MONTH_DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function days_in(y, m)
  return m == 2 and is_leap(y) and 29 or MONTH_DAYS[m]
end

-- Days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = floor(y / 400)
  local yoe = y - era * 400
  local doy = floor((153 * (m + (m > 2 and -3 or 9)) + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The civil date of a day number (its inverse).
local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m, d
end

-- ---- schedules -------------------------------------------------------------

local Schedule = {}
local SCHEDULE_MT = { __index = Schedule, __name = "chorus.cron.schedule",
  __tostring = function(s) return "cron " .. s.expr end }

-- Does day d of month m of year y match (the day-of-month/day-of-week rule)?
local function day_matches(s, y, m, d)
  local dom = s.dom[d] == true
  local dow = s.dow[(days_from_civil(y, m, d) + 4) % 7] == true -- 1970-01-01 was a Thursday
  if s.dom_star or s.dow_star then
    return dom and dow
  end
  return dom or dow
end

-- Whether any day can ever match: a day-of-month list past the end of every
-- month it is paired with (30 and 31 in February) would make next() search
-- forever.
local function can_fire(s)
  if not s.dow_star and not s.dom_star then
    return true -- any matching weekday will do
  end
  for m = 1, 12 do
    if s.month[m] then
      for d = 1, days_in(2000, m) do -- a leap year: February 29 counts
        if s.dom[d] then
          return true
        end
      end
    end
  end
  return false
end

--- Parses a cron expression: a schedule, or nil and an error naming the
--- field and the token at fault.
function cron.parse(expr)
  if type(expr) ~= "string" then
    return nil, "a cron expression must be a string"
  end
  local text = expr:match("^%s*(.-)%s*$")
  if text:sub(1, 1) == "@" then
    local alias = ALIASES[text:lower()]
    if not alias then
      return nil, ("unknown alias %q (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"):format(text)
    end
    text = alias
  end
  local parts = {}
  for part in text:gmatch("%S+") do
    parts[#parts + 1] = part
  end
  if #parts ~= 5 then
    return nil, ("expected 5 fields (minute hour day-of-month month day-of-week), got %d in %q"):format(#parts, expr)
  end
  local sets = {}
  for i, field in ipairs(FIELDS) do
    local set, err = parse_field(field, parts[i])
    if not set then
      return nil, err
    end
    sets[i] = set
  end
  sets[5][0] = sets[5][0] or sets[5][7] -- 7 is Sunday too
  sets[5][7] = nil
  local s = setmetatable({ expr = expr, minute = sets[1], hour = sets[2], dom = sets[3], month = sets[4],
    dow = sets[5], dom_star = parts[3]:sub(1, 1) == "*", dow_star = parts[5]:sub(1, 1) == "*",
    next_minute = nexts(sets[1], 0, 59), next_hour = nexts(sets[2], 0, 23), next_month = nexts(sets[4], 1, 12),
  }, SCHEDULE_MT)
  if not can_fire(s) then
    return nil, ("%q never fires: no month given has the day-of-month %s"):format(expr, parts[3])
  end
  return s
end

-- A Gregorian calendar repeats every 400 years, so a schedule that fires at
-- all fires within that; parse refuses the ones that never do.
local SEARCH_YEARS = 400

--- The first time (seconds since the epoch, a multiple of 60) strictly
--- after `after` at which the schedule fires, in UTC. It skips by field
--- (months, days, hours, minutes that cannot match), never minute by minute.
function Schedule:next(after)
  if type(after) ~= "number" or after ~= after or after == math.huge or after == -math.huge then
    error("schedule:next(after): after must be a finite number of seconds since the epoch", 2)
  end
  local t = (floor(after / 60) + 1) * 60
  local day = floor(t / 86400)
  local y, m, d = civil_from_days(day)
  local rest = t - day * 86400
  local h, mi = floor(rest / 3600), floor(rest % 3600 / 60)
  local last_year = y + SEARCH_YEARS
  while y <= last_year do
    local nm = self.next_month[m]
    if nm ~= m then -- not this month: the first allowed one, from its first day
      if nm then
        m = nm
      else
        y, m = y + 1, self.next_month[1]
      end
      d, h, mi = 1, 0, 0
    elseif d > days_in(y, m) then
      y, m, d, h, mi = m == 12 and y + 1 or y, m % 12 + 1, 1, 0, 0
    elseif not day_matches(self, y, m, d) then
      d, h, mi = d + 1, 0, 0
    else
      local nh = self.next_hour[h]
      if nh ~= h then
        if nh then
          h, mi = nh, 0
        else
          d, h, mi = d + 1, 0, 0
        end
      else
        local nmi = self.next_minute[mi]
        if nmi then
          return days_from_civil(y, m, d) * 86400 + h * 3600 + nmi * 60
        end
        h, mi = h + 1, 0
        if h > 23 then
          d, h = d + 1, 0
        end
      end
    end
  end
  return nil
end

--- Whether the schedule fires at time t (seconds since the epoch, UTC; the
--- seconds within the minute are ignored).
function Schedule:matches(t)
  if type(t) ~= "number" then
    error("schedule:matches(t): t must be a number of seconds since the epoch", 2)
  end
  local minute = floor(t / 60)
  local day = floor(minute / 1440)
  local y, m, d = civil_from_days(day)
  local rest = minute - day * 1440
  return self.month[m] == true and day_matches(self, y, m, d) and self.hour[floor(rest / 60)] == true
    and self.minute[rest % 60] == true
end

return cron
