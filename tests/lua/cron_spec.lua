-- chorus.cron: the five-field syntax of Vixie cron, its day-of-month /
-- day-of-week rule, and schedule:next in UTC.
local cron = require "chorus.cron"

-- Seconds since the epoch of a UTC time, counted naively (independent of
-- the module's calendar arithmetic and of the machine's time zone).
local function utc(y, m, d, h, mi)
  local function leap(year) return year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0) end
  local month_days = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
  local days = 0
  for year = 1970, y - 1 do
    days = days + (leap(year) and 366 or 365)
  end
  for month = 1, m - 1 do
    days = days + month_days[month] + ((month == 2 and leap(y)) and 1 or 0)
  end
  days = days + d - 1
  return days * 86400 + (h or 0) * 3600 + (mi or 0) * 60
end

local function iso(t)
  return t and os.date("!%Y-%m-%d %H:%M %a", t) or "nil"
end

local function parse(expr)
  local s, err = cron.parse(expr)
  assert(s, err)
  return s
end

-- The values a field allows, sorted.
local function values(set)
  local out = {}
  for v in pairs(set) do
    out[#out + 1] = v
  end
  table.sort(out)
  return out
end

local function range(a, b, step)
  local out = {}
  for v = a, b, step or 1 do
    out[#out + 1] = v
  end
  return out
end

-- next after the UTC time `from`, as text.
local function next_after(expr, from)
  return iso(parse(expr):next(utc(table.unpack(from))))
end

describe("cron.parse", function()
  describe("reads each field's syntax", function()
    local cases = {
      -- { field position, text, values }
      { 1, "*", range(0, 59) },
      { 1, "0", { 0 } },
      { 1, "59", { 59 } },
      { 1, "007", { 7 } },
      { 1, "1,5,10", { 1, 5, 10 } },
      { 1, "10,5,1,5", { 1, 5, 10 } },
      { 1, "1-5", { 1, 2, 3, 4, 5 } },
      { 1, "5-5", { 5 } },
      { 1, "*/15", { 0, 15, 30, 45 } },
      { 1, "*/7", range(0, 59, 7) },
      { 1, "1-30/5", { 1, 6, 11, 16, 21, 26 } },
      { 1, "50/5", { 50, 55 } },
      { 1, "*/60", { 0 } },
      { 1, "*/100", { 0 } },
      { 1, "0-10/3,45,50-52", { 0, 3, 6, 9, 45, 50, 51, 52 } },
      { 2, "*", range(0, 23) },
      { 2, "9-17", range(9, 17) },
      { 2, "*/6", { 0, 6, 12, 18 } },
      { 2, "23", { 23 } },
      { 3, "*", range(1, 31) },
      { 3, "1", { 1 } },
      { 3, "*/10", { 1, 11, 21, 31 } },
      { 3, "1,15,31", { 1, 15, 31 } },
      { 4, "*", range(1, 12) },
      { 4, "jan", { 1 } },
      { 4, "DEC", { 12 } },
      { 4, "Jun-Aug", { 6, 7, 8 } },
      { 4, "JAN-DEC/3", { 1, 4, 7, 10 } },
      { 4, "feb,apr,6", { 2, 4, 6 } },
      { 4, "*/2", { 1, 3, 5, 7, 9, 11 } },
      { 5, "*", range(0, 6) },
      { 5, "0", { 0 } },
      { 5, "7", { 0 } },
      { 5, "0,7", { 0 } },
      { 5, "sun", { 0 } },
      { 5, "SAT", { 6 } },
      { 5, "Mon-Fri", { 1, 2, 3, 4, 5 } },
      { 5, "5-7", { 0, 5, 6 } },
      { 5, "1-7/2", { 0, 1, 3, 5 } },
      { 5, "*/2", { 0, 2, 4, 6 } },
      { 5, "mon,wed,FRI", { 1, 3, 5 } },
    }
    local keys = { "minute", "hour", "dom", "month", "dow" }
    for _, case in ipairs(cases) do
      local pos, text, want = case[1], case[2], case[3]
      it(("%s %q"):format(keys[pos], text), function()
        local parts = { "*", "*", "*", "*", "*" }
        parts[pos] = text
        assert.are.same(want, values(parse(table.concat(parts, " "))[keys[pos]]))
      end)
    end
  end)

  it("takes any whitespace between fields, and around them", function()
    assert.are.same({ 5 }, values(parse("  5\t*  *\n* *  ").minute))
  end)

  describe("expands the aliases", function()
    local cases = {
      { "@hourly", "0 * * * *" }, { "@daily", "0 0 * * *" }, { "@midnight", "0 0 * * *" },
      { "@weekly", "0 0 * * 0" }, { "@monthly", "0 0 1 * *" }, { "@yearly", "0 0 1 1 *" },
      { "@annually", "0 0 1 1 *" }, { "@DAILY", "0 0 * * *" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local alias, plain = parse(case[1]), parse(case[2])
        for _, k in ipairs { "minute", "hour", "dom", "month", "dow", "dom_star", "dow_star" } do
          assert.are.same(plain[k], alias[k], k)
        end
      end)
    end
  end)

  describe("refuses, naming the field and the token", function()
    local cases = {
      { "60 * * * *", 'minute "60": 60 is out of range 0-59' },
      { "* 24 * * *", 'hour "24": 24 is out of range 0-23' },
      { "* * 0 * *", 'day-of-month "0": 0 is out of range 1-31' },
      { "* * 32 * *", 'day-of-month "32": 32 is out of range 1-31' },
      { "* * * 0 *", 'month "0": 0 is out of range 1-12' },
      { "* * * 13 *", 'month "13": 13 is out of range 1-12' },
      { "* * * * 8", 'day-of-week "8": 8 is out of range 0-7' },
      { "1-70 * * * *", 'minute "1-70": 70 is out of range 0-59' },
      { "*/0 * * * *", 'minute "*/0": the step must be a positive integer' },
      { "1-30/0 * * * *", 'minute "1-30/0": the step must be a positive integer' },
      { "*/-1 * * * *", 'minute "*/-1": the step must be a positive integer' },
      { "*/x * * * *", 'minute "*/x": the step must be a positive integer' },
      { "*/ * * * *", 'minute "*/": the step must be a positive integer' },
      { "5-1 * * * *", 'minute "5-1": the range 5-1 runs backwards' },
      { "* * * DEC-JAN *", 'month "DEC-JAN": the range DEC-JAN runs backwards' },
      { "* * * * SAT-SUN", 'day-of-week "SAT-SUN": the range SAT-SUN runs backwards' },
      { "* * * FOO *", 'month "FOO": unknown name "FOO"' },
      { "* * * JAN-FOO *", 'month "JAN-FOO": unknown name "FOO"' },
      { "* * * * MONDAY", 'day-of-week "MONDAY": unknown name "MONDAY"' },
      { "* * * * JAN", 'day-of-week "JAN": unknown name "JAN"' },
      { "* * * MON *", 'month "MON": unknown name "MON"' },
      { "MON * * * *", 'minute "MON": names are for month and day-of-week only' },
      { "* * * */JAN *", 'month "*/JAN": the step must be a positive integer' },
      { "1.5 * * * *", 'minute "1.5": "1.5" is not a number' },
      { "? * * * *", 'minute "?": "?" is not a number' },
      { "* * * * L", 'day-of-week "L": unknown name "L"' },
      { "-1 * * * *", 'minute "-1": a value is missing' },
      { "1- * * * *", 'minute "1-": a value is missing' },
      { "1,,2 * * * *", 'minute "1,,2": an empty list item' },
      { "1, * * * *", 'minute "1,": an empty list item' },
      { "1-2-3 * * * *", 'minute "1-2-3": "2-3" is not a number' },
      { "", "expected 5 fields (minute hour day-of-month month day-of-week), got 0" },
      { "* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4" },
      { "* * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6" },
      { "@fortnightly", 'unknown alias "@fortnightly"' },
      { "@daily *", 'unknown alias "@daily *"' },
      { "0 0 30 2 *", '"0 0 30 2 *" never fires: no month given has the day-of-month 30' },
      { "0 0 31 4,6,9,11 *", "never fires" },
      { "0 0 30,31 feb *", "never fires" },
    }
    for _, case in ipairs(cases) do
      local expr, message = case[1], case[2]
      it(("%q"):format(expr), function()
        local s, err = cron.parse(expr)
        assert.is_nil(s)
        assert.is_string(err)
        assert.matches(message, err, 1, true)
      end)
    end

    it("a value that is not a string", function()
      assert.are.same({ nil, "a cron expression must be a string" }, { cron.parse(5) })
    end)
  end)

  it("accepts a day that some month has, even if not all do", function()
    assert.is_not_nil(cron.parse "0 0 31 * *")
    assert.is_not_nil(cron.parse "0 0 29 2 *")
    assert.is_not_nil(cron.parse "0 0 30 2 MON") -- day-of-week alone may match
  end)
end)

describe("schedule:next", function()
  local cases = {
    -- { expression, from (UTC), the next slot strictly after }
    { "* * * * *", { 2027, 3, 10, 12, 30 }, "2027-03-10 12:31 Wed" },
    { "*/15 * * * *", { 2027, 3, 10, 12, 30 }, "2027-03-10 12:45 Wed" },
    { "*/15 * * * *", { 2027, 3, 10, 12, 46 }, "2027-03-10 13:00 Wed" },
    { "0 * * * *", { 2027, 3, 10, 23, 0 }, "2027-03-11 00:00 Thu" },
    { "30 9 * * *", { 2027, 3, 10, 9, 29 }, "2027-03-10 09:30 Wed" },
    { "30 9 * * *", { 2027, 3, 10, 9, 30 }, "2027-03-11 09:30 Thu" },
    { "0 9-17/4 * * *", { 2027, 3, 10, 14, 0 }, "2027-03-10 17:00 Wed" },
    { "0 9-17/4 * * *", { 2027, 3, 10, 17, 0 }, "2027-03-11 09:00 Thu" },
    { "5,10 1,2 * * *", { 2027, 3, 10, 1, 10 }, "2027-03-10 02:05 Wed" },
    -- month ends
    { "0 0 31 * *", { 2027, 1, 31, 0, 0 }, "2027-03-31 00:00 Wed" },
    { "0 0 31 * *", { 2027, 4, 1, 0, 0 }, "2027-05-31 00:00 Mon" },
    { "0 0 30 * *", { 2027, 1, 30, 0, 0 }, "2027-03-30 00:00 Tue" },
    { "0 0 29 * *", { 2027, 1, 29, 0, 0 }, "2027-03-29 00:00 Mon" },
    { "0 0 29 * *", { 2028, 1, 29, 0, 0 }, "2028-02-29 00:00 Tue" },
    { "0 0 29 2 *", { 2027, 1, 1, 0, 0 }, "2028-02-29 00:00 Tue" },
    { "0 0 29 2 *", { 2028, 2, 29, 0, 0 }, "2032-02-29 00:00 Sun" },
    { "0 0 29 2 *", { 2096, 3, 1, 0, 0 }, "2104-02-29 00:00 Fri" }, -- 2100 is not a leap year
    { "0 0 29 2 *", { 1999, 3, 1, 0, 0 }, "2000-02-29 00:00 Tue" }, -- 2000 is
    -- year rollover
    { "0 0 1 1 *", { 2027, 12, 31, 23, 59 }, "2028-01-01 00:00 Sat" },
    { "59 23 31 12 *", { 2027, 12, 31, 23, 59 }, "2028-12-31 23:59 Sun" },
    { "* * * * *", { 2027, 12, 31, 23, 59 }, "2028-01-01 00:00 Sat" },
    { "0 12 * jan *", { 2027, 2, 1, 0, 0 }, "2028-01-01 12:00 Sat" },
    { "@yearly", { 2027, 6, 15, 0, 0 }, "2028-01-01 00:00 Sat" },
    -- names and Sunday as 0 or 7
    { "0 0 * * MON-FRI", { 2027, 3, 12, 0, 0 }, "2027-03-15 00:00 Mon" }, -- Friday → Monday
    { "0 0 * * 0", { 2027, 3, 10, 0, 0 }, "2027-03-14 00:00 Sun" },
    { "0 0 * * 7", { 2027, 3, 10, 0, 0 }, "2027-03-14 00:00 Sun" },
    { "0 0 * * sun", { 2027, 3, 14, 0, 0 }, "2027-03-21 00:00 Sun" },
    { "@weekly", { 2027, 3, 10, 0, 0 }, "2027-03-14 00:00 Sun" },
    { "0 0 1 * *", { 2027, 3, 10, 0, 0 }, "2027-04-01 00:00 Thu" },
    -- day-of-month and day-of-week: either when both are restricted
    { "0 0 13 * FRI", { 2027, 3, 1, 0, 0 }, "2027-03-05 00:00 Fri" },
    { "0 0 13 * FRI", { 2027, 3, 12, 0, 0 }, "2027-03-13 00:00 Sat" },
    { "0 0 1,15 * WED", { 2027, 3, 10, 0, 0 }, "2027-03-15 00:00 Mon" },
    { "0 0 1,15 * WED", { 2027, 3, 15, 0, 0 }, "2027-03-17 00:00 Wed" },
    { "0 0 30 2 MON", { 2027, 3, 10, 0, 0 }, "2028-02-07 00:00 Mon" }, -- Mondays in February
    -- both, when one starts with * (Vixie's rule, */n included)
    { "0 0 * * FRI", { 2027, 3, 1, 0, 0 }, "2027-03-05 00:00 Fri" },
    { "0 0 13 * *", { 2027, 3, 1, 0, 0 }, "2027-03-13 00:00 Sat" },
    { "0 0 */2 * MON", { 2027, 3, 1, 0, 0 }, "2027-03-15 00:00 Mon" }, -- odd day and Monday
    { "0 0 13 * */5", { 2027, 3, 1, 0, 0 }, "2027-06-13 00:00 Sun" }, -- the 13th on Sunday or Friday
    { "0 0 13 * */5", { 2027, 6, 13, 0, 0 }, "2027-08-13 00:00 Fri" },
    { "0 0 13 * */5", { 2027, 8, 13, 0, 0 }, "2028-02-13 00:00 Sun" },
    -- Friday the 13th, spelled as a restricted day-of-week: either, not both
    { "0 0 13 * 5", { 2027, 8, 12, 0, 0 }, "2027-08-13 00:00 Fri" },
  }
  for _, case in ipairs(cases) do
    local expr, from, want = case[1], case[2], case[3]
    if from then
      it(("%q after %s is %s"):format(expr, iso(utc(table.unpack(from))), want), function()
        assert.are.equal(want, next_after(expr, from))
      end)
    end
  end

  it("returns a time strictly after, on a whole minute, also from inside a minute", function()
    local s = parse "* * * * *"
    local t = utc(2027, 3, 10, 12, 30)
    assert.are.equal(t + 60, s:next(t))
    assert.are.equal(t + 60, s:next(t + 0.5))
    assert.are.equal(t + 60, s:next(t + 59.9))
    assert.are.equal(t, s:next(t - 1))
    assert.are.equal("integer", math.type(s:next(t + 0.5)))
  end)

  it("works before 1970 too", function()
    assert.are.equal(utc(1970, 1, 1, 0, 0), parse("0 0 1 1 *"):next(-1))
    assert.are.equal(-86400 + 12 * 3600, parse("0 12 * * *"):next(-86400))
  end)

  it("refuses an after that is not a finite number", function()
    local s = parse "* * * * *"
    assert.has_error(function() s:next("now") end,
      "schedule:next(after): after must be a finite number of seconds since the epoch")
    assert.has_error(function() s:next(0 / 0) end,
      "schedule:next(after): after must be a finite number of seconds since the epoch")
    assert.has_error(function() s:next(math.huge) end,
      "schedule:next(after): after must be a finite number of seconds since the epoch")
  end)

  it("agrees with a minute-by-minute scan (UTC by os.date) for a mix of expressions", function()
    local exprs = { "*/7 */5 * * *", "0 0 13 * 5", "0 0 */2 * MON", "15 3 1-7 * SUN", "0 12 29 * *",
      "30 6 * 2 *", "0 0 1,15 * WED", "59 23 * * 6,0", "*/20 8-9 31 * *", "0 22 * * 1-5", "45 0 */3 1,3 *" }
    local starts = { utc(2027, 1, 28, 22, 0), utc(2028, 2, 27, 23, 30) }
    for _, expr in ipairs(exprs) do
      local s = parse(expr)
      for _, start in ipairs(starts) do
        local want
        for t = start + 60, start + 40 * 86400, 60 do
          local d = os.date("!*t", t)
          local dom, dow = s.dom[d.day] == true, s.dow[d.wday - 1] == true
          local day
          if s.dom_star or s.dow_star then
            day = dom and dow
          else
            day = dom or dow
          end
          if s.minute[d.min] and s.hour[d.hour] and s.month[d.month] and day then
            want = t
            break
          end
        end
        assert.is_not_nil(want, expr .. ": no slot in the scan's window")
        assert.are.equal(iso(want), iso(s:next(start)), expr .. " after " .. iso(start))
        assert.is_true(s:matches(want))
      end
    end
  end)
end)

describe("schedule:matches", function()
  it("tells whether a time is a slot, ignoring the seconds", function()
    local s = parse "30 9 * * MON-FRI"
    assert.is_true(s:matches(utc(2027, 3, 10, 9, 30)))
    assert.is_true(s:matches(utc(2027, 3, 10, 9, 30) + 59))
    assert.is_false(s:matches(utc(2027, 3, 10, 9, 31)))
    assert.is_false(s:matches(utc(2027, 3, 13, 9, 30))) -- a Saturday
  end)
end)
