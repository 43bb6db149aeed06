-- The run service (chorus.runs) and the store kept in memory it runs on in
-- specs (chorus.store_memory): what `chorus serve`, `chorus run` and
-- chorus.testing share.
local core = require "chorus.core"
local chorus = require "chorus"
local http = require "chorus.http"
local outbox = require "chorus.outbox"
local runs = require "chorus.runs"
local store = require "chorus.store"
local json = core.json

local T0 = 1767225600

-- A transport that answers 200 with the URL it got, counting its calls.
local function counting_transport(name)
  local t = { name = name, urls = {} }
  t.fn = function(o)
    t.urls[#t.urls + 1] = o.method .. " " .. o.url
    return 200, { ["content-type"] = "application/json" }, json.encode({ via = name }), 0.001
  end
  return t
end

local function in_loop(fn)
  core.set_clock("virtual", T0)
  local ok, value = core.run(nil, fn)
  core.set_clock("real")
  assert(ok, tostring(value))
  return value
end

local calls_two = chorus.workflow {
  name = "calls-two",
  run = function(ctx, input)
    local a = http.get(input.base .. "/a")
    ctx.log.info("between", { n = 1 })
    local b = http.get(input.base .. "/b")
    return { a = a.json.via, b = b.json.via }
  end,
}

describe("store.memory", function()
  it("shows writes only once committed, in key order, and a crash loses the uncommitted ones", function()
    local st = store.memory()
    st.st:put("runs", "b", "2")
    st.st:put("runs", "a", "1")
    assert.is_nil(st.st:get("runs", "a"))
    st:commit()
    assert.are.equal("1", st.st:get("runs", "a"))
    st.st:put("runs", "c", "3")
    st.st:crash()
    st:commit()
    assert.is_nil(st.st:get("runs", "c"))
    assert.are.same({ { "a", "1" }, { "b", "2" } }, st.st:scan("runs"))
  end)

  it("scans by prefix, from (inclusive), to (exclusive) and limit; deletes by prefix", function()
    local kv = store.memory().st
    for _, k in ipairs({ "r1\0\0\0\1", "r1\0\0\0\2", "r2\0\0\0\1", "r3" }) do
      kv:put("journal", k, k)
    end
    kv:commit()
    assert.are.equal(2, #kv:scan("journal", { prefix = "r1" }))
    assert.are.same({ { "r2\0\0\0\1", "r2\0\0\0\1" } }, kv:scan("journal", { from = "r2", to = "r3" }))
    assert.are.equal(1, #kv:scan("journal", { limit = 1 }))
    kv:del_prefix("journal", "r1")
    kv:commit()
    assert.are.equal(2, kv:count("journal"))
  end)

  it("refuses keys and values that are not strings, as the data folder does", function()
    assert.has_error(function() store.memory().st:put("runs", 1, "x") end,
      "store: db, key and value must be strings")
  end)

  it("holds the records chorus.store keeps: runs, timers, journals", function()
    local st = store.memory()
    st:put_run({ id = "run-1", status = "running" })
    st:put_timer("run-1", T0)
    st:put_effect("run-1", 1, { step = "r#1", kind = "now", target = "", ok = true, value = T0 })
    st:commit()
    assert.are.equal("running", st:get_run("run-1").status)
    assert.are.same({ { id = "run-1", deadline_at = T0 } }, st:unfinished())
    assert.are.equal(T0, st:journal("run-1")[1].value)
  end)
end)

describe("the run service", function()
  it("hands its environment down: each service's runs use its own transport and log sink", function()
    local t1, t2 = counting_transport("one"), counting_transport("two")
    local logs1, logs2 = {}, {}
    local s1 = runs.service({ transport = t1.fn, log_sink = function(l) logs1[#logs1 + 1] = l end })
    local s2 = runs.service({ transport = t2.fn, log_sink = function(l) logs2[#logs2 + 1] = l end })
    local out = in_loop(function()
      local r = {}
      local a = core.spawn(function() r[1] = { s1:start({ workflow = calls_two }, { base = "http://x.test" }) } end)
      local b = core.spawn(function() r[2] = { s2:start({ workflow = calls_two }, { base = "http://y.test" }) } end)
      core.await()
      core.await()
      assert(a and b)
      return r
    end)
    assert.is_true(out[1][1])
    assert.are.same({ a = "one", b = "one" }, out[1][2])
    assert.are.same({ a = "two", b = "two" }, out[2][2])
    assert.are.same({ "GET http://x.test/a", "GET http://x.test/b" }, t1.urls)
    assert.are.same({ "GET http://y.test/a", "GET http://y.test/b" }, t2.urls)
    assert.are.equal(1, #logs1)
    assert.are.equal(1, #logs2)
    assert.are.equal(out[1][3].id, logs1[1].run_id)
    -- nothing was swapped in the modules
    assert.are.equal(core.http, http.transport())
  end)

  it("keeps a finished record as JSON text, found by id", function()
    local t = counting_transport("one")
    local svc = runs.service({ transport = t.fn, log_sink = function() end })
    local rec = in_loop(function()
      local _, _, r = svc:start({ workflow = calls_two }, { base = "http://x.test" })
      return r
    end)
    local text = svc:lookup(rec.id)
    assert.are.equal("string", type(text))
    local decoded = json.decode(text)
    assert.are.equal("succeeded", decoded.status)
    assert.are.equal(2, #decoded.timeline)
    assert.is_nil(svc.running[rec.id])
  end)

  -- Without a data folder a finished record lives only in memory: one
  -- workflow's many runs pushed every other workflow's records out.
  it("keeps finished records in the share of the workflow their runs are charged to", function()
    local child = { workflow = chorus.workflow { name = "child", run = function() return "c" end }, hash = "child" }
    local parent = chorus.workflow { name = "parent", run = function(ctx)
      ctx.call("child", {})
      ctx.call("child", {})
      return "p"
    end }
    local big = chorus.workflow { name = "big", run = function() return ("x"):rep(5000) end }
    local svc = runs.service({ log = function() end, log_sink = function() end, max_records = 10,
      config = { limits = { records_kept_per_workflow = 2, records_kept_bytes_per_workflow = 4096 } },
      workflow = function(name) return name == "child" and child or nil end })
    local own, first, parent_rec, big_rec = table.unpack(in_loop(function()
      local _, _, o = svc:start(child, {})
      local _, _, p = svc:start({ workflow = parent }, {})
      local _, _, b = svc:start({ workflow = big }, {})
      return { o, p.timeline[1].run_id, p, b }
    end))
    -- the parent's children count in its share, not in the child workflow's:
    -- its first child's record went for the parent's own, the child's own run stays
    assert.are.same({ 2, 1 }, { (svc.finished:held("parent")), (svc.finished:held("child")) })
    assert.is_nil(svc:lookup(first))
    assert.are.equal("child", json.decode(svc:lookup(own.id)).workflow)
    assert.are.equal("p", json.decode(svc:lookup(parent_rec.id)).result)
    -- a record past its workflow's share of bytes is kept as its frame, saying so
    local kept = json.decode(svc:lookup(big_rec.id))
    assert.are.equal("succeeded", kept.status)
    assert.is_nil(kept.result)
    assert.matches("records_kept_bytes_per_workflow", kept.record_dropped)
  end)

  it("lets a workflow start a protected one, or emit a protected event, only when the config lists it", function()
    local function wf(name, body)
      return { workflow = chorus.workflow { name = name, run = body }, hash = name }
    end
    local entries = { charge = wf("charge", function() return "charged" end) }
    local env = { backend = outbox.memory(true), log = function() end, log_sink = function() end,
      workflow = function(name) return entries[name] end,
      config = { auth = { charge = { token = "t", callers = { "order" } } },
        events = { paid = { auth = { token = "e" }, emitters = { "order" } } } } }
    local function attempt(fn)
      return function(ctx)
        local ok, err = pcall(fn, ctx)
        return ok and "allowed" or err.kind .. ": " .. err.message
      end
    end
    local out = in_loop(function()
      local svc = runs.service(env)
      local results = {}
      for _, caller in ipairs({ "order", "stranger" }) do
        for what, fn in pairs({
          call = function(ctx) return ctx.call("charge", {}) end,
          later = function(ctx) return ctx.later("charge", {}) end,
          emit = function() return chorus.emit("paid", "k1", {}) end,
          open = function() return chorus.emit("unconfigured", "k1", {}) end,
        }) do
          local _, value = svc:start(wf(caller, attempt(fn)), {})
          results[caller .. " " .. what] = value
        end
      end
      return results
    end)
    assert.are.equal("allowed", out["order call"])
    assert.are.equal("allowed", out["order later"])
    assert.are.equal("allowed", out["order emit"])
    assert.are.equal("allowed", out["stranger open"]) -- an event the config does not protect
    assert.matches("^forbidden: ctx.call: workflow 'charge' is protected by auth.charge: list 'stranger' in "
      .. "auth.charge.callers", out["stranger call"])
    assert.matches("^forbidden: ctx.later: .*auth.charge.callers", out["stranger later"])
    assert.matches("^forbidden: chorus.emit: event 'paid' is protected by events.paid: list 'stranger' in "
      .. "events.paid.emitters", out["stranger emit"])
  end)

  it("gives a parent that finds its child finished what the child returned, not the masked record", function()
    -- as after a crash between the child's end and the parent's journaling
    -- of the call: the replayed parent finds the child's record in the store
    local st = store.memory()
    local env = { store = st, backend = outbox.memory(true), log = function() end, log_sink = function() end }
    local child = { workflow = chorus.workflow { name = "child", redact = { "card" }, run = function(_, input)
      return { card = input.card, ok = true }
    end }, hash = "c1" }
    local failing = { workflow = chorus.workflow { name = "failing", redact = { "card" }, run = function(_, input)
      error({ kind = "declined", message = "no", card = input.card })
    end }, hash = "f1" }
    local out = in_loop(function()
      local svc = runs.service(env)
      local cid, fid = core.uuid(), core.uuid()
      svc:start(child, { card = "4242" }, { id = cid, parent = "p" })
      svc:start(failing, { card = "4242" }, { id = fid, parent = "p" })
      local masked = json.decode(st:get_run_text(cid))
      local parent = { run_id = "p" }
      local ok, value = svc:call_child(child, {}, cid, parent)
      local fok, ferr = svc:call_child(failing, {}, fid, parent)
      return { masked = masked.result.card, ok = ok, value = value, fok = fok, ferr = ferr, fid = fid }
    end)
    assert.are.equal("[REDACTED]", out.masked)
    assert.is_true(out.ok)
    assert.are.same({ card = "4242", ok = true }, out.value)
    assert.is_false(out.fok)
    assert.are.equal("declined", out.ferr.kind)
    assert.are.equal("4242", out.ferr.card)
    assert.are.equal(out.fid, out.ferr.child_run_id)
  end)

  -- A crashed run of calls_two as a restarted server finds it, with the
  -- service that will resume it.
  local function crashed_run(t)
    local st = store.memory()
    local env = { store = st, backend = outbox.memory(true), transport = t.fn, crash_after = 1,
      log = function() end, log_sink = function() end }
    local entry = { workflow = calls_two, hash = "h1", source = nil }
    local first = in_loop(function()
      return { runs.service(env):start(entry, { base = "http://x.test" }) }
    end)
    env.crash_after = nil
    local svc = runs.service(env)
    svc:keep_version(entry)
    return st, svc, first[3], first
  end

  -- A reload left every old version (and what its top level kept) in
  -- memory for good: the service held each version it had seen.
  it("lets an old script version go once nothing serves or runs it; compiles it again from the store", function()
    local script = require "chorus.script"
    local st = store.memory()
    local svc = runs.service({ store = st, backend = outbox.memory(true), log = function() end,
      log_sink = function() end })
    local source = [[
      local chorus = require "chorus"
      local kept = string.rep("k", 1 << 20) -- what its top level holds
      return chorus.workflow { name = "old", run = function() return #kept end }
    ]]
    -- the version is compiled, kept and run here, then nothing holds it (as
    -- after a reload to another version, with no run of this one left)
    local function served()
      local wf = assert(script.compile(source, "old.lua"))
      svc:keep_version({ workflow = wf, hash = "h:old", source = source, path = "old.lua" })
      st:commit() -- (a server commits every loop turn)
      assert.are.equal(wf, svc:version("h:old"))
      return setmetatable({ wf }, { __mode = "v" })
    end
    local gone = served()
    collectgarbage()
    collectgarbage()
    assert.is_nil(gone[1])
    local again = assert(svc:version("h:old", "old.lua"))
    assert.are.equal("old", again.name)
  end)

  it("after a crash, a new service over the same store resumes the run from its journal", function()
    local t = counting_transport("one")
    local st, svc, rec, first = crashed_run(t)
    assert.is_false(first[1])
    assert.is_true(first[7]) -- crashed
    assert.are.equal("crash", first[2].kind)
    -- as a restarted server finds it: in flight, with a timer and one effect
    assert.are.equal("running", st:get_run(rec.id).status)
    assert.are.equal(1, #st:unfinished())
    assert.are.equal(1, #st:journal(rec.id))

    local resumed = {}
    local n = svc:recover({ start = function(fn) resumed[#resumed + 1] = fn end })
    assert.are.equal(1, n)
    local out = in_loop(function() return { resumed[1]() } end)
    assert.is_true(out[1])
    local value = json.decode(st:get_run_text(rec.id))
    assert.are.equal("succeeded", value.status)
    assert.are.same({ a = "one", b = "one" }, value.result)
    -- /a was answered from the journal: the transport saw it once
    assert.are.same({ "GET http://x.test/a", "GET http://x.test/b" }, t.urls)
    assert.are.same({}, st:unfinished())
    assert.are.same({}, st:journal(rec.id))
  end)

  -- A resumed run's record cap (chorus.journal) and its workflow's account
  -- (Store:run_account) start from the bytes its journal holds: each
  -- walked the journal again to count them, after the resume had read it.
  it("counts a resumed run's journal bytes in the walk that reads it", function()
    local t = counting_transport("one")
    local st, svc, rec = crashed_run(t)
    local resumed = {}
    svc:recover({ start = function(fn) resumed[#resumed + 1] = fn end })
    local stored = 0
    for _, row in ipairs(st.st:scan("journal", { prefix = rec.id })) do
      stored = stored + #row[2]
    end
    local kv, walks = st.st, 0
    st.st = setmetatable({ scan = function(_, db, opts)
      walks = walks + (db == "journal" and 1 or 0)
      return kv:scan(db, opts)
    end }, { __index = function(_, k) return function(_, ...) return kv[k](kv, ...) end end })
    local journal = require "chorus.journal"
    local attach, cap_from = journal.attach, nil
    journal.attach = function(state, ...)
      attach(state, ...)
      cap_from = state.journal.bytes
    end
    local out = in_loop(function() return { resumed[1]() } end)
    journal.attach, st.st = attach, kv
    assert.is_true(out[1])
    assert.are.equal(0, walks)
    assert.is_true(stored > 0)
    assert.are.equal(stored, cap_from) -- (the restart's mark comes after)
    assert.are.equal(#st:get_run_text(rec.id), st:held("calls-two")) -- (its journal went with its end)
  end)

  -- DELETE /runs/ID for a run recovery has not reached: the cancel mark is
  -- written to the stored record, and while its commit was under way the
  -- recovery resumed the run from the record as committed (no mark). The run
  -- then ended succeeded over the 202 (found by tests/soak/edges/probe.py).
  it("cancels a run recovery resumes while the cancel's mark is being committed", function()
    local t = counting_transport("one")
    local st, svc, rec = crashed_run(t)
    local resumed = {}
    local commit = st.commit
    st.commit = function(self)
      if #resumed == 0 then -- recovery's turn comes during the commit's wait
        svc:resume(rec.id, function(fn) resumed[#resumed + 1] = fn end)
      end
      return commit(self)
    end
    local got, why = svc:cancel(rec.id, "api")
    st.commit = commit
    assert.truthy(got, why)
    assert.are.equal(1, #resumed)
    local out = in_loop(function() return { resumed[1]() } end)
    assert.is_false(out[1])
    local value = json.decode(st:get_run_text(rec.id))
    assert.are.equal("cancelled", value.status)
    assert.are.equal("api", value.cancel.via)
  end)

  -- A live run went on while the cancel's mark was being committed and
  -- could end then, succeeded, with the mark in its record and a 202 out
  -- (tests/soak/edges/probe.py): it is stopped before that wait now.
  it("stops a live run before the cancel's mark is committed", function()
    local st = store.memory()
    local env = { store = st, backend = outbox.memory(true), log = function() end, log_sink = function() end }
    local svc = runs.service(env)
    local sleeper = { workflow = chorus.workflow { name = "sleeper", run = function(ctx)
      ctx.sleep(60)
      return "woke"
    end }, hash = "s1" }
    local at_commit
    local out = in_loop(function()
      local ended = {}
      core.start(nil, function() ended.ok, ended.value = svc:start(sleeper, {}) end)
      core.sleep(1)
      local id = next(svc.running)
      local rec = svc.running[id]
      local commit = st.commit
      st.commit = function(self)
        at_commit = svc.states[rec] and svc.states[rec].cancelled or false
        st.commit = commit
        return commit(self)
      end
      local got, why = svc:cancel(id, "api")
      core.sleep(1)
      return { got = got ~= nil, why = why, ok = ended.ok, id = id }
    end)
    assert.is_true(out.got, out.why)
    assert.is_true(at_commit)
    assert.is_false(out.ok)
    assert.are.equal("cancelled", json.decode(st:get_run_text(out.id)).status)
  end)

  it("resumes from what the start-up check read, without reading the run again", function()
    local t = counting_transport("one")
    local st, svc, rec = crashed_run(t)
    assert.are.same({}, st:verify_for_start().bad)
    local get, reads = st.st.get, 0
    st.st.get = function(kv, db, key)
      reads = reads + ((db == "runs" or db == "journal") and 1 or 0)
      return get(kv, db, key)
    end
    local resumed = {}
    svc:recover({ start = function(fn) resumed[#resumed + 1] = fn end })
    st.st.get = get
    assert.are.equal(0, reads)
    local out = in_loop(function() return { resumed[1]() } end)
    assert.is_true(out[1])
    assert.are.equal("succeeded", json.decode(st:get_run_text(rec.id)).status)
    assert.are.same({ "GET http://x.test/a", "GET http://x.test/b" }, t.urls)
  end)

  it("reads a run written after the start-up check again: a cancel meanwhile is kept", function()
    local t = counting_transport("one")
    local st, svc, rec = crashed_run(t)
    assert.are.same({}, st:verify_for_start().bad)
    -- DELETE /runs/ID before recovery reaches the run: stored in its record
    assert.is_truthy(in_loop(function() return svc:cancel(rec.id, "api") end))
    st:commit()
    local resumed = {}
    svc:recover({ start = function(fn) resumed[#resumed + 1] = fn end })
    in_loop(function() return { resumed[1]() } end)
    assert.are.equal("cancelled", json.decode(st:get_run_text(rec.id)).status)
    assert.are.same({ "GET http://x.test/a" }, t.urls) -- /b never sent
  end)

  it("fails a resumed run whose script version it does not have, naming the hash", function()
    local st = store.memory()
    st:put_run({ id = "r-old", workflow = "gone", status = "running", started = T0, script_hash = "abc",
      timeline = {}, input = {} })
    st:put_timer("r-old", nil)
    st:commit()
    local svc = runs.service({ store = st, backend = outbox.memory(true), log = function() end })
    local resumed = {}
    svc:recover({ start = function(fn) resumed[#resumed + 1] = fn end })
    local out = in_loop(function() return { resumed[1]() } end)
    assert.is_false(out[1])
    assert.matches("script version abc is not in the data folder", out[2].message, 1, true)
    assert.are.equal("failed", st:get_run("r-old").status)
  end)

  it("starts outbox workflow entries through its relay, settling each by its run", function()
    local t = counting_transport("one")
    local later = chorus.workflow {
      name = "later", run = function(ctx) ctx.later("calls-two", { base = "http://z.test" }) return true end,
    }
    local backend = outbox.memory(true)
    local svc = runs.service({ backend = backend, transport = t.fn, log_sink = function() end,
      workflow = function(name) return name == "calls-two" and { workflow = calls_two } or nil end })
    in_loop(function()
      svc:start({ workflow = later }, {})
      outbox.drain(backend, { transport = t.fn,
        start_workflow = function(b, e) return svc:start_outbox_workflow(b, e) end })
    end)
    assert.are.equal(1, #backend.delivered)
    assert.are.same({ "GET http://z.test/a", "GET http://z.test/b" }, t.urls)
    local rec = json.decode(svc:lookup(backend.delivered[1].id))
    assert.are.equal("succeeded", rec.status)
    assert.are.equal(1, rec.attempt)
  end)

  it("dead-letters an outbox entry for a workflow it does not know", function()
    local backend = outbox.memory(true)
    local lines = {}
    backend.log_sink = function(line) lines[#lines + 1] = line end -- the outbox's own lines
    local svc = runs.service({ backend = backend, workflow = function() return nil end })
    local later = chorus.workflow { name = "l", run = function(ctx) ctx.later("nope", {}) end }
    in_loop(function()
      svc:start({ workflow = later }, {})
      outbox.drain(backend, { start_workflow = function(b, e) return svc:start_outbox_workflow(b, e) end })
    end)
    assert.are.equal(1, #backend.dead)
    assert.are.equal("unknown_workflow", backend.dead[1].last_error.kind)
    assert.are.equal("outbox entry moved to the DLQ", lines[1].msg)
  end)
  it("names new runs with time-ordered UUIDs (version 7): the data folder's keys follow the clock", function()
    local V7 = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-7%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
    local ids = in_loop(function()
      local svc = runs.service({ store = store.memory() })
      local wf = chorus.workflow { name = "nothing", run = function() return true end }
      local out = {}
      for i = 1, 3 do
        local _, _, rec = svc:start({ workflow = wf }, {})
        out[i] = rec.id
        core.sleep(0.002) -- the next millisecond: a later id
      end
      return out
    end)
    for _, id in ipairs(ids) do
      assert.matches(V7, id)
    end
    assert.is_true(ids[1] < ids[2] and ids[2] < ids[3])
    assert.are.equal(("%012x"):format(T0 * 1000 // 1), ids[1]:gsub("-", ""):sub(1, 12))
  end)
  -- Runs a workflow durably over a real data folder (held: as a request's
  -- run the client waits for, which holds its first records back); returns
  -- what the transport saw of each call: its URL, how many unfinished runs,
  -- run records and journal entries the folder held (committed state only)
  -- and the entries the run had put when the call went out; then the
  -- journal entries the run put, and those the folder keeps after it (the
  -- run's record: its status), and how many times its running record was
  -- written. In the transport, cancel() cancels the run.
  local function calls_seen(wf, held)
    local dir = os.tmpname()
    os.remove(dir)
    local st = assert(store.open(dir))
    local seen, puts, kept, status, running_puts = {}, 0, nil, nil, 0
    local put_effect, put_run = st.put_effect, st.put_run
    st.put_effect = function(...)
      puts = puts + 1
      return put_effect(...)
    end
    st.put_run = function(...)
      running_puts = running_puts + 1
      return put_run(...)
    end
    local ok, err = core.run(nil, function()
      local svc, rec
      svc = runs.service({ store = st, transport = function(o)
        seen[#seen + 1] = { call = o.method .. " " .. o.url, unfinished = #st:unfinished(),
          runs = #st.st:scan("runs", { limit = 1000 }), journal = #st.st:scan("journal", { limit = 1000 }),
          puts = puts }
        if o.url:find("/cancel", 1, true) then
          assert(svc:cancel(rec.id, "test"))
        end
        if o.url:find("/slow", 1, true) then
          core.sleep(0.5)
        end
        return o.url:find("/fail", 1, true) and 503 or 200, {}, "", 0.001
      end, log = function() end })
      rec = svc:new_record(core.uuid7(), wf.name)
      svc:begin(rec, { workflow = wf }, {}, false, held)
      svc:execute({ workflow = wf }, rec, {})
      st:commit()
      kept, status = #st:journal(rec.id), json.decode(st:get_run_text(rec.id)).status
      assert.are.equal(0, #st:unfinished()) -- (its timer, if it had one, went with its end)
    end)
    st:close()
    os.execute("rm -rf '" .. dir .. "'")
    assert(ok, tostring(err))
    return seen, puts, kept, status, running_puts
  end

  it("sends no effect of a durable run, from any of its tasks, before its first records are on disk", function()
    local seen = calls_seen(chorus.workflow {
      name = "both",
      run = function()
        chorus.all(function() return http.post("http://up/a", { body = "1" }).status end,
          function() return http.request({ method = "DELETE", url = "http://up/b" }).status end)
        return true
      end,
    })
    assert.are.equal(2, #seen)
    for _, call in ipairs(seen) do
      assert.are.equal(1, call.unfinished, call.call .. " went out before the run's timer was committed")
    end
  end)

  -- A safe call (GET, HEAD, OPTIONS, TRACE) or a read of the clock changes
  -- nothing outside: made before the run's records are on disk, a crash
  -- leaves no trace of it, so it does not wait for a group commit. The
  -- first call that may change something still waits.
  it("sends safe calls at once, and waits for the first records before a call that may change something", function()
    local seen = calls_seen(chorus.workflow {
      name = "reads-then-writes",
      run = function(ctx)
        ctx.now()
        ctx.uuid()
        chorus.all(function() return http.get("http://up/a").status end,
          function() return http.request({ method = "HEAD", url = "http://up/b" }).status end)
        return http.put("http://up/c", { body = "x" }).status
      end,
    })
    assert.are.same({ { call = "GET http://up/a", unfinished = 0, runs = 0, journal = 0, puts = 0 },
      { call = "HEAD http://up/b", unfinished = 0, runs = 0, journal = 0, puts = 0 },
      -- the reads' entries (now, uuid, GET, HEAD) are on disk before the PUT goes out:
      -- a replay must see what the PUT was made from
      { call = "PUT http://up/c", unfinished = 1, runs = 1, journal = 4, puts = 4 } }, seen)
  end)

  -- A request's run the client waits for (no idempotency key) holds its
  -- first records (record, timer) back as it holds the entries of its
  -- reads: a crash before they are written loses a run that changed
  -- nothing and answered nobody.
  it("writes a read-only request run's record once, at its end, when it ends within a tenth of a second", function()
    local seen, puts, kept, status, running_puts = calls_seen(chorus.workflow {
      name = "request-reads",
      run = function(ctx)
        ctx.now()
        chorus.all(function() return http.get("http://up/a").status end,
          function() return http.get("http://up/b").status end)
        return true
      end,
    }, true)
    for _, call in ipairs(seen) do
      assert.are.same({ 0, 0 }, { call.unfinished, call.runs })
    end
    assert.are.same({ 0, 0, "succeeded", 0 }, { puts, kept, status, running_puts })
  end)

  it("writes a held run's first records with its reads before its first call that may change something",
    function()
      local seen, _, _, status, running_puts = calls_seen(chorus.workflow {
        name = "request-writes",
        run = function()
          http.get("http://up/a")
          return http.post("http://up/b", { body = "x" }).status
        end,
      }, true)
      local function at(c) return { c.call, c.unfinished, c.runs, c.journal } end
      assert.are.same({ "GET http://up/a", 0, 0, 0 }, at(seen[1]))
      assert.are.same({ "POST http://up/b", 1, 1, 1 }, at(seen[2]))
      assert.are.same({ "succeeded", 1 }, { status, running_puts })
    end)

  it("writes a held run's first records a tenth of a second after it began (a crash then resumes it)", function()
    local seen = calls_seen(chorus.workflow {
      name = "request-reads-slowly",
      run = function()
        http.get("http://up/slow")
        return http.get("http://up/after").status
      end,
    }, true)
    assert.are.same({ 0, 0 }, { seen[1].unfinished, seen[1].runs })
    -- written by the background run while /slow was waited for, and committed
    assert.are.same({ 1, 1 }, { seen[2].unfinished, seen[2].runs })
  end)

  it("writes a held run's first records with the cancel mark when it is cancelled before they are written",
    function()
      local seen, _, _, status, running_puts = calls_seen(chorus.workflow {
        name = "request-cancelled",
        run = function()
          http.get("http://up/cancel")
          return http.get("http://up/after").status
        end,
      }, true)
      assert.are.equal(1, #seen) -- stopped at the cancel
      assert.are.same({ "cancelled", 1 }, { status, running_puts })
    end)

  -- A quiet effect's journal entry is held back (chorus.journal): a run
  -- that only reads and succeeds writes no journal at all; one that reads
  -- page after page writes its entries in groups of eight; a failed run
  -- writes what it held, for its redrive.
  it("writes no journal for a run that only reads and succeeds", function()
    local seen, puts, kept, status = calls_seen(chorus.workflow {
      name = "reads",
      run = function(ctx)
        ctx.now()
        chorus.all(function() return http.get("http://up/a").status end,
          function() return http.get("http://up/b").status end)
        return true
      end,
    })
    assert.are.equal(2, #seen)
    assert.are.same({ 0, 0, "succeeded" }, { puts, kept, status })
  end)

  it("writes the entries of a run that reads page after page eight at a time", function()
    local seen, puts, kept, status = calls_seen(chorus.workflow {
      name = "pages",
      run = function()
        for i = 1, 10 do
          http.get("http://up/page/" .. i)
        end
        return true
      end,
    })
    assert.are.equal(0, seen[8].puts) -- seven held
    assert.are.equal(8, seen[9].puts) -- the eighth made the group: written
    assert.are.same({ 8, 0, "succeeded" }, { puts, kept, status }) -- the last two held, the journal dropped
  end)

  it("writes what a run read once it has held it a tenth of a second (a crash costs little)", function()
    local seen, puts = calls_seen(chorus.workflow {
      name = "reads-slowly",
      run = function()
        http.get("http://up/a")
        http.get("http://up/slow")
        return http.get("http://up/after").status
      end,
    })
    assert.are.same({ 0, 0 }, { seen[2].puts, seen[2].journal })
    -- written by the background run while /slow was waited for, and committed
    assert.are.same({ 1, 1 }, { seen[3].puts, seen[3].journal })
    assert.are.equal(1, puts) -- the last two: held, and let go at the end
  end)

  it("keeps what a failed run read, for its redrive", function()
    local _, puts, kept, status = calls_seen(chorus.workflow {
      name = "reads-then-fails",
      run = function()
        http.get("http://up/a")
        local r = http.get("http://up/fail")
        error("upstream said " .. r.status)
      end,
    })
    assert.are.same({ 2, 2, "failed" }, { puts, kept, status })
  end)

  -- A DELETE /runs/ID that lands after the run's body ended, before its end
  -- is recorded: the end is decided, so the cancel is refused (409), not written into
  -- the record of a run that then ends succeeded (found by the SIGKILL
  -- probe of tests/soak/edges: a 202 cancel, a run that ended succeeded).
  it("refuses a cancel that lands after the run's end is decided", function()
    local st = store.memory()
    local env = { store = st, backend = outbox.memory(true), transport = counting_transport("one").fn,
      log = function() end, log_sink = function() end }
    local svc = runs.service(env)
    local answers = {}
    local finish_record = svc.finish_record
    svc.finish_record = function(self, rec, ...)
      local got, why = self:cancel(rec.id, "api")
      answers[rec.id] = { got = got ~= nil, why = why }
      return finish_record(self, rec, ...)
    end
    local rec = in_loop(function()
      local _, _, r = svc:start({ workflow = calls_two, hash = "h1" }, { base = "http://x.test" })
      return r
    end)
    assert.are.same({ got = false, why = "conflict" }, answers[rec.id])
    local stored = json.decode(st:get_run_text(rec.id))
    assert.are.equal("succeeded", stored.status)
    assert.is_nil(stored.cancel)
  end)
end)


describe("the record cap (limits.run_record_bytes)", function()
  -- A transport answering bodies of `size` bytes.
  local function sized(size)
    return function() return 200, { ["content-type"] = "text/plain" }, ("b"):rep(size), 0.001 end
  end

  local function service(cap, size)
    return runs.service({ store = store.memory(), transport = sized(size or 10), log_sink = function() end,
      log = function() end, config = { limits = { run_record_bytes = cap } } })
  end

  local calls = chorus.workflow {
    name = "calls",
    run = function(_, input)
      local made, caught = 0, nil
      for _ = 1, input.n do
        local ok, err = pcall(http.get, "http://x.test/")
        if ok then
          made = made + 1
        else
          caught = err.kind
        end
      end
      return { made = made, caught = caught }
    end,
  }

  local returns = chorus.workflow { name = "returns", run = function(_, input) return ("r"):rep(input.bytes) end }

  local function start(svc, wf, input)
    return in_loop(function()
      local ok, value, rec = svc:start({ workflow = wf }, input)
      return { ok = ok, value = value, rec = rec, text = svc.finished:get(rec.id),
        stored = svc.store:get_run(rec.id) }
    end)
  end

  it("stops a run whose journal would pass it before writing the entry; pcall does not catch it", function()
    local svc = service(20000, 6000)
    local r = start(svc, calls, { n = 10 })
    assert.is_false(r.ok)
    assert.are.equal("record_too_large", r.value.kind)
    assert.truthy(r.value.message:find("limits.run_record_bytes (20000 bytes)", 1, true), r.value.message)
    assert.are.equal("failed", r.stored.status)
    assert.are.equal("record_too_large", r.stored.error.kind)
    -- three entries of about 6 KB fit, the fourth was not written
    assert.are.equal(3, #svc.store:journal(r.rec.id))
  end)

  it("fails a run whose finished record would pass it, keeping its frame but not its result", function()
    local svc = service(20000)
    local r = start(svc, returns, { bytes = 30000 })
    assert.is_false(r.ok)
    assert.are.equal("record_too_large", r.value.kind)
    assert.are.equal("failed", r.stored.status)
    assert.is_nil(r.stored.result)
    assert.truthy(#r.text < 20000, #r.text)
    assert.are.equal(r.text, svc.store:get_run_text(r.rec.id))
  end)

  it("lets a run under it through, and 0 means no cap", function()
    local r = start(service(20000), returns, { bytes = 10000 })
    assert.is_true(r.ok)
    assert.are.equal("succeeded", r.stored.status)
    r = start(service(0, 6000), calls, { n = 10 })
    assert.is_true(r.ok)
    assert.are.same({ made = 10 }, r.value)
  end)

  it("reads the workflow and status of a finished run from its index row, not its record", function()
    local svc = service(0)
    local r = start(svc, returns, { bytes = 100 })
    assert.are.same({ "returns", "succeeded" }, { svc:facts(r.rec.id) })
    assert.is_nil(svc:facts("no-such-run"))
  end)
end)

describe("runs in flight, by workflow", function()
  it("a workflow's share is half the server's cap, rounded up, unless set; 0 or the cap itself: none", function()
    assert.are.same({ 10000, 5000 }, { runs.caps(nil) })
    assert.are.same({ 5, 3 }, { runs.caps({ max_inflight_runs = 5 }) })
    assert.are.same({ 1 }, { runs.caps({ max_inflight_runs = 1 }) }) -- a share of 1 is the whole server
    assert.are.same({ 8, 3 }, { runs.caps({ max_inflight_runs = 8, inflight_runs_per_workflow = 3 }) })
    assert.are.same({ 8 }, { runs.caps({ max_inflight_runs = 8, inflight_runs_per_workflow = 0 }) })
    assert.are.same({ 8 }, { runs.caps({ max_inflight_runs = 8, inflight_runs_per_workflow = 8 }) })
  end)

  it("core.release gives a place back once, whatever calls it again", function()
    local svc = runs.service({ config = { limits = { max_inflight_runs = 4 } }, log = function() end })
    local a = svc:count_in("a")
    local b = svc:count_in("a")
    assert.are.equal("workflow", svc:at_capacity("a"))
    assert.is_false(svc:at_capacity("b"))
    core.release(a)
    core.release(a)
    assert.are.same({ 1, 1 }, { svc.inflight, svc.charged.a })
    assert.is_false(svc:at_capacity("a"))
    do
      local _ <close> = b
    end
    core.release(b)
    assert.are.same({ 0, 0 }, { svc.inflight, svc.charged.a })
  end)

  it("gives a run's place back when its run cannot start (core.execute raises, as it does out of memory)", function()
    local svc = runs.service({ config = { limits = { max_inflight_runs = 4 } }, log = function() end,
      log_sink = function() end })
    local a = chorus.workflow { name = "a", run = function() return true end }
    local real = core.execute
    core.execute = function() error("out of memory starting a run", 0) end
    local ok, err = pcall(in_loop, function() return svc:start({ workflow = a }, {}) end)
    core.execute = real
    assert.is_false(ok)
    assert.matches("out of memory starting a run", tostring(err))
    assert.are.same({ 0, 0 }, { svc.inflight, svc.charged.a or 0 })
    assert.is_false(svc:at_capacity("a"))
  end)

  it("charges a child run to the workflow at the top of its callers, and counts every run out", function()
    local svc = runs.service({ log = function() end, log_sink = function() end })
    local seen = {}
    local leaf = chorus.workflow { name = "leaf", run = function()
      seen[#seen + 1] = { top = svc.charged.top, leaf = svc.charged.leaf or 0, mid = svc.charged.mid or 0 }
      return true
    end }
    local entries = { leaf = { workflow = leaf } }
    local mid = chorus.workflow { name = "mid", run = function(ctx) return ctx.call("leaf", {}) end }
    entries.mid = { workflow = mid }
    local top = chorus.workflow { name = "top", run = function(ctx) return ctx.call("mid", {}) end }
    svc.env.workflow = function(name) return entries[name] end
    in_loop(function()
      assert.is_true((svc:start({ workflow = top }, {})))
    end)
    assert.are.same({ { top = 3, leaf = 0, mid = 0 } }, seen)
    assert.are.same({ 0, 0 }, { svc.inflight, svc.charged.top })
  end)
end)
