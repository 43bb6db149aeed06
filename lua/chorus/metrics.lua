-- chorus.metrics — counters, gauges and histograms in the Prometheus text
-- exposition format (version 0.0.4).
--
-- A metric is declared once with its help text and label names; samples
-- are keyed by their label values. Rendering sorts series so the output is
-- stable between scrapes.
local metrics = {}

local registry = {}
local order = {}

local EMPTY = {}
local DEFAULT_BUCKETS = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }

local function escape(v)
  return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function build_key(labels, values)
  if #labels == 0 then
    return ""
  end
  local parts = {}
  for i, name in ipairs(labels) do
    parts[i] = ('%s="%s"'):format(name, escape(values[i] or ""))
  end
  return table.concat(parts, ",")
end

-- Label keys are cached per metric in a tree of label values, so the hot
-- path (a counter bump per outbound call) builds no strings. Values may be
-- strings or numbers (a status code needs no tostring).
--
-- A metric keeps at most MAX_SERIES series of the server's own making:
-- label values come from outside (a workflow's name, a status) and every
-- new one would grow the server's own memory, outside any run's cap, and
-- every scrape. Past the cap, new combinations count in one series whose
-- labels are all "_other".
local MAX_SERIES = 1000
metrics.MAX_SERIES = MAX_SERIES

-- A series a workflow's run makes (the host a script calls, a breaker it
-- names) is that workflow's: each workflow makes at most PER_WORKFLOW
-- series of a metric, and its new ones past that count as "_other". Under
-- the one cap above, a workflow calling 1,000 made-up hosts sent every
-- other workflow's new hosts to "_other" for the process's life.
metrics.PER_WORKFLOW = 200

-- A label value longer than this counts in the "_other" series too: a
-- thousand series of a megabyte each (a host a script made up) were a
-- gigabyte the process kept.
local MAX_LABEL_BYTES = 256
metrics.MAX_LABEL_BYTES = MAX_LABEL_BYTES

local function too_long(v)
  return type(v) == "string" and #v > MAX_LABEL_BYTES
end

local function overflow_key(m)
  if not m.overflow then
    local values = {}
    for i = 1, m.nlabels do
      values[i] = "_other"
    end
    m.overflow = build_key(m.labels, values)
  end
  return m.overflow
end

