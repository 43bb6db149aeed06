-- chorus.store on a real LMDB folder: records, the outbox's due order, DLQ
-- replay, and the incremental sweep that keeps the folder from growing.
local core = require "chorus.core"
local store = require "chorus.store"

local function temp_dir()
  local dir = os.tmpname()
  os.remove(dir)
  return dir
end

describe("chorus.store", function()
  local dir, st

  before_each(function()
    dir = temp_dir()
    st = assert(store.open(dir))
  end)

  after_each(function()
    st:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  -- runs fn inside a run, where commit() can wait for the disk
  local function committed(fn)
    local ok, err = core.run(nil, function()
      fn()
      st:commit()
    end)
    assert(ok, tostring(err))
  end

  it("keeps run records, and lists the newest first", function()
    committed(function()
      st:put_run({ id = "a", status = "succeeded", started = 1 })
      st:put_run({ id = "b", status = "running", started = 2 })
    end)
    assert.are.equal("running", st:get_run("b").status)
    local list = st:find_runs(store.ALL_RUNS, { limit = 10 })
    assert.are.same({ "b", "a" }, { list[1].id, list[2].id })
    assert.are.equal("running", list[1].summary.status)
  end)

  it("hands out due outbox entries in due order, skipping the ones in flight", function()
    committed(function()
      st:put_outbox({ id = "late", due = 30 })
      st:put_outbox({ id = "early", due = 10 })
      st:put_outbox({ id = "mid", due = 20 })
      st:put_outbox({ id = "future", due = 1000 })
    end)
    local due = st:due_outbox(100, 10)
    assert.are.same({ "early", "mid", "late" }, { due[1].id, due[2].id, due[3].id })
    due = st:due_outbox(100, 10, { early = true }, 1)
    assert.are.same({ "mid", "late" }, { due[1].id, due[2].id })
  end)

  it("replays a DLQ entry into the outbox with fresh attempts", function()
    committed(function() st:put_dlq({ id = "d1", due = 5, attempts = 8, last_error = { kind = "http" } }) end)
    committed(function() assert.are.equal("d1", st:replay_dlq("d1", 50).id) end)
    assert.is_nil(st:get_dlq("d1"))
    local e = st:due_outbox(60, 10)[1]
    assert.are.equal(0, e.attempts)
    assert.are.equal(1, e.replayed)
    assert.is_nil(st:replay_dlq("nope", 50))
  end)

  it("sweeps expired records step by step, resuming where it stopped", function()
    committed(function()
      for i = 1, 10 do
        st:put_run({ id = ("r%02d"):format(i), status = i % 2 == 0 and "succeeded" or "running", finished = i })
      end
    end)
    local old = function(rec) return rec.status ~= "running" and rec.finished < 100 end
    local deleted, from = 0, nil
    local steps = 0
    repeat
      local n
      committed(function() n, from = st:sweep("runs", from, 3, old) end)
      deleted = deleted + n
      steps = steps + 1
    until from == nil
    assert.are.equal(4, steps)
    assert.are.equal(5, deleted)
    assert.are.equal(5, #st:find_runs(store.ALL_RUNS, { limit = 100 })) -- the running ones stay
    assert.are.equal(0, #st:find_runs(store.status_key("succeeded"), { limit = 100 })) -- out of the index too
  end)

  it("raises naming the database and key for a value that is not JSON, and verify lists it", function()
    committed(function()
      st:put_run({ id = "fine" })
      st.st:put("runs", "bad\1", "{oops")
    end)
    assert.are.equal("fine", st:get_run("fine").id)
    local ok, err = pcall(st.get_run, st, "bad\1")
    assert.is_false(ok)
    assert.matches("corrupt record in database runs, key 'bad\\x01': not JSON", err, 1, true)
    local report = st:verify()
    assert.are.equal(2, report.counts.runs)
    assert.are.equal(1, report.counts.meta)
    assert.are.equal(1, #report.bad)
    assert.are.same({ "runs", "bad\1", "not JSON" }, { report.bad[1].db, report.bad[1].key, report.bad[1].why })
    assert.matches("corrupt record in database runs, key 'bad\\x01': not JSON", report.bad[1].message, 1, true)
  end)

  it("opens with map_size_mb and max_size_mb, and tells a full folder's error apart", function()
    st:close()
    os.execute("rm -rf '" .. dir .. "'")
    st = assert(store.open(dir, { map_size_mb = 1, max_size_mb = 3 }))
    local s = st:stats()
    assert.are.same({ 1048576, 3145728, 0, false }, { s.map_size, s.max_size, s.grows, s.full })
    committed(function() st.st:put("scripts", "big", ("x"):rep(1536 * 1024)) end)
    s = st:stats()
    assert.is_true(s.grows >= 1 and s.map_size > 1048576 and s.map_size <= 3145728)
    local ok, err = core.run(nil, function()
      st.st:put("scripts", "bigger", ("y"):rep(4 * 1024 * 1024))
      st:commit()
    end)
    assert.is_false(ok)
    assert.is_true(store.is_full(err))
    assert.is_true(st:stats().full)
    assert.is_false(store.is_full("store: write to runs failed: MDB_BAD_VALSIZE"))
  end)

  it("frees an abandoned key for a retry though its stored record says running", function()
    local idempotency = require "chorus.idempotency"
    committed(function() idempotency.begin(st, "wf", "k1", "fp", "run-1") end)
    idempotency.release("wf", "k1") -- as after a restart: only the stored record
    assert.are.equal("conflict", idempotency.check(st, "wf", "k1", "fp"))
    idempotency.begin(st, "wf", "k1", "fp", "run-1")
    assert.are.equal("conflict", idempotency.check(st, "wf", "k1", "fp")) -- in flight
    idempotency.abandon(st, "wf", "k1", "run-1") -- its end could not be stored
    assert.are.equal("new", idempotency.check(st, "wf", "k1", "fp"))
    committed(function() end) -- the queued delete lands
    assert.is_nil(st:get_idempotency("wf", "k1"))
    -- a new run of the key holds it again
    committed(function() idempotency.begin(st, "wf", "k1", "fp", "run-2") end)
    idempotency.release("wf", "k1")
    assert.are.equal("conflict", idempotency.check(st, "wf", "k1", "fp"))
  end)

  describe("what each workflow holds (storage.workflow_share_mb)", function()
    local json = core.json

    it("defaults the share to half of max_size_mb; 0 or the whole folder is no share", function()
      assert.are.equal(4096 * 1024 * 1024, store.share_bytes(nil))
      assert.are.equal(16 * 1024 * 1024, store.share_bytes({ max_size_mb = 32 }))
      assert.are.equal(3 * 1024 * 1024, store.share_bytes({ max_size_mb = 32, workflow_share_mb = 3 }))
      assert.is_nil(store.share_bytes({ max_size_mb = 32, workflow_share_mb = 0 }))
      assert.is_nil(store.share_bytes({ max_size_mb = 32, workflow_share_mb = 32 }))
    end)

    it("counts a run's record and journal, and gives them back when the sweep takes them", function()
      local id = core.uuid7()
      local first = { id = id, workflow = "a", status = "running", started = 1 }
      local final = { id = id, workflow = "a", status = "failed", started = 1, finished = 2,
        error = { kind = "x", message = ("e"):rep(5000) } }
      local effect = { step = "s1", kind = "http", ok = true, value = ("v"):rep(3000) }
      local redrive = { input = { pad = ("i"):rep(2000) } }
      committed(function()
        st:put_run(first, true)
        st:put_effect(id, 1, effect)
      end)
      assert.are.equal(#json.encode(first) + #json.encode(effect), st:held("a"))
      local text = json.encode(final)
      committed(function()
        st:put_run_text(id, text, final)
        st:put_redrive(id, redrive) -- a failed run keeps its journal
        st:run_settled(id)
      end)
      local held = #text + #json.encode(effect) + #json.encode(redrive)
      assert.are.equal(held, st:held("a"))
      assert.are.equal(0, st:held("b"))
      -- kept in the folder: another process reads the same count
      st:close()
      st = assert(store.open(dir))
      assert.are.equal(held, st:held("a"))
      assert.are.equal(held, st:held_all().a)
      committed(function()
        assert.are.equal(1, st:sweep("runs", nil, 10, function(rec, size)
          st:release_run(rec, size)
          return true
        end))
      end)
      assert.are.equal(0, st:held("a"))
      assert.are.same({}, st:journal(id))
    end)

    it("counts a key's stored response until the sweep takes it or a new run of the key replaces it", function()
      local idempotency = require "chorus.idempotency"
      local answer = { status = 200, headers = {}, body = ("r"):rep(6000) }
      local function stored(scope, key)
        return #st.st:get("idempotency", store.idem_key(scope, key))
      end
      committed(function() idempotency.begin(st, "a", "k1", "fp", "run-1") end)
      assert.are.equal(0, st:held("a")) -- its first record: no response yet
      committed(function() idempotency.finish(st, "a", "k1", "fp", "run-1", nil, answer) end)
      local one = stored("a", "k1")
      assert.is_true(one > 6000)
      assert.are.equal(one, st:held("a"))
      -- a caller's own keys (scope workflow@caller) count in the workflow's share
      committed(function()
        idempotency.begin(st, "a@alice", "k1", "fp", "run-2")
        idempotency.finish(st, "a@alice", "k1", "fp", "run-2", nil, answer)
      end)
      local two = one + stored("a@alice", "k1")
      assert.are.equal(two, st:held("a"))
      assert.are.equal(0, st:held("a@alice"))
      -- kept in the folder: another process reads the same count
      st:close()
      st = assert(store.open(dir))
      assert.are.equal(two, st:held("a"))
      -- the key expired and is used again: the old response goes, the new counts
      committed(function()
        idempotency.begin(st, "a", "k1", "fp", "run-3")
        idempotency.finish(st, "a", "k1", "fp", "run-3", -1, { status = 200, headers = {}, body = "small" })
      end)
      assert.are.equal(two - one + stored("a", "k1"), st:held("a"))
      -- the sweep takes the expired ones: what they held is given back
      committed(function()
        assert.are.equal(2, st:sweep("idempotency", nil, 10, function(rec, size, key)
          st:release_idempotency(key, rec, size)
          return true
        end))
      end)
      assert.are.equal(0, st:held("a"))
      -- a record an older chorus stored was never counted: nothing given back
      committed(function()
        st:hold("a", 100)
        st:put_json("idempotency", store.idem_key("a", "old"), { state = "done", response = answer })
      end)
      committed(function() idempotency.begin(st, "a", "old", "fp", "run-4") end)
      assert.are.equal(100, st:held("a"))
    end)

    it("counts an outbox entry until it is delivered, a dead one until it is dropped", function()
      local e = { id = "e1", due = 10, owner = "a", input = { pad = ("p"):rep(4000) } }
      committed(function() st:put_outbox(e) end)
      local held = st:held("a")
      assert.is_true(held > 4000)
      committed(function() -- a retry moves it: nothing more held
        st:del_outbox({ due = 10, id = "e1", owner = "a" })
        e.due, e.attempts = 20, 1
        st:put_outbox(e)
      end)
      assert.are.equal(held, st:held("a"))
      committed(function()
        st:del_outbox(e)
        st:put_dlq(e)
      end)
      assert.are.equal(held, st:held("a"))
      committed(function() st:replay_dlq("e1", 30) end)
      assert.are.equal(held, st:held("a"))
      local back = st:due_outbox(100, 10)[1]
      committed(function()
        st:del_outbox(back)
        st:release_entry(back) -- delivered
      end)
      assert.are.equal(0, st:held("a"))
      committed(function()
        st:put_outbox({ id = "e2", due = 10, owner = "a", input = "x" })
      end)
      local dead = st:due_outbox(100, 10)[1]
      committed(function()
        st:del_outbox(dead)
        st:put_dlq(dead)
      end)
      assert.is_true(st:held("a") > 0)
      committed(function() st:del_dlq("e2") end)
      assert.are.equal(0, st:held("a"))
    end)

    it("takes a guest's changes (the CLI's, a server running) as deltas the owner folds in once", function()
      local e = { id = "g1", due = 10, owner = "a", input = { pad = ("p"):rep(4000) } }
      committed(function()
        st:put_outbox(e)
        st:del_outbox(e)
        st:put_dlq(e)
      end)
      local held = st:held("a")
      st:close()
      -- the CLI: `dlq replay g2`, `dlq drop g1` (no serve.lock)
      st = assert(store.open(dir))
      st.guest = true
      committed(function()
        st:put_dlq({ id = "g2", due = 10, owner = "b", attempts = 1 })
      end)
      committed(function()
        st:del_dlq("g1")
        st:replay_dlq("g2", 20)
      end)
      assert.are.equal(0, st:held("a"))
      st:close()
      -- the server: the absolute count is as the owner wrote it, the
      -- changes are folded in when it reads or absorbs them, once
      st = assert(store.open(dir))
      assert.is_true(st:lock())
      assert.are.equal(held, tonumber(st.st:get("meta", "held\0a")))
      committed(function() st:count_lanes() end)
      assert.are.equal(1, st:lane_pending("b")) -- (counted from outbox_lanes: the replay's delta dropped)
      assert.are.equal(0, st:held("a"))
      committed(function() assert.are.equal(0, st:absorb_counts()) end)
      assert.are.equal(0, st:held("a"))
      assert.are.equal(1, st:lane_pending("b"))
      assert.are.equal(0, #st.st:scan("meta", { prefix = "heldd\0" }))
      assert.are.equal(0, #st.st:scan("meta", { prefix = "laned\0" }))
      assert.are.equal(0, tonumber(st.st:get("meta", "held\0a")))
    end)

    -- A server's start counts the lanes (count_lanes) after taking the
    -- guests' lane rows. Read in two transactions, a `chorus dlq replay`
    -- committed between them was in the scan and folded in once more a
    -- second later: its lane counted one entry too many until the next start.
    it("counts a lane once when a guest's replay lands while the owner counts the lanes", function()
      committed(function()
        st:put_dlq({ id = "r1", due = 10, owner = "b", attempts = 3 })
      end)
      assert.is_true(st:lock())
      local real, replayed = st.st, false
      local chorus = (os.getenv("CHORUS_BUILD") or "build") .. "/chorus"
      st.st = setmetatable({
        scan = function(_, db, opts)
          if db == "outbox_lanes" and not replayed then -- the guest commits now, from its own process
            replayed = true
            assert(os.execute(("%s dlq replay r1 --data '%s' >/dev/null"):format(chorus, dir)))
          end
          return real:scan(db, opts)
        end,
      }, { __index = function(_, k)
        return function(_, ...) return real[k](real, ...) end
      end })
      committed(function() st:count_lanes() end)
      st.st = real
      assert.is_true(replayed)
      assert.are.equal(1, #real:scan("outbox_lanes", { prefix = "b\0" }))
      committed(function() assert.are.equal(1, st:absorb_counts()) end)
      assert.are.equal(1, st:lane_pending("b"))
      assert.are.equal(0, #real:scan("meta", { prefix = "laned\0" }))
    end)

    it("counts the runs of a folder an older chorus wrote, once", function()
      local id = core.uuid7()
      local rec = { id = id, workflow = "old", status = "failed", started = 1, finished = 2 }
      committed(function()
        st:put_run(rec, true)
        st:put_effect(id, 1, { step = "s", ok = true, value = "v" })
      end)
      local held = st:held("old")
      -- as an older chorus leaves it: no counts, no flag
      committed(function()
        st.st:del("meta", "held\0old")
        st.st:del("meta", "held")
      end)
      st:close()
      st = assert(store.open(dir))
      assert.are.equal(0, st:held("old"))
      committed(function() assert.are.equal(1, st:build_held()) end)
      assert.are.equal(held, st:held("old"))
      committed(function() assert.are.equal(0, st:build_held()) end)
      assert.are.equal(held, st:held("old"))
    end)
  end)

  it("refuses a data folder written by a newer schema", function()
    st:close()
    local raw = assert(core.store_open(dir))
    local ok = core.run(nil, function()
      raw:put("meta", "schema_version", "99")
      raw:commit()
    end)
    assert.is_true(ok)
    raw:close()
    local again, err = store.open(dir)
    assert.is_nil(again)
    assert.matches("schema version 99", err)
    os.execute("rm -rf '" .. dir .. "'")
    dir = temp_dir()
    st = assert(store.open(dir)) -- for after_each
  end)
end)
