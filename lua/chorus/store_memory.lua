-- chorus.store_memory — the C store's contract (runtime/lua_store.c) kept in
-- memory: named databases of text values in key order, writes queued until
-- commit(), reads that see the committed state only.
--
-- chorus.store wraps it as it wraps the data folder (store.memory()), so
-- chorus.testing keeps its runs through the very code a server uses. A
-- simulated crash (crash()) drops the writes not yet committed, as a real
-- one loses what the last group commit did not take; what a "restarted"
-- run service then reads is what a restarted server would read.
local memory = {}

local KV = {}
KV.__index = KV

function memory.new()
  return setmetatable({ dbs = {}, pending = {}, commits = 0, ops = 0, rows = {} }, KV)
end

local function db(self, name)
  local d = self.dbs[name]
  if not d then
    d = {}
    self.dbs[name] = d
  end
  return d
end

local function check(name, key, value)
  if type(name) ~= "string" or type(key) ~= "string" or (value ~= nil and type(value) ~= "string") then
    error("store: db, key and value must be strings", 3)
  end
end

function KV:put(name, key, value)
  check(name, key, value)
  self.pending[#self.pending + 1] = { "put", name, key, value }
end

--- put with value as JSON (the C store encodes it straight into its batch);
--- the bytes queued, or nil and the size when over max (nothing queued).
function KV:put_json(name, key, value, max)
  local text = require("chorus.core").json.encode(value)
  if max and #text > max then
    return nil, #text
  end
  self:put(name, key, text)
  return #text
end

--- A counter kept in meta under key (the C store's store:counter writes
--- only the last value of each commit; here each is queued).
function KV:counter(_, key, n)
  self:put("meta", key, tostring(n))
end

--- The number of the commit the writes queued now go into.
function KV:batch()
  return self.commits
end

function KV:del(name, key)
  check(name, key)
  self.pending[#self.pending + 1] = { "del", name, key }
end

function KV:del_prefix(name, prefix)
  check(name, prefix)
  self.pending[#self.pending + 1] = { "del_prefix", name, prefix }
end

--- The index row of run id (the C store's store:index): t (µs), its index
--- keys, its summary.
function KV:index(id, t, keys, summary)
  check("run_rows", id, summary)
  self.pending[#self.pending + 1] = { "index", "run_rows", id, { t = t, keys = keys, summary = summary } }
end

--- Applies every queued write (the C store's group commit, without a disk).
function KV:commit()
  local ops = self.pending
  self.pending = {}
  for _, op in ipairs(ops) do
    local d = db(self, op[2])
    if op[1] == "put" then
      d[op[3]] = op[4]
    elseif op[1] == "index" then
      self.rows[op[3]] = op[4]
    elseif op[1] == "del" then
      d[op[3]] = nil
      if op[2] == "runs" then -- a run's index row goes with its record
        self.rows[op[3]] = nil
      end
    else
      local prefix = op[3]
      for k in pairs(d) do
        if k:sub(1, #prefix) == prefix then
          d[k] = nil
        end
      end
    end
  end
  self.commits = self.commits + 1
  self.ops = self.ops + #ops
end

--- The process "dies": what was not committed is gone.
function KV:crash()
  self.pending = {}
end

function KV:get(name, key)
  return db(self, name)[key]
end

--- { {key, value}, ... } in key order; opts: prefix, from (inclusive), to
--- (exclusive), limit.
function KV:scan(name, opts)
  opts = opts or {}
  local keys = {}
  for k in pairs(db(self, name)) do
    if (not opts.prefix or k:sub(1, #opts.prefix) == opts.prefix) and (not opts.from or k >= opts.from)
        and (not opts.to or k < opts.to) then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  local rows, d = {}, db(self, name)
  for i = 1, math.min(#keys, opts.limit or math.maxinteger) do
    rows[i] = { keys[i], d[keys[i]] }
  end
  return rows
end

--- The runs under key, newest first (the C store's store:index_list).
function KV:index_list(key, opts)
  opts = opts or {}
  local hits = {}
  for id, row in pairs(self.rows) do
    local has = {}
    for _, k in ipairs(row.keys) do
      has[k] = true
    end
    local tk = string.pack(">I8", row.t) .. id
    local ok = has[key] and row.t >= (opts.since or 0) and (not opts["until"] or row.t < opts["until"])
      and (not opts.before or tk < opts.before) and db(self, "runs")[id] ~= nil
    for _, k in ipairs(opts.also or {}) do
      ok = ok and has[k]
    end
    if ok then
      hits[#hits + 1] = { id, row.t, row.summary, tk = tk }
    end
  end
  table.sort(hits, function(a, b) return a.tk > b.tk end)
  for i = #hits, (opts.limit or 100) + 1, -1 do
    hits[i] = nil
  end
  return hits
end

function KV:count(name)
  local n = 0
  for _ in pairs(db(self, name)) do
    n = n + 1
  end
  return n
end

function KV:stats()
  return { commits = self.commits, ops = self.ops, failures = 0, pending_ops = #self.pending, writing = false,
    full = false, grows = 0, map_size = 0, max_size = 0 }
end

function KV.verify()
  return { counts = {}, bad = {} }
end

function KV.lock()
  return true
end

--- fn's results: reads in memory see one state anyway (one process).
function KV.snapshot(_, fn)
  return fn()
end

function KV.close() end

return memory
