-- chorus.store — the records chorus keeps in its LMDB data folder, and their
-- keys. The C side (runtime/store.c) stores bytes and group-commits; this
-- module knows what each named database holds:
--
--   runs         run id → the run record (JSON): workflow, status, input,
--                script hash, deadline, result or error, timeline
--   journal      run id .. seq (4 bytes, big-endian) → one recorded effect
--   idempotency  workflow .. "\0" .. key → fingerprint, state, stored response
--   outbox       due time (ms, 8 bytes big-endian) .. entry id → entry
--   dlq          entry id → the dead entry with its last error
--   scripts      sha-256 of a script's source → the source
--   timers       run id → deadline of every run not finished yet; recovery
--                resumes exactly these
--   meta         schema_version (2: every other value carries a checksum)
--   deliveries   run id .. entry id → what became of an outbox entry the run
--                enqueued (GET /runs/ID lists them): state, attempts, error
--   events       durable events (chorus.events): kept events waiting for a
--                ctx.event, and the event ids seen (redeliveries absorbed)
--   schedules    workflow name → its schedule as the scheduler last stored
--                it: the slots handled so far, the last run (chorus.scheduler)
--   run_index    the runs' secondary index (runtime/store_index.h), kept by
--   run_rows     the C store in the write transaction of the run record:
--                index key → the runs under it by start time; run id → its
--                row (start time, index keys, summary). The keys: every run,
--                its status, workflow, workflow and status, idempotency key
--                (run_keys below). meta.run_index = "1" once every run of
--                the folder is in it (build_run_index).
--   outbox_lanes the outbox by lane, the workflow that enqueued (entry.owner,
--                "" for none): lane .. "\0" .. outbox key → "1". The relay
--                serves lanes round-robin (due_outbox); written with the
--                outbox entry. meta.outbox_lanes = "1" once every entry is
--                in it (build_outbox_lanes).
--   meta "held\0" .. workflow → the bytes the workflow holds in the folder
--                (decimal): its runs' records and journals, the outbox
--                and DLQ entries its runs enqueued, and the stored responses
--                of its idempotency keys (storage.workflow_share_mb);
--                written in the write transaction of what changed it.
--                meta.held = "1" once every run of the folder is counted
--                (build_held).
--   meta "heldd\0" .. workflow .. "\0" .. uuid → bytes (decimal, may be
--                negative), and "laned\0" .. lane .. "\0" .. uuid → entries:
--                a change of those counts made by a process that does not
--                own them (a guest: the CLI while a server may run), until
--                the owner folds it in (absorb_counts).
--
-- Every value is checked against its checksum when read (runtime/store.c):
-- a bad one raises "store: corrupt record in database DB, key 'K': ...",
-- and a value that is not JSON where JSON belongs raises naming the
-- database and key too, never skipped in silence. verify() walks them all.
--
-- Writes are queued and land with the next group commit; call commit() from
-- a task to wait until they are durable. Reads see committed state only.
local core = require "chorus.core"
local redact = require "chorus.redact"
local json = core.json

local store = {}

local Store = {}
Store.__index = Store

--- Opens the data folder dir (created if missing). opts: sync (default
--- true), map_size_mb (the first map, 1024), max_size_mb (what the map may
--- grow to, 8192).
function store.open(dir, opts)
  local ok, st = pcall(core.store_open, dir, opts)
  if not ok then
    return nil, tostring(st)
  end
  return setmetatable({ st = st, dir = dir }, Store)
end

--- A store kept in memory with the data folder's contract
--- (chorus.store_memory): for chorus.testing, whose simulated crashes
--- lose the writes not yet committed.
function store.memory()
  return setmetatable({ st = require("chorus.store_memory").new(), memory = true }, Store)
end

--- store.memory(): the process "dies", what was not committed is gone.
function Store:crash()
  self.st:crash()
  -- and what the process kept in memory: the counts are read again from
  -- what was committed, as a restarted server reads them
  self.held_bytes, self.run_accounts, self.journal_read = nil, nil, nil
  self.deltas_pending, self.deltas_taken = nil, nil
  self.lane_counts, self.lanes_counted = nil, nil
end

function Store:close()
  self.st:close()
end

--- Waits until the queued writes are on disk; raises when their batch failed.
function Store:commit()
  local ok, err = pcall(self.st.commit, self.st)
  if not ok then
    -- the batch is lost, the counts it changed with it: what each workflow
    -- holds is read again from the folder (Store:held)
    -- (with the guests' changes it took, there to take again; a lane's
    -- count is kept, with the changes in it)
    self.held_bytes, self.run_accounts = nil, nil
    if self.deltas_taken then
      self.deltas_taken.held = nil
    end
    error(err, 0)
  end
end

function Store:stats()
  return self.st:stats()
end

--- How many records db holds (last committed state).
function Store:count(db)
  return self.st:count(db)
end

--- Takes serve.lock in the folder (one server at a time runs the relay and
--- the recovery), waiting up to wait seconds: true, or nil and why.
--- The process that holds it owns the folder's counts (what each workflow
--- holds, each lane's entries): a store that does not (self.guest: the
--- CLI's) writes its changes as deltas the owner folds in (absorb_counts).
function Store:lock(wait)
  local ok, err = self.st:lock(wait)
  if ok then
    self.guest = nil
  end
  return ok, err
end

--- Whether a commit's error says the data folder is full (the map reached
--- storage.max_size_mb, or the disk has no room left).
function store.is_full(err)
  local text = tostring(err)
  return text:find("store: the data folder is full", 1, true) ~= nil
    or text:find("No space left on device", 1, true) ~= nil
end

--- Checks every record: { counts = { db = n }, bad = { {db, key, why, message} } }.
--- Checks every record (checksum; JSON where JSON belongs): { counts =,
--- bad = { {db, key, why, message} } }. skip: names of databases left
--- unread (counted only).
function Store:verify(skip)
  return self.st:verify(skip)