-- Whether owner (a workflow's name; nil: the server) may make one more
-- series of m.
local function full(m, owner)
  if owner == nil then
    return m.nkeys >= MAX_SERIES
  end
  return (m.owned[owner] or 0) >= metrics.PER_WORKFLOW
end

-- The key of values' series, made for owner if it is new; the "_other"
-- series' key when it may not be.
local function label_key(m, values, owner)
  local nlabels = m.nlabels
  if nlabels == 0 then
    return ""
  end
  local node = m.keys
  for i = 1, nlabels - 1 do
    local v = values[i] or ""
    local child = node[v]
    if not child then
      if full(m, owner) or too_long(v) then
        return overflow_key(m)
      end
      child = {}
      node[v] = child
    end
    node = child
  end
  local last = values[nlabels] or ""
  local key = node[last]
  if not key then
    if full(m, owner) or too_long(last) then
      return overflow_key(m)
    end
    key = build_key(m.labels, values)
    node[last] = key
    if owner == nil then
      m.nkeys = m.nkeys + 1
    else
      m.owned[owner] = (m.owned[owner] or 0) + 1
    end
  end
  return key
end

local function declare(kind, name, help, labels, buckets)
  local m = registry[name]
  if m then
    return m
  end
  m = { kind = kind, name = name, help = help, labels = labels or {}, series = {},
    buckets = buckets or DEFAULT_BUCKETS, keys = {}, nkeys = 0, owned = {} }
  m.nlabels = #m.labels
  registry[name] = m
  order[#order + 1] = name
  return m
end

-- Every metric also has key(values, owner) → the series key (owner: the
-- workflow whose run makes the series, see PER_WORKFLOW), and a *_key form
-- of its update taking that key: a hot caller looks the key up once and
-- keeps it instead of building a label table per update. other() is the
-- "_other" series' key (a caller keeps no key that is it: the values may
-- have a series of their own later, made by another workflow).
function metrics.counter(name, help, labels)
  local m = declare("counter", name, help, labels)
  local series = m.series
  local function inc_key(key, n)
    series[key] = (series[key] or 0) + (n or 1)
  end
  return {
    key = function(values, owner) return label_key(m, values or EMPTY, owner) end,
    other = function() return overflow_key(m) end,
    inc_key = inc_key,
    inc = function(values, n) inc_key(label_key(m, values or EMPTY), n) end,
  }
end

function metrics.gauge(name, help, labels)
  local m = declare("gauge", name, help, labels)
  return {
    set = function(values, v, owner)
      m.series[label_key(m, values or EMPTY, owner)] = v
    end,
    add = function(values, v)
      local key = label_key(m, values or EMPTY)
      m.series[key] = (m.series[key] or 0) + v
    end,
  }
end

-- A histogram series counts each observation once, in the first bucket
-- whose bound holds it (counts[#buckets + 1]: above every bound); render
-- makes the cumulative le= counts. Bumping every bucket at or above the
-- value was the busiest loop of a served request.
function metrics.histogram(name, help, labels, buckets)
  local m = declare("histogram", name, help, labels, buckets)
  local bounds = m.buckets
  local nbounds = #bounds
  local function observe_key(key, v)
    local s = m.series[key]
    if not s then
      s = { counts = {}, sum = 0, count = 0 }
      for i = 1, nbounds + 1 do
        s.counts[i] = 0
      end
      m.series[key] = s
    end
    local i = 1
    while i <= nbounds and v > bounds[i] do
      i = i + 1
    end
    local counts = s.counts
    counts[i] = counts[i] + 1
    s.sum = s.sum + v
    s.count = s.count + 1
  end
  return {
    key = function(values, owner) return label_key(m, values or EMPTY, owner) end,
    other = function() return overflow_key(m) end,
    observe_key = observe_key,
    observe = function(values, v) observe_key(label_key(m, values or EMPTY), v) end,
  }
end

local function fmt(v)
  if math.type(v) == "integer" then
    return tostring(v)
  end
  if v ~= v then
    return "NaN"
  end
  local short = ("%.15g"):format(v)
  if tonumber(short) == v then
    return short
  end
  return ("%.17g"):format(v)
end

local function with(key, extra)
  if key == "" then
    return "{" .. extra .. "}"
  end
  return "{" .. key .. "," .. extra .. "}"
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

--- Returns the exposition text of every declared metric.
function metrics.render()
  local out = {}
  for _, name in ipairs(order) do
    local m = registry[name]
    out[#out + 1] = ("# HELP %s %s"):format(name, m.help)
    out[#out + 1] = ("# TYPE %s %s"):format(name, m.kind)
    for _, key in ipairs(sorted_keys(m.series)) do
      local s = m.series[key]
      if m.kind == "histogram" then
        local cumulative = 0
        for i, bound in ipairs(m.buckets) do
          cumulative = cumulative + s.counts[i]
          out[#out + 1] = ("%s_bucket%s %d"):format(name, with(key, ('le="%s"'):format(fmt(bound))), cumulative)
        end
        out[#out + 1] = ("%s_bucket%s %d"):format(name, with(key, 'le="+Inf"'), s.count)
        local suffix = key == "" and "" or "{" .. key .. "}"
        out[#out + 1] = ("%s_sum%s %s"):format(name, suffix, fmt(s.sum))
        out[#out + 1] = ("%s_count%s %d"):format(name, suffix, s.count)
      else
        out[#out + 1] = ("%s%s %s"):format(name, key == "" and "" or "{" .. key .. "}", fmt(s))
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

return metrics
