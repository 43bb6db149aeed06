-- chorus.outbox_memory — the outbox kept in memory (chorus run without
-- --data, chorus.testing, a server with storage.durable = false): the same
-- backend contract as chorus.outbox_durable, nothing survives the process.
local deliveries = require "chorus.deliveries"

local memory = {}

local Memory = {}
Memory.__index = Memory

-- The memory outbox keeps its pending entries in binary heaps by (due,
-- seq), one per lane, so the relay finds the due ones in O(k log n) instead of sorting
-- every pending entry on each look (a look follows every delivery: with a
-- backlog of thousands that sort was most of the relay's time). A heap item
-- is { due =, seq =, e = }; one whose entry has since gone, or moved to
-- another due time, is stale and dropped when it comes up.
local function before(a, b)
  return a.due < b.due or (a.due == b.due and a.seq < b.seq)
end

local function heap_push(h, item)
  local i = #h + 1
  h[i] = item
  while i > 1 do
    local parent = i // 2
    if not before(h[i], h[parent]) then
      break
    end
    h[i], h[parent] = h[parent], h[i]
    i = parent
  end
end

local function heap_pop(h)
  local n = #h
  local top = h[1]
  h[1] = h[n]
  h[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, r, least = 2 * i, 2 * i + 1, i
    if l <= n and before(h[l], h[least]) then
      least = l
    end
    if r <= n and before(h[r], h[least]) then
      least = r
    end
    if least == i then
      break
    end
    h[i], h[least] = h[least], h[i]
    i = least
  end
  return top
end

--- An outbox in memory: entries (pending, by id), dead (the DLQ). With
--- keep (chorus.testing, chorus run) it also lists every entry ever added
--- (all, in order) and the delivered ones; a server does not, or the lists
--- would grow forever. Each lane (the workflow that enqueued, e.owner; ""
--- for none) has a heap of its own and a count of its pending entries.
function memory.new(keep)
  return setmetatable({ entries = {}, lanes = {}, counts = {}, indexed = setmetatable({}, { __mode = "k" }),
    dead = {}, n_dead = 0, keep = keep, all = keep and {} or nil, delivered = keep and {} or nil,
    rows = {}, row_runs = {}, row_first = 1 }, Memory)
end

local function lane_of(e)
  return e.owner or ""
end

-- Whether a heap item still stands for a pending entry at its due time.
local function live(self, item)
  local e = item.e
  return self.entries[e.id] == e and self.indexed[e] == item.due
end

-- Puts e in its lane's heap at its due time unless it is there already.
local function index(self, e)
  if self.indexed[e] ~= e.due then
    self.indexed[e] = e.due
    local lane = lane_of(e)
    local heap = self.lanes[lane]
    if not heap then
      heap = {}
      self.lanes[lane] = heap
    end
    heap_push(heap, { due = e.due, seq = e.seq, e = e })
  end
end

-- The pending count of e's lane goes up or down by one.
local function count(self, e, by)
  local lane = lane_of(e)
  local n = (self.counts[lane] or 0) + by
  self.counts[lane] = n > 0 and n or nil
end

function Memory:add(e)
  self:track(e, "pending")
  if not self.entries[e.id] then
    count(self, e, 1)
  end
  self.entries[e.id] = e
  index(self, e)
  if self.keep then
    self.all[#self.all + 1] = e
  end
end
function Memory:update(e)
  self.entries[e.id] = e
  index(self, e)
end
function Memory:remove(e)
  if self.entries[e.id] then
    count(self, e, -1)
  end
  self.entries[e.id] = nil
  if self.keep then
    self.delivered[#self.delivered + 1] = e
  end
end
function Memory:move(_, e)
  self.entries[e.id] = e
  index(self, e)
end
function Memory:bury(e)
  if self.entries[e.id] then
    count(self, e, -1)
  end
  self.entries[e.id] = nil
  self.n_dead = self.n_dead + 1
  if self.keep then
    self.dead[#self.dead + 1] = e
  end
end
--- How many entries workflow owner has pending.
function Memory:pending(owner)
  return self.counts[owner] or 0
end

--- The lane names in the order a look serves them: sorted, starting with
--- the first after lane `after` (the one served last), wrapping around.
function memory.rotate(names, after)
  table.sort(names)
  if not after then
    return names
  end
  local start = #names + 1
  for i, name in ipairs(names) do
    if name > after then
      start = i
      break
    end
  end
  local out = {}
  for i = start, #names do
    out[#out + 1] = names[i]
  end
  for i = 1, start - 1 do
    out[#out + 1] = names[i]
  end
  return out
end

--- At most limit entries of the per-lane lists (in lane order), one per
--- lane per round: round-robin.
function memory.interleave(lists, limit)
  local out, round, more = {}, 1, true
  while more and #out < limit do
    more = false
    for _, list in ipairs(lists) do
      local e = list[round]
      if e and #out < limit then
        out[#out + 1] = e
        more = more or list[round + 1] ~= nil
      end
    end
    round = round + 1
  end
  return out
end

-- The first limit entries due by now, leaving out those in skip (in
-- flight): round-robin across lanes, one per lane per round, starting with
-- the lane after `after` (the relay passes the lane it served last), each
-- lane's oldest first. Every live item taken off a heap goes back on it:
-- the entries stay pending until settled; stale ones are dropped, and a
-- lane left with nothing pending goes.
function Memory:due(now, limit, skip, _, after)
  limit = limit or math.huge
  local names = {}
  for name in pairs(self.lanes) do
    names[#names + 1] = name
  end
  names = memory.rotate(names, after)
  local out, back, seen = {}, {}, {}
  local open = #names
  while #out < limit and open > 0 do
    open = 0
    for _, name in ipairs(names) do
      local heap = self.lanes[name]
      -- this lane's next due entry not in flight, if any
      while heap and #out < limit and heap[1] and heap[1].due <= now do
        local item = heap_pop(heap)
        local e = item.e
        if live(self, item) and not seen[e] then
          seen[e] = true
          back[#back + 1] = { heap, item }
          if not (skip and skip[e.id]) then
            out[#out + 1] = e
            open = open + 1
            break
          end
        end
      end
    end
  end
  for i = 1, #back do
    heap_push(back[i][1], back[i][2])
  end
  for _, name in ipairs(names) do
    if not self.lanes[name][1] then
      self.lanes[name] = nil
    end
  end
  return out
end
function Memory.commit() end

-- The delivery rows of this many runs are kept (as many as a server keeps
-- finished records by default): a memory outbox must not grow forever.
local MEMORY_ROW_RUNS = 10000

function Memory:track(e, state)
  local run_id, row = deliveries.row(e, state)
  if not run_id then
    return
  end
  local rows = self.rows[run_id]
  if not rows then
    rows = {}
    self.rows[run_id] = rows
    local runs = self.row_runs
    runs[#runs + 1] = run_id
    if #runs - self.row_first + 1 > MEMORY_ROW_RUNS then -- the oldest run's rows go
      self.rows[runs[self.row_first]] = nil
      runs[self.row_first] = nil
      self.row_first = self.row_first + 1
    end
  end
  rows[row.id] = row
end
function Memory:deliveries(run_id)
  local out = {}
  for _, row in pairs(self.rows[run_id] or {}) do
    out[#out + 1] = row
  end
  return out
end
function Memory:depth()
  local n, oldest = 0, nil
  for _, e in pairs(self.entries) do
    n = n + 1
    local created = e.created or e.due
    oldest = math.min(oldest or created, created)
  end
  return n, oldest, self.n_dead
end
function Memory:next_due()
  local first
  for name, heap in pairs(self.lanes) do
    while heap[1] and not live(self, heap[1]) do
      heap_pop(heap) -- stale
    end
    if heap[1] then
      first = math.min(first or heap[1].due, heap[1].due)
    else
      self.lanes[name] = nil
    end
  end
  return first
end

return memory