end

-- The value of key in db decoded; a value that is not JSON raises naming both.
local function decode(db, key, text)
  local ok, value = pcall(json.decode, text)
  if not ok then
    local shown = key:gsub("[^\32-\126]", function(c) return ("\\x%02x"):format(c:byte()) end)
    local why = tostring(value):gsub("^json%.decode: ", "")
    error(("store: corrupt record in database %s, key '%s': not JSON (%s)"):format(db, shown, why), 0)
  end
  return value
end

-- What a server reads of its data folder before it listens: every
-- database but the finished runs' (records, index, delivery rows,
-- journals kept for redrive), which grow with the retention and are
-- checked as they are read; of those, the records and journals of the
-- unfinished runs, which recovery resumes. Returns the verify report.
local FINISHED_RUNS = { "runs", "run_index", "run_rows", "deliveries", "journal" }

--- The unfinished runs' records and journals it decoded are kept for the
--- recovery that follows (Store:checked_unfinished): decoding them twice
--- was a sixth of a resumed run's instructions.
function Store:verify_for_start()
  local report = self:verify(FINISHED_RUNS)
  if #report.bad > 0 then
    return report
  end
  local ok, err = pcall(function()
    local list, by_id = self:unfinished(), {}
    for _, u in ipairs(list) do
      local text = self.st:get("runs", u.id)
      u.rec = text and decode("runs", u.id, text) or nil
      u.journal = self:journal(u.id)
      by_id[u.id] = u
    end
    self.checked, self.checked_list = by_id, list
  end)
  if not ok then
    report.bad[1] = { message = tostring(err) }
  end
  return report
end

--- What verify_for_start read, once: the unfinished runs as unfinished()
--- lists them, each with its decoded record (rec, nil when it has none)
--- and journal while nothing has written either since (see forget); nil
--- when there was no such check.
function Store:checked_unfinished()
  local list = self.checked_list
  self.checked_list = nil
  return list
end

-- Drops what the check kept of run id: a write to its record or journal
-- makes it stale (a cancel that lands before recovery reaches the run),
-- and take_checked gives it out once.
local function forget(self, id)
  local u = self.checked and self.checked[id]
  if u then
    self.checked[id] = nil
    u.rec, u.journal = nil, nil
  end
end

--- The checked record and journal of run id, given out once (nil, nil
--- when not kept, or written since the check).
function Store:take_checked(id)
  local u = self.checked and self.checked[id]
  local rec, recorded = u and u.rec, u and u.journal
  forget(self, id)
  return rec, recorded
end

function Store:put_json(db, key, value, max)
  return self.st:put_json(db, key, value, max)
end

function Store:get_json(db, key)
  local text = self.st:get(db, key)
  return text and decode(db, key, text)
end

-- Decoded {key, value} rows of a scan.
function Store:scan_json(db, opts)
  local rows = self.st:scan(db, opts)
  for i, row in ipairs(rows) do
    rows[i] = { key = row[1], value = decode(db, row[1], row[2]) }
  end
  return rows
end

-- The decoded values of db in key order, at most limit.
local function values(self, db, limit)
  local out = {}
  for i, row in ipairs(self.st:scan(db, { limit = limit or math.maxinteger })) do
    out[i] = decode(db, row[1], row[2])
  end
  return out
end

-- ---- runs ---------------------------------------------------------------

-- The index keys of a run: listing walks one of them (chorus.runs_api).
local ALL_RUNS = "a"
store.ALL_RUNS = ALL_RUNS
function store.status_key(status) return "s\0" .. status end
function store.workflow_key(workflow) return "w\0" .. workflow end
function store.workflow_status_key(workflow, status) return "ws\0" .. workflow .. "\0" .. status end
function store.idem_key_key(key) return "k\0" .. key end

local null = json.null

local function text_or_null(v)
  return type(v) == "string" and v or null
end

-- The index keys of a run by workflow, then status (null: none), made once
-- per pair rather than three strings and a table per write; read-only. As
-- many as the workflows' names times the statuses.
local keys_by = {}

