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
  return setmetatable({ dbs = {}, pending = {}, commits = 0, ops = 0 }, KV)
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

function KV:del(name, key)
  check(name, key)
  self.pending[#self.pending + 1] = { "del", name, key }
end

function KV:del_prefix(name, prefix)
  check(name, prefix)
  self.pending[#self.pending + 1] = { "del_prefix", name, prefix }
end

--- Applies every queued write (the C store's group commit, without a disk).
function KV:commit()
  local ops = self.pending
  self.pending = {}
  for _, op in ipairs(ops) do
    local d = db(self, op[2])
    if op[1] == "put" then
      d[op[3]] = op[4]
    elseif op[1] == "del" then
      d[op[3]] = nil
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

function KV.close() end

return memory
