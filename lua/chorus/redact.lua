-- chorus.redact — a workflow's `redact = { "card.number", ... }`: fields
-- masked wherever chorus shows data (run records, GET /runs/ID, outbox and
-- DLQ listings, log lines), never where it keeps data to act on (the
-- journal, an outbox entry's own input or body, a stored idempotent
-- response), so replay, delivery and redrive still see the real values.
--
-- A path is keys joined by dots. It matches at any depth: "card.number"
-- masks input.card.number and input.donation.card.number alike (masking
-- too much is safe, too little is not). A key may be "*" for every key or
-- element at that level. JSON text in a body (a string that decodes to an
-- object or array) is masked inside too.
local core = require "chorus.core"

local redact = { MASK = "[REDACTED]" }

local getraw = require("debug").getmetatable
local ARRAY_MT = getraw(core.json.array({}))

local PATH = "^[%w_%-%*]+$"

--- Checks a workflow's redact list; returns nil or a message.
function redact.check(list)
  for i = 1, rawlen(list) do
    local path = rawget(list, i)
    if type(path) ~= "string" or path == "" then
      return ("redact[%d] must be a path such as \"card.number\""):format(i)
    end
    for key in (path .. "."):gmatch("([^.]*)%.") do
      if not key:match(PATH) then
        return ("redact[%d] = %q: each key must be letters, digits, '_', '-' or '*'"):format(i, path)
      end
    end
  end
  for k in next, list do
    if math.type(k) ~= "integer" or k < 1 or k > rawlen(list) then
      return "redact must be a list of paths"
    end
  end
  return nil
end

-- ---- the cost of masking --------------------------------------------------
--
-- Records are masked after their run, outside any budget (the record's
-- JSON at the run's end, listings): a result of 3,000 keys under 20,000
-- paths held the server's thread 10 s, and 200 references to one JSON text
-- of 200 KB (each decoded, walked and encoded again) 39 s. So each path is
-- found by its first key (not every path tried on every key), and one
-- masking spends at most FUEL steps (a key visited, a path tried, 16 bytes
-- of JSON text decoded): past them the whole value is masked, as masking
-- too much is safe. A record a real workflow keeps takes a small share.
local FUEL = 250000
redact.FUEL = FUEL
local OUT = setmetatable({}, { __name = "chorus.redact.out_of_fuel" }) -- the error that says so

local fuel = 0

local function spend(n)
  fuel = fuel - n
  if fuel < 0 then
    error(OUT, 0)
  end
end

local compiled = setmetatable({}, { __mode = "k" }) -- list → { first = { key → {keys...} }, star = {...} }

local function compile(list)
  local c = compiled[list]
  if not c then
    c = { first = {}, star = {} }
    for _, path in ipairs(list) do
      local keys = {}
      for key in (path .. "."):gmatch("([^.]*)%.") do
        keys[#keys + 1] = key
      end
      if keys[1] == "*" then
        c.star[#c.star + 1] = keys
      else
        local same = c.first[keys[1]] or {}
        same[#same + 1] = keys
        c.first[keys[1]] = same
      end
    end
    compiled[list] = c
  end
  return c
end

local function key_is(k, want)
  return want == "*" or tostring(k) == want
end

-- Masks, in the copy `out` of node, the values at the end of keys[i..].
local function mask_path(out, keys, i)
  local want = keys[i]
  for k, v in next, out do
    spend(1)
    if key_is(k, want) then
      if i == #keys then
        out[k] = redact.MASK
      elseif type(v) == "table" then
        mask_path(v, keys, i + 1)
      end
    end
  end
end

-- The paths (each starting with key k, or "*") applied at k in out.
local function mask_key(out, k, paths)
  for _, keys in ipairs(paths) do
    spend(1)
    if #keys == 1 then
      out[k] = redact.MASK
      return
    end
    local v = out[k]
    if type(v) == "table" then
      mask_path(v, keys, 2)
    end
  end
end

local walk

-- A string that holds a JSON object or array is masked inside.
local function json_text(s, paths, depth)
  local first = s:match("^%s*([%[{])")
  if not first then
    return s
  end
  spend(1 + #s // 16)
  local ok, decoded = pcall(core.json.decode, s)
  if not ok or type(decoded) ~= "table" then
    return s
  end
  local masked = walk(decoded, paths, depth)
  local eok, text = pcall(core.json.encode, masked)
  return eok and text or s
end

walk = function(value, paths, depth)
  if type(value) == "string" then
    return depth < 8 and json_text(value, paths, depth + 1) or value
  end
  if type(value) ~= "table" or depth > 64 then
    return value
  end
  local out = {}
  for k, v in next, value do
    spend(1)
    out[k] = walk(v, paths, depth + 1)
  end
  if getraw(value) == ARRAY_MT then -- json.array's marker, and nothing else of the value's
    -- (getmetatable gave a log line's __metatable, a table whose __gc then
    -- ran at a collection, outside any run: a loop there hung the server)
    setmetatable(out, ARRAY_MT)
  end
  local first, star = paths.first, paths.star
  for k in next, out do
    local same = first[type(k) == "string" and k or tostring(k)]
    if same then
      mask_key(out, k, same)
    end
    if star[1] then
      mask_key(out, k, star)
    end
  end
  return out
end

--- A masked copy of value under the paths of list (nil or empty: value);
--- redact.MASK for the whole value when masking it would cost too much.
function redact.value(value, list)
  if list == nil or list[1] == nil then
    return value
  end
  local paths = compile(list)
  fuel = FUEL
  local ok, out = pcall(walk, value, paths, 0)
  if ok then
    return out
  end
  if out == OUT then
    return redact.MASK
  end
  error(out, 0) -- a limit or a stop of the run whose log line this is
end

--- The fields of a record or entry that show data, masked: copies `t`
--- (one level) with each named field masked.
function redact.fields(t, list, names)
  if list == nil or list[1] == nil or type(t) ~= "table" then
    return t
  end
  local out = {}
  for k, v in next, t do
    out[k] = v
  end
  for _, name in ipairs(names) do
    if out[name] ~= nil then
      out[name] = redact.value(out[name], list)
    end
  end
  return out
end

return redact