local function status_keys(workflow, status)
  local by = keys_by[workflow]
  if not by then
    by = {}
    keys_by[workflow] = by
  end
  local keys = by[status]
  if not keys then
    keys = { ALL_RUNS }
    if status ~= null then
      keys[#keys + 1] = store.status_key(status)
    end
    if workflow ~= null then
      keys[#keys + 1] = store.workflow_key(workflow)
      if status ~= null then
        keys[#keys + 1] = store.workflow_status_key(workflow, status)
      end
    end
    by[status] = keys
  end
  return keys
end

local EMPTY_REQUEST = {}

-- The index row of a run record: its start time (µs), keys and summary
-- (what GET /admin/runs lists of it, plus the CLI's duration and slot).
local function run_row(rec)
  local started = tonumber(rec.started) or 0
  local t = math.max(0, math.floor(started * 1e6 + 0.5))
  local status, workflow = text_or_null(rec.status), text_or_null(rec.workflow)
  local keys = status_keys(workflow, status)
  -- a keyed async run stores no response under its key (rec.key is unset:
  -- the 202 was), but it is still the key's run: list it under the key
  local req = type(rec.request) == "table" and rec.request or EMPTY_REQUEST
  local key = text_or_null(rec.key or req.idempotency_key)
  if key ~= null and #key <= 500 then
    keys = { table.unpack(keys) }
    keys[#keys + 1] = store.idem_key_key(key)
  end
  local err = type(rec.error) == "table" and rec.error or nil
  local summary = json.encode({ id = rec.id, workflow = workflow, status = status, started_at = rec.started or null,
    finished_at = tonumber(rec.finished) or null, key = key, version = text_or_null(rec.script_hash),
    error_kind = err and text_or_null(err.kind) or null, duration = tonumber(rec.duration) or null,
    slot = type(rec.schedule) == "table" and tonumber(rec.schedule.slot) or null })
  return t, keys, summary
end

local function index_run(self, rec)
  if type(rec) == "table" and type(rec.id) == "string" then
    self.st:index(rec.id, run_row(rec))
  end
end

--- The run record and its index row: both land in one write transaction.
--- fresh: the run's first record (nothing of it is in the folder yet).
function Store:put_run(rec, fresh)
  forget(self, rec.id)
  local a = fresh and self:new_run_account(rec.id, rec.workflow) or self:run_account(rec.id, rec.workflow)
  local bytes = self:put_json("runs", rec.id, rec)
  index_run(self, rec)
  self:hold_run(a, "rec", bytes)
end

function Store:get_run(id)
  return self:get_json("runs", id)
end

--- A finished run's record, as the JSON text GET /runs/ID answers; rec is
--- the record as a table (nil: decoded from text) for its index row.
function Store:put_run_text(id, text, rec)
  forget(self, id)
  self.st:put("runs", id, text)
  if rec == nil then
    local ok, decoded = pcall(json.decode, text)
    rec = ok and decoded or nil
  end
  index_run(self, rec)
  self:hold_run(self:run_account(id, type(rec) == "table" and rec.workflow or nil), "rec", #text)
end

--- What the runs' listing shows of run id, read from its index row (a few
--- hundred bytes: { workflow =, status =, error_kind =, ... }), never from
--- its record, which may be megabytes; nil when it has no row (a folder
--- whose index is not built yet, the memory store: read the record).
function Store:run_summary(id)
  if self.memory then
    return nil
  end
  local row = self.st:get("run_rows", id)
  if not row or #row < 9 then
    return nil
  end
  local off = 10 -- past the time (8 bytes) and the key count
  for _ = 1, row:byte(9) do
    off = select(2, string.unpack(">s2", row, off))
  end
  local ok, summary = pcall(json.decode, row:sub(off))
  return ok and type(summary) == "table" and summary or nil
end

--- The stored record's JSON text, or nil.
function Store:get_run_text(id)
  return self.st:get("runs", id)
end

function Store:del_run(id)
  forget(self, id)
  self:hold_run(self:run_account(id), "rec", 0)
  self.st:del("runs", id)
end

--- Marks a run unfinished (recovery resumes it) with its deadline.
function Store:put_timer(id, deadline_at)
  -- a guest's runs name it: a server starting while it lives leaves them to it
  self:put_json("timers", id, { deadline_at = deadline_at, guest = self.guest_id })
end

function Store:del_timer(id)
  self.st:del("timers", id)
end

--- Ids of the runs that have not finished, with their timers.
function Store:unfinished()
  local out = {}
  for _, row in ipairs(self:scan_json("timers", { limit = math.maxinteger })) do
    out[#out + 1] = { id = row.key, deadline_at = row.value.deadline_at, guest = row.value.guest }
  end
  return out
end

--- A guest that runs workflows in the folder (`chorus run --data`) holds
--- a lock of its own while it lives, named in the timers of its runs: a
--- server starting meanwhile resumes them only once the guest is gone
--- (chorus.runs, recover), instead of running them a second time beside
--- it. True, or nil and why.
function Store:claim_guest()
  self.guest = true
  if self.memory then
    return true
  end
  local id = core.uuid()
  local ok, err = self.st:hold_guest(id)
  if ok then
    self.guest_id = id
  end
  return ok, err
end

--- Whether guest name (a timer's) still lives.
function Store:guest_alive(name)
  return not self.memory and type(name) == "string" and self.st:guest_alive(name) == true
end

--- The guests of the folder that died since the last look: { name = true }
--- (their lock files are removed as they are found unheld).
function Store:dead_guests()
  local dead = {}
  if self.memory or not self.dir then
    return dead
  end
  for _, ent in ipairs(core.scandir(self.dir) or {}) do
    local name = not ent.dir and ent.name:match("^guest%-([%w%-]+)%.lock$")
    if name and not self:guest_alive(name) then
      dead[name] = true
    end
  end
  return dead
end

--- The runs under index key `key`, newest first, from the index (no scan of
--- the runs): { {id =, t =, summary = {...}} }, at most opts.limit. opts:
--- also (keys each run must also be under), before (an exclusive time key,
--- t .. id, as cursor() makes), since and until (µs: since <= t < until).
function Store:find_runs(key, opts)
  local rows = self.st:index_list(key, opts)
  for i, row in ipairs(rows) do
    rows[i] = { id = row[1], t = row[2], summary = decode("run_rows", row[1], row[3]) }
  end
  return rows
end

--- The time key of a listed run (find_runs's before).
function store.time_key(t, id)
  return string.pack(">I8", t) .. id
end

-- Runs indexed per commit while the index is built.
local BUILD_BATCH = 5000

-- The outbox's key of an entry: its due time (ms) then its id.
local function outbox_key(due, id)
  return string.pack(">I8", math.max(0, math.floor(due * 1000))) .. id
end
store.outbox_key = outbox_key

-- An entry's key in outbox_lanes: its lane (the workflow that enqueued it)
-- then its outbox key. Workflow names hold no NUL.
local function lane_key(owner, key)
  return (owner or "") .. "\0" .. key
end

-- Goes over every row of table tbl in batches (each committed: a big
-- folder is not one write transaction), calling each(key, value) per row,
-- unless meta's flag says a chorus that keeps it whole wrote the folder.
-- Returns how many rows it went over.
local function build_whole(self, tbl, flag, each)
  if self.memory or self.st:get("meta", flag) == "1" then
    return 0
  end
  local from, n = nil, 0
  repeat
    local rows = self.st:scan(tbl, { from = from, limit = BUILD_BATCH + 1 })
    for i = 1, math.min(#rows, BUILD_BATCH) do
      each(rows[i][1], rows[i][2])
      n = n + 1
    end
    from = rows[BUILD_BATCH + 1] and rows[BUILD_BATCH + 1][1]
    self.st:put("meta", flag, from and "0" or "1")
    self:commit()
  until not from
  return n
end

--- Builds the runs' index of a folder a chorus without it wrote (from
--- inside a task: it commits as it goes), unless meta.run_index says it is
--- whole. Returns how many runs it indexed.
function Store:build_run_index()
  return build_whole(self, "runs", "run_index", function(key, value)
    index_run(self, decode("runs", key, value))
  end)
end

--- The same for the outbox's lanes: every entry gets its lane key.
function Store:build_outbox_lanes()
  return build_whole(self, "outbox", "outbox_lanes", function(key, value)
    self.st:put("outbox_lanes", lane_key(decode("outbox", key, value).owner, key), "1")
  end)
end

--- build_run_index and build_outbox_lanes from anywhere: inside a task
--- they run there, else in a run of their own (the CLI's commands, the
--- server's start). Returns how many runs were indexed.
function Store:ensure_run_index()
  local function build()
    self:build_outbox_lanes()
    self:build_held()
    return self:build_run_index()
  end
  if core.run_id() then
    return build()
  end
  -- trusted work, linear in the runs: no instruction budget or memory cap
  local ok, n = core.run({ instructions = 0, memory = 0, cpu_ms = 0 }, build)
  if not ok then
    error(n, 0)
  end
  return n
end

-- ---- what each workflow holds -------------------------------------------------
--
-- One workflow's runs could fill storage.max_size_mb (many runs near
-- limits.run_record_bytes each, or thousands of outbox entries with big
-- inputs), and every other workflow then answered 507. So the bytes each
-- workflow holds are counted — its runs' records and journals, the outbox
-- and DLQ entries its runs enqueued — in meta "held\0" .. workflow, written
-- with the writes that change them (the same group commit), and a workflow
-- past its share (storage.workflow_share_mb) starts and writes no more.
-- The counts are in memory too: reading one is a table lookup.

local HELD = "held\0"

-- ---- counts shared with other processes ---------------------------------------
--
-- LMDB lets several processes use the folder at once: the CLI (`chorus dlq
-- drop`, `dlq replay`, `runs cancel`) writes to it while a server runs.
-- The server keeps what each workflow holds and each lane's entries in
-- memory and writes the absolute count with each commit, so a count the
-- CLI wrote was overwritten by the server's next write (a dropped DLQ
-- entry's bytes were never given back: the share drifted up to 507). So
-- only the process holding serve.lock (Store:lock) writes those counts; a
-- guest writes each change as a delta row of its own (meta "heldd\0" and
-- "laned\0": wf .. "\0" .. uuid → the change), in the write transaction of
-- the change, and the owner folds the rows in (absorb_counts: adds each to
-- its count and deletes it, in one commit; the server does it every
-- second). A process reading the counts from the folder adds the rows not
-- folded in yet.
local DELTAS = { held = "heldd\0", lanes = "laned\0" }

-- The rows of a delta kind: { {key, name, n} } (name: its workflow or lane).
local function delta_rows(self, kind)
  local prefix, out = DELTAS[kind], {}
  for _, row in ipairs(self.st:scan("meta", { prefix = prefix, limit = math.maxinteger })) do
    local name = row[1]:sub(#prefix + 1):match("^(.*)%z[^%z]*$")
    local n = math.tointeger(tonumber(row[2]))
    if name and n then
      out[#out + 1] = { row[1], name, n }
    end
  end
  return out
end

-- A guest's change by of name's count (kind: "held" or "lanes"), put in
-- the batch the change goes into (the store hands a batch to its writer
-- once a loop turn, whoever commits): one row per name and batch, put
-- again with the sum as it changes (the writer applies the last put of a
-- key only), not one per write (a `chorus run --data` journals every
-- effect). Summed until the caller committed, a change the loop's own
-- commit took went without its row: a kill then lost it for good.
local function put_delta(self, kind, name, by)
  local batch = self.st:batch()
  local pending = self.deltas_pending
  if not pending or pending.batch ~= batch then
    pending = { batch = batch, held = {}, lanes = {} }
    self.deltas_pending = pending
  end
  local row = pending[kind][name]
  if not row then
    row = { key = DELTAS[kind] .. name .. "\0" .. core.uuid(), n = 0 }
    pending[kind][name] = row
  end
  row.n = row.n + by
  self.st:put("meta", row.key, tostring(row.n))
end

-- The owner takes the delta rows of kind it has not taken yet: each row is
-- deleted with this batch and remembered until its delete is committed
-- (a read before then still shows it). Returns { {key, name, n} }.
local function take_deltas(self, kind)
  local all = self.deltas_taken or {}
  self.deltas_taken = all
  local taken = all[kind] or {}
  all[kind] = taken
  local out, seen = {}, {}
  for _, row in ipairs(delta_rows(self, kind)) do
    seen[row[1]] = true
    if not taken[row[1]] then
      taken[row[1]] = true
      self.st:del("meta", row[1])
      out[#out + 1] = row
    end
  end
  for key in pairs(taken) do -- deleted for good: no longer remembered
    if not seen[key] then
      taken[key] = nil
    end
  end
  return out
end

-- Sets workflow wf's held count to n (the owner: the store's counter puts
-- its last value into the commit, once).
local function put_held(self, wf, n)
  local slots = self.held_slots
  if not slots then
    slots = {}
    self.held_slots, self.held_nslots = slots, 0
  end
  local slot = slots[wf]
  if not slot then
    slot = self.held_nslots
    slots[wf], self.held_nslots = slot, slot + 1
  end
  if slot <= 65535 then
    self.st:counter(slot, HELD .. wf, n)
  else -- (more workflows than counters: a put each)
    self.st:put("meta", HELD .. wf, tostring(n))
  end
end

-- What each workflow holds: read once from meta (with the guests' deltas:
-- the owner takes them now), kept from then on.
local function held_table(self)
  local held = self.held_bytes
  if not held then
    held = {}
    for _, row in ipairs(self.st:scan("meta", { prefix = HELD, limit = math.maxinteger })) do
      local n = math.tointeger(tonumber(row[2])) or 0
      held[row[1]:sub(#HELD + 1)] = n > 0 and n or nil
    end
    local rows = self.guest and delta_rows(self, "held") or take_deltas(self, "held")
    for _, row in ipairs(rows) do
      local n = math.max((held[row[2]] or 0) + row[3], 0)
      held[row[2]] = n > 0 and n or nil
    end
    self.held_bytes = held
    if not self.guest then
      for _, row in ipairs(rows) do
        put_held(self, row[2], held[row[2]] or 0)
      end
    end
  end
  return held
end

--- Adds by bytes (negative: gives back) to what workflow wf holds. The
--- count goes to the folder with the write that changed it: the store's
--- counter (store:counter) writes the last count of each commit, once; a
--- guest's change goes as a delta row.
function Store:hold(wf, by)
  if type(wf) ~= "string" or by == 0 then
    return
  end
  local held = held_table(self)
  local n = math.max((held[wf] or 0) + by, 0) -- (a count an older chorus left short)
  held[wf] = n > 0 and n or nil
  if self.guest then
    put_delta(self, "held", wf, by)
  else
    put_held(self, wf, n)
  end
end

--- The owner of the counts folds in the changes guests made since it last
--- looked (what each workflow holds, each lane's entries); the caller
--- commits. Returns how many it took.
function Store:absorb_counts()
  if self.guest or self.memory then
    return 0
  end
  held_table(self) -- (a first read takes them itself)
  local held = take_deltas(self, "held")
  for _, row in ipairs(held) do
    self:hold(row[2], row[3])
  end
  local lanes = take_deltas(self, "lanes")
  for _, row in ipairs(lanes) do
    self:lane_changed(row[2], row[3])
  end
  return #held + #lanes
end

--- The bytes workflow wf holds in the folder.
function Store:held(wf)
  return held_table(self)[wf] or 0
end

--- { workflow = bytes } of every workflow that holds some (read-only).
function Store:held_all()
  return held_table(self)
end

--- The share one workflow may hold, in bytes, of storage config conf
--- (storage.workflow_share_mb, by config.share's rule: half of max_size_mb
--- by default), or nil for none.
function store.share_bytes(conf)
  conf = conf or {}
  local max = math.max(conf.max_size_mb or 8192, conf.map_size_mb or 0)
  local share = require("chorus.config").share(max, conf.workflow_share_mb)
  return share and share * 1024 * 1024
end

--- Whether workflow wf holds its share (self.share, set by the server) or more.
function Store:over_share(wf)
  local share = self.share
  return share ~= nil and wf ~= nil and (held_table(self)[wf] or 0) >= share
end

-- The bytes of run id's journal entries in the folder, and how many there are.
local function journal_bytes(self, id)
  local bytes, rows = 0, self.st:scan("journal", { prefix = id, limit = math.maxinteger })
  for _, row in ipairs(rows) do
    bytes = bytes + #row[2]
  end
  return bytes, #rows
end

local accounts

--- The bytes of run id's journal, all of its entries: what a resumed run's
--- record cap starts from (chorus.journal). Its account's count: what the
--- folder held when this process first wrote the run or read its journal
--- (Store:journal), and what it has written since.
function Store:journal_bytes(id)
  return self:run_account(id).jn
end

-- The runs this process writes: run id → { wf =, rec = bytes of its
-- record, jn = of its journal }, from their first record to their end
-- (Store:run_settled). A run it did not start (resumed after a restart,
-- redriven, cancelled, swept) is read from the folder the first time.
function accounts(self)
  local a = self.run_accounts
  if not a then
    a = {}
    self.run_accounts = a
  end
  return a
end

function Store:new_run_account(id, wf)
  local a = { wf = type(wf) == "string" and wf or nil, rec = 0, jn = 0 }
  accounts(self)[id] = a
  return a
end

--- What the folder holds of run id (committed), as an account.
function Store:run_account(id, wf)
  local all = accounts(self)
  local a = all[id]
  if a then
    return a
  end
  local text = self.st:get("runs", id)
  if type(wf) ~= "string" and text then
    local summary = self:run_summary(id)
    wf = summary and summary.workflow
    if type(wf) ~= "string" then
      local ok, rec = pcall(json.decode, text)
      wf = ok and type(rec) == "table" and rec.workflow or nil
    end
  end
  -- its journal's bytes as Store:journal last counted them (a resumed
  -- run's: no write of this process to it since, or its account would be
  -- here), else counted now
  local read = self.journal_read
  local jn = read and read[id]
  if jn then
    read[id] = nil
  else
    jn = journal_bytes(self, id)
  end
  a = { wf = type(wf) == "string" and wf or nil, rec = text and #text or 0, jn = jn }
  all[id] = a
  return a
end

--- Sets part ("rec" or "jn") of run account a to bytes; its workflow
--- holds the difference.
function Store:hold_run(a, part, bytes)
  if not bytes then
    return
  end
  local by = bytes - a[part]
  a[part] = bytes
  if a.wf then
    self:hold(a.wf, by)
  end
end

--- bytes more in run id's journal.
function Store:journaled(id, bytes)
  if bytes then
    local a = self:run_account(id)
    self:hold_run(a, "jn", a.jn + bytes)
  end
end

--- Run id has written its last records: its account is dropped (a later
--- write reads the folder again).
function Store:run_settled(id)
  if self.run_accounts then
    self.run_accounts[id] = nil
  end
  if self.journal_read then
    self.journal_read[id] = nil
  end
end

--- The sweep deletes run rec's record (size bytes): its journal goes too
--- (kept for a redrive, or a child's outcome), and what the workflow held
--- of both is given back.
function Store:release_run(rec, size)
  local id = rec.id
  local a = accounts(self)[id]
  local journal, entries = journal_bytes(self, id)
  if entries > 0 then
    self.st:del_prefix("journal", id)
  end
  if a then
    self:hold_run(a, "jn", 0)
    self:hold_run(a, "rec", 0)
  elseif type(rec.workflow) == "string" then
    self:hold(rec.workflow, -(size + journal))
  end
  self:run_settled(id)
end

--- Counts what every workflow holds in a folder an older chorus wrote (its
--- runs' records and journals; outbox entries from before are not
--- counted, nor given back), unless meta.held says it is counted. A count
--- cut short (meta.held = "0") starts again from nothing.
function Store:build_held()
  if self.memory or self.st:get("meta", "held") == "1" then
    return 0
  end
  for wf in pairs(held_table(self)) do
    self:hold(wf, -self:held(wf))
  end
  return build_whole(self, "runs", "held", function(key, value)
    local ok, rec = pcall(json.decode, value)
    local wf = ok and type(rec) == "table" and type(rec.workflow) == "string" and rec.workflow or nil
    self:hold(wf, #value + journal_bytes(self, key))
  end)
end

-- ---- journal ------------------------------------------------------------

local function journal_key(run_id, seq)
  return run_id .. string.pack(">I4", seq)
end

--- Queues a journal entry; returns its bytes, or nil and its size when
--- that is over max (nothing queued: the run's record cap).
function Store:put_effect(run_id, seq, entry, max)
  forget(self, run_id)
  local bytes, size = self.st:put_json("journal", journal_key(run_id, seq), entry, max)
  if bytes then
    self:journaled(run_id, bytes)
  end
  return bytes, size
end

-- Seq 0 of a failed run's journal keeps what a redrive needs and its record
-- does not hold whole: the input and ctx.request (the record masks them).
local REDRIVE_SEQ = string.pack(">I4", 0)

function Store:put_redrive(run_id, value)
  forget(self, run_id)
  self:journaled(run_id, self:put_json("journal", run_id .. REDRIVE_SEQ, value))
end

function Store:get_redrive(run_id)
  return self:get_json("journal", run_id .. REDRIVE_SEQ)
end

-- The last seq of a child run's journal keeps its outcome as it was, when
-- its record masks it (the workflow's redact paths): the parent that finds
-- it finished after a restart takes that, as a parent that waited did. It
-- goes with the record (chorus.sweep drops the journal then).
local OUTCOME_SEQ = string.pack(">I4", 0xFFFFFFFF)

function Store:put_outcome(run_id, value)
  forget(self, run_id)
  self:journaled(run_id, self:put_json("journal", run_id .. OUTCOME_SEQ, value))
end

function Store:get_outcome(run_id)
  return self:get_json("journal", run_id .. OUTCOME_SEQ)
end

--- The recorded effects of a run, in sequence order. The bytes of every
--- row of its journal are counted in the same walk and kept for its
--- account (run_account, Store:journal_bytes): a resumed run's record cap
--- and its workflow's count start from them without a second walk.
function Store:journal(run_id)
  local out, bytes = {}, 0
  for _, row in ipairs(self.st:scan("journal", { prefix = run_id, limit = math.maxinteger })) do
    local key, value = row[1], decode("journal", row[1], row[2])
    bytes = bytes + #row[2]
    -- not a longer id sharing the prefix, nor the redrive entry (seq 0)
    -- or the outcome
    local seq = key:sub(-4)
    if #key == #run_id + 4 and seq ~= REDRIVE_SEQ and seq ~= OUTCOME_SEQ then
      out[#out + 1] = value
    end
  end
  local read = self.journal_read or {}
  self.journal_read, read[run_id] = read, bytes
  return out
end

-- Run ids are UUIDs, all 36 characters: no id is a prefix of another.
function Store:drop_journal(run_id)
  forget(self, run_id)
  self:hold_run(self:run_account(run_id), "jn", 0)
  self.st:del_prefix("journal", run_id)
end

-- ---- idempotency ----------------------------------------------------------

local function idem_key(workflow, key)
  return workflow .. "\0" .. key
end
store.idem_key = idem_key

function Store:get_idempotency(workflow, key)
  return self:get_json("idempotency", idem_key(workflow, key))
end

-- The workflow whose share a key record of scope (workflow, or
-- workflow .. "@" .. caller; names hold neither "@" nor "\0") counts in.
local function idem_owner(scope)
  return scope:match("^[^@\0]*")
end

--- The key record under key k (its stored text, or decoded and size bytes)
--- is deleted or replaced: what it held is its workflow's again. A record
--- an older chorus wrote (no held mark) was never counted: nothing back.
function Store:release_idempotency(k, value, size)
  local rec = value
  if type(value) == "string" then
    local ok, decoded = pcall(json.decode, value)
    rec, size = ok and decoded, #value
  end
  if type(rec) == "table" and rec.held == true and math.type(size) == "integer" then
    self:hold(idem_owner(k), -size)
  end
end

--- Queues the key record. The record with the response to replay (as big
--- as a run's record, kept for the key's ttl) counts in its workflow's
--- share (storage.workflow_share_mb), marked held; a new run of the key
--- (state running: its first record) replaces what the folder holds of it
--- (expired, or a failed run's before a redrive), which is given back.
function Store:put_idempotency(workflow, key, rec)
  local k = idem_key(workflow, key)
  if rec.state == "running" then
    self:release_idempotency(k, self.st:get("idempotency", k))
  end
  if rec.response ~= nil then
    rec.held = true
    self:hold(idem_owner(workflow), self:put_json("idempotency", k, rec))
  else
    self:put_json("idempotency", k, rec)
  end
end

function Store:del_idempotency(workflow, key)
  self.st:del("idempotency", idem_key(workflow, key))
end

--- One step of an incremental sweep of db: looks at up to limit records
--- from key `from` on, deletes those expired(value, size, key) says, and
--- returns how many it deleted and where the next step starts (nil: from
--- the top).
function Store:sweep(db, from, limit, expired)
  local rows = self.st:scan(db, { from = from, limit = limit + 1 })
  local n = 0
  for i = 1, math.min(#rows, limit) do
    local ok, value = pcall(json.decode, rows[i][2])
    if ok and expired(value, #rows[i][2], rows[i][1]) then
      self.st:del(db, rows[i][1])
      n = n + 1
    end
  end
  return n, rows[limit + 1] and rows[limit + 1][1] or nil
end

-- ---- outbox and dlq ---------------------------------------------------------

--- An entry its workflow's run enqueues is counted in what the workflow
--- holds (entry.held: its bytes as first written, kept in the entry so its
--- removal gives back the same) until it is delivered, or its DLQ entry
--- dropped.
function Store:put_outbox(entry)
  local key = outbox_key(entry.due, entry.id)
  if entry.held == nil and type(entry.owner) == "string" then
    -- encoded once: its size, then the same text with the size added
    local text = json.encode(entry)
    entry.held = #text
    self:hold(entry.owner, entry.held)
    self.st:put("outbox", key, ('%s,"held":%d}'):format(text:sub(1, -2), entry.held))
  else
    self:put_json("outbox", key, entry)
  end
  self.st:put("outbox_lanes", lane_key(entry.owner, key), "1")
end

--- Deletes the entry { due, id, owner } (its lane key with it).
function Store:del_outbox(entry)
  local key = outbox_key(entry.due, entry.id)
  self.st:del("outbox", key)
  self.st:del("outbox_lanes", lane_key(entry.owner, key))
end

-- The lanes of the outbox in name order (one seek each).
local function lanes(self)
  local out, from = {}, nil
  while true do
    local row = self.st:scan("outbox_lanes", { from = from, limit = 1 })[1]
    if not row then
      return out
    end
    local lane = row[1]:sub(1, row[1]:find("\0", 1, true) - 1)
    out[#out + 1] = lane
    from = lane .. "\1" -- past every key of this lane
  end
end

-- The keys (outbox keys) of the first limit entries of lane due by now,
-- in due order, skipping the ids in skip; at most limit + skip_count keys
-- looked at.
local function lane_due(self, lane, now, limit, skip, skip_count)
  local prefix = lane .. "\0"
  local rows = self.st:scan("outbox_lanes", { prefix = prefix,
    to = prefix .. string.pack(">I8", math.floor(now * 1000) + 1), limit = limit + (skip_count or 0) })
  local out = {}
  for _, row in ipairs(rows) do
    local key = row[1]:sub(#prefix + 1)
    if not (skip and skip[key:sub(9)]) then
      out[#out + 1] = { row[1], key }
      if #out == limit then
        break
      end
    end
  end
  return out
end

--- Entries due at or before now: at most limit of them, round-robin across
--- the lanes (one per lane per round, each lane in due order), starting
--- with the lane after `after` (the one the relay served last), so one
--- workflow's backlog delays another's due entries by at most one entry per
--- lane. Skips (without decoding) the ids in skip; skip_count: how many
--- there are, or a table lane → how many of them are in that lane. Each
--- lane gives at most its share of limit (rounded up) in one look: the
--- relay looks again as soon as it started any.
function Store:due_outbox(now, limit, skip, skip_count, after)
  local memory = require "chorus.outbox_memory"
  local names = memory.rotate(lanes(self), after)
  local share = math.ceil(limit / math.max(1, #names))
  local lists = {}
  for _, lane in ipairs(names) do
    local skipped = type(skip_count) == "table" and (skip_count[lane] or 0) or skip_count
    local list = lane_due(self, lane, now, share, skip, skipped)
    if list[1] then
      lists[#lists + 1] = list
    end
  end
  local out = {}
  for _, pick in ipairs(memory.interleave(lists, limit)) do
    local text = self.st:get("outbox", pick[2])
    if text then
      out[#out + 1] = decode("outbox", pick[2], text)
    else -- a lane key whose entry is gone (a chorus without lanes deleted it)
      self.st:del("outbox_lanes", pick[1])
    end
  end
  return out
end

--- Counts the outbox's entries of every lane (from outbox_lanes, keys
--- only): the server does it at its start, before any run or delivery can
--- change them, and keeps the counts from then on (lane_changed).
function Store:count_lanes()
  -- A guest's change committed before the count is in it: dropped, not
  -- added; one committed after it is folded in later (absorb_counts). The
  -- rows taken and the lanes scanned are read from one committed state
  -- (store:snapshot): read apart, a replay committed between the two reads
  -- was in the scan and folded in again (its lane one too many until the
  -- next start).
  local counts = self.st:snapshot(function()
    take_deltas(self, "lanes")
    local out, from = {}, nil
    repeat
      local rows = self.st:scan("outbox_lanes", { from = from, limit = BUILD_BATCH + 1 })
      for i = 1, math.min(#rows, BUILD_BATCH) do
        local key = rows[i][1]
        local lane = key:sub(1, key:find("\0", 1, true) - 1)
        out[lane] = (out[lane] or 0) + 1
      end
      from = rows[BUILD_BATCH + 1] and rows[BUILD_BATCH + 1][1]
    until not from
    return out
  end)
  self.lane_counts, self.lanes_counted = counts, true
  return counts
end

--- How many entries workflow owner has in the outbox: as count_lanes
--- counted them and this process changed them since; without count_lanes
--- (the CLI, specs), the lane is counted the first time it is asked for.
function Store:lane_pending(owner)
  self.lane_counts = self.lane_counts or {}
  local n = self.lane_counts[owner]
  if not n and self.lanes_counted then
    return 0
  elseif not n then
    n = 0
    local prefix, from = owner .. "\0", nil
    repeat
      local rows = self.st:scan("outbox_lanes", { prefix = prefix, from = from, limit = BUILD_BATCH + 1 })
      n = n + math.min(#rows, BUILD_BATCH)
      from = rows[BUILD_BATCH + 1] and rows[BUILD_BATCH + 1][1]
    until not from
    self.lane_counts[owner] = n
  end
  return math.max(n, 0)
end

--- An entry of lane owner was added (by = 1) or removed (-1).
function Store:lane_changed(owner, by)
  if self.guest then -- the server counts it when it folds this in
    put_delta(self, "lanes", owner, by)
  end
  local counts = self.lane_counts
  local n = counts and (counts[owner] or (self.lanes_counted and 0 or nil))
  if n then
    -- below 0 for a while: an entry a guest added (`dlq replay`) can be
    -- delivered here before the guest's +1 is folded in
    n = n + by
    counts[owner] = n ~= 0 and n or nil
  end
end

-- What an entry shows of its data, masked by the redact paths of the run
-- that made it (chorus.redact).
local SHOWN = { "input", "request", "steps" }

local function masked(list)
  for i, e in ipairs(list) do
    list[i] = redact.fields(e, e.redact, SHOWN)
  end
  return list
end

--- The creation times (else due times) of the first limit outbox entries in
--- due order: an entry backing off moves back in it, so the oldest is found
--- by looking. A record that does not decode counts by its key's due time.
function Store:outbox_created(limit)
  local out = {}
  for i, row in ipairs(self.st:scan("outbox", { limit = limit })) do
    local ok, e = pcall(json.decode, row[2])
    out[i] = ok and type(e) == "table" and tonumber(e.created or e.due) or string.unpack(">I8", row[1]) / 1000
  end
  return out
end

--- The workflow entries marked started (their run was under way), whole:
--- recovery writes them back, so they must not be the redacted listing.
function Store:started_outbox()
  local out = {}
  for _, e in ipairs(values(self, "outbox")) do
    if e.state == "started" then
      out[#out + 1] = e
    end
  end
  return out
end

--- Outbox entries in due order, for listings (redacted).
function Store:list_outbox(limit)
  return masked(values(self, "outbox", limit))
end

function Store:put_dlq(entry)
  self:put_json("dlq", entry.id, entry)
end

function Store:get_dlq(id)
  return self:get_json("dlq", id)
end

--- entry: the DLQ entry (nil: read here), for what its workflow holds.
function Store:del_dlq(id, entry)
  entry = entry or self:get_dlq(id)
  if type(entry) == "table" then
    self:release_entry(entry)
  end
  self.st:del("dlq", id)
end

--- An outbox or DLQ entry goes: what it held is its workflow's again.
function Store:release_entry(entry)
  if type(entry.owner) == "string" and math.type(entry.held) == "integer" then
    self:hold(entry.owner, -entry.held)
  end
end

--- Moves a dead entry back to the outbox, due now with fresh attempts.
--- Returns the entry, or nil when there is no such id. Caller commits.
function Store:replay_dlq(id, now)
  local e = self:get_dlq(id)
  if not e then
    return nil
  end
  e.attempts, e.state, e.failed_at = 0, nil, nil
  e.due = now
  e.replayed = (e.replayed or 0) + 1
  self.st:del("dlq", id) -- it stays held: the entry moves
  self:put_outbox(e)
  self:lane_changed(e.owner or "", 1)
  local run_id = e.from_run or e.run_id -- the run's record shows it pending again
  local row = run_id and self:get_json("deliveries", run_id .. id)
  if row then
    row.state, row.attempts, row.last_error, row.settled = "pending", 0, nil, nil
    self:put_delivery(run_id, row)
  end
  return e
end

function Store:list_dlq(limit)
  return masked(values(self, "dlq", limit))
end

-- ---- deliveries -------------------------------------------------------------

-- Run ids are UUIDs, all 36 characters: no id is a prefix of another.
function Store:put_delivery(run_id, row)
  self:put_json("deliveries", run_id .. row.id, row)
end

--- What became of the outbox entries run_id enqueued, as put_delivery
--- last wrote them (in entry id order).
function Store:deliveries(run_id)
  local out = {}
  for _, row in ipairs(self:scan_json("deliveries", { prefix = run_id, limit = math.maxinteger })) do
    out[#out + 1] = row.value
  end
  return out
end

function Store:drop_deliveries(run_id)
  self.st:del_prefix("deliveries", run_id)
end

-- ---- schedules ----------------------------------------------------------------

function Store:put_schedule(name, rec)
  self:put_json("schedules", name, rec)
end

function Store:get_schedule(name)
  return self:get_json("schedules", name)
end

function Store:del_schedule(name)
  self.st:del("schedules", name)
end

--- Every stored schedule, in name order: { name = rec }.
function Store:schedules()
  local out = {}
  for _, row in ipairs(self:scan_json("schedules", { limit = math.maxinteger })) do
    out[row.key] = row.value
  end
  return out
end

-- ---- scripts ------------------------------------------------------------------

function Store:put_script(hash, source)
  self.st:put("scripts", hash, source)
end

function Store:get_script(hash)
  return self.st:get("scripts", hash)
end

return store
