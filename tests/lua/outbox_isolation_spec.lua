-- What one workflow can do to the others through the outbox, on both
-- backends (memory, and a real LMDB folder): its backlog is served
-- round-robin with theirs (fairness checked by delivery order, never by
-- time), it has at most limits.outbox_pending_per_workflow entries pending,
-- each attempt of a workflow entry gets the input as enqueued, and runs the
-- server starts by itself (outbox entries, schedules) wait while
-- max_inflight_runs runs are in flight, or their workflow has its share of
-- them (inflight_runs_per_workflow), instead of going past it; an entry
-- waiting for its workflow holds back no entry behind it.
local core = require "chorus.core"
local chorus = require "chorus"
local outbox = require "chorus.outbox"
local runs = require "chorus.runs"
local store = require "chorus.store"

local T0 = 1767225600

local function in_loop(fn, real)
  if not real then
    core.set_clock("virtual", T0)
  end
  local ok, value = core.run(nil, fn)
  core.set_clock("real")
  assert(ok, tostring(value))
  return value
end

local function temp_dir()
  local dir = os.tmpname()
  os.remove(dir)
  return dir
end

-- A sink workflow that records the input of each of its runs, in order.
local function sink(seen)
  return chorus.workflow { name = "sink", run = function(_, input)
    seen[#seen + 1] = input
    return true
  end }
end

-- flood enqueues n starts of sink, single one.
local function flood(n)
  return chorus.workflow { name = "flood", run = function(ctx)
    for i = 1, n do
      ctx.later("sink", { from = "flood", i = i })
    end
    return true
  end }
end
local single = chorus.workflow { name = "single", run = function(ctx)
  ctx.later("sink", { from = "single" })
  return true
end }

-- Where in seen the single workflow's entry was delivered.
local function position_of_single(seen)
  for i, input in ipairs(seen) do
    if input.from == "single" then
      return i
    end
  end
  return nil
end

describe("the outbox between workflows", function()
  after_each(function()
    outbox.pending_cap = 10000
  end)

  describe("fairness", function()
    it("the memory backend hands out due entries round-robin across lanes, each lane in due order", function()
      local b = outbox.memory()
      for i = 1, 50 do
        b:add({ id = "a" .. i, kind = "http", due = 1000 + i / 100, seq = i, owner = "a" })
      end
      b:add({ id = "b1", kind = "http", due = 1001, seq = 51, owner = "b" })
      b:add({ id = "c1", kind = "http", due = 1001, seq = 52, owner = "c" })
      local ids = {}
      for _, e in ipairs(b:due(2000, 5)) do
        ids[#ids + 1] = e.id
      end
      assert.are.same({ "a1", "b1", "c1", "a2", "a3" }, ids)
      -- served after lane a: b first
      assert.are.equal("b1", b:due(2000, 1, nil, 0, "a")[1].id)
      assert.are.equal("a1", b:due(2000, 1, nil, 0, "c")[1].id)
      assert.are.equal(50, b:pending("a"))
      assert.are.equal(1, b:pending("b"))
    end)

    it("the LMDB backend too, and its lanes are rebuilt for entries written without them", function()
      local dir = temp_dir()
      local st = assert(store.open(dir, { sync = false }))
      in_loop(function()
        for i = 1, 50 do
          st:put_outbox({ id = "a" .. i, kind = "http", due = 1000 + i / 100, owner = "a" })
        end
        st:put_outbox({ id = "b1", kind = "http", due = 1001, owner = "b" })
        st:commit()
      end, true)
      local ids = {}
      for _, e in ipairs(st:due_outbox(2000, 3, nil, 0)) do
        ids[#ids + 1] = e.id
      end
      assert.are.same({ "a1", "b1", "a2" }, ids)
      assert.are.equal("b1", st:due_outbox(2000, 1, nil, 0, "a")[1].id)
      assert.are.equal(50, st:lane_pending("a"))
      -- entries a chorus without lanes wrote get theirs when the folder is opened
      in_loop(function()
        for i = 1, 3 do
          st.st:put("outbox", store.outbox_key(1500, "old" .. i), core.json.encode({ id = "old" .. i,
            kind = "http", due = 1500, owner = "old" }))
        end
        st:commit()
      end, true)
      assert.are.equal(0, st:lane_pending("old"))
      st.lane_counts = nil
      st:ensure_run_index()
      assert.are.equal(3, st:lane_pending("old"))
      assert.are.equal("old1", st:due_outbox(2000, 1, nil, 0, "b")[1].id)
      -- what a server counts at its start, and keeps
      assert.are.same({ a = 50, b = 1, old = 3 }, st:count_lanes())
      assert.are.equal(0, st:lane_pending("new"))
      st:lane_changed("new", 1)
      assert.are.equal(1, st:lane_pending("new"))
      st:close()
      os.execute("rm -rf '" .. dir .. "'")
    end)

    local function fairness(backend_of)
      local seen = {}
      local entries = { sink = { workflow = sink(seen) } }
      local svc, cleanup = backend_of(entries)
      local n = 40
      in_loop(function()
        svc:start({ workflow = flood(n) }, {})
        svc:start({ workflow = single }, {}) -- enqueued after the whole flood
        local relay = svc:relay({ concurrency = 1, poll = 0.001 })
        core.start(nil, function()
          while #seen < n + 1 do
            core.sleep(0.005)
          end
          relay:stop()
        end)
        relay:run()
      end, true)
      cleanup()
      return seen
    end

    it("one workflow's ctx.later flood does not hold up another's entry (memory outbox)", function()
      local seen = fairness(function(entries)
        local svc = runs.service({ backend = outbox.memory(), log = function() end, log_sink = function() end,
          workflow = function(name) return entries[name] end })
        return svc, function() end
      end)
      -- first-in-first-out delivered it last (41st); round-robin: right after the flood's first
      assert.is_true(position_of_single(seen) <= 2, "delivered at " .. tostring(position_of_single(seen)))
    end)

    it("one workflow's ctx.later flood does not hold up another's entry (data folder)", function()
      local dir = temp_dir()
      local seen = fairness(function(entries)
        local st = assert(store.open(dir, { sync = false }))
        local svc = runs.service({ store = st, backend = outbox.durable(st), log = function() end,
          log_sink = function() end, workflow = function(name) return entries[name] end })
        return svc, function()
          st:close()
          os.execute("rm -rf '" .. dir .. "'")
        end
      end)
      assert.is_true(position_of_single(seen) <= 2, "delivered at " .. tostring(position_of_single(seen)))
    end)
  end)

  describe("limits.outbox_pending_per_workflow", function()
    local function capped(backend, st)
      outbox.pending_cap = 5
      local greedy = chorus.workflow { name = "greedy", run = function(ctx)
        local caught = 0
        for i = 1, 10 do
          if not pcall(ctx.later, "sink", { i = i }) then
            caught = caught + 1
          end
        end
        return { caught = caught }
      end }
      local svc = runs.service({ store = st, backend = backend, log = function() end, log_sink = function() end })
      local out = in_loop(function()
        local ok, value = svc:start({ workflow = greedy }, {})
        local other_ok = svc:start({ workflow = single }, {}) -- another workflow's lane is its own
        return { ok = ok, value = value, other_ok = other_ok }
      end, st ~= nil)
      return out
    end

    it("stops the run that enqueues past it with kind outbox_full, whatever it catches (memory)", function()
      local backend = outbox.memory()
      local out = capped(backend)
      assert.is_false(out.ok)
      assert.are.equal("outbox_full", out.value.kind)
      assert.matches("limits.outbox_pending_per_workflow", out.value.message, 1, true)
      assert.are.equal(5, backend:pending("greedy"))
      assert.is_true(out.other_ok)
      assert.are.equal(1, backend:pending("single"))
    end)

    it("the same on the data folder", function()
      local dir = temp_dir()
      local st = assert(store.open(dir, { sync = false }))
      local backend = outbox.durable(st)
      local out = capped(backend, st)
      assert.is_false(out.ok)
      assert.are.equal("outbox_full", out.value.kind)
      assert.are.equal(5, backend:pending("greedy"))
      assert.is_true(out.other_ok)
      st:close()
      os.execute("rm -rf '" .. dir .. "'")
    end)

    it("0 is no cap", function()
      outbox.pending_cap = 0
      local backend = outbox.memory()
      local svc = runs.service({ backend = backend, log = function() end, log_sink = function() end })
      local ok = in_loop(function() return (svc:start({ workflow = flood(50) }, {})) end)
      assert.is_true(ok)
      assert.are.equal(50, backend:pending("flood"))
    end)
  end)

  describe("a retried workflow entry", function()
    local function retried(make)
      local seen = {}
      local mutating = chorus.workflow { name = "mutating", run = function(_, input)
        seen[#seen + 1] = { n = input.n, tag = input.nested.tag, len = #input.list }
        input.n, input.nested.tag = 99, "changed"
        input.list[#input.list + 1] = "more"
        if #seen == 1 then
          error({ kind = "flaky", message = "the first attempt fails" })
        end
        return true
      end }
      local starter = chorus.workflow { name = "starter", run = function(ctx)
        ctx.later("mutating", { n = 1, nested = { tag = "original" }, list = { "a" } }, { base = 0, cap = 0 })
        return true
      end }
      local svc, _, cleanup = make(function(name) return name == "mutating" and { workflow = mutating } end)
      in_loop(function()
        svc:start({ workflow = starter }, {})
        local relay = svc:relay({ poll = 0.001 })
        core.start(nil, function()
          while #seen < 2 do
            core.sleep(0.005)
          end
          relay:stop()
        end)
        relay:run()
      end, true)
      local left = cleanup()
      return seen, left
    end

    it("gets the input as enqueued on each attempt, not what the last attempt made of it (memory)", function()
      local seen, left = retried(function(workflow)
        local backend = outbox.memory()
        local svc = runs.service({ backend = backend, log = function() end, log_sink = function() end,
          workflow = workflow })
        return svc, backend, function()
          local n = 0
          for _ in pairs(backend.entries) do
            n = n + 1
          end
          return n
        end
      end)
      assert.are.same({ n = 1, tag = "original", len = 1 }, seen[1])
      assert.are.same({ n = 1, tag = "original", len = 1 }, seen[2])
      assert.are.equal(0, left)
    end)

    it("the same on the data folder", function()
      local dir = temp_dir()
      local seen, left = retried(function(workflow)
        local st = assert(store.open(dir, { sync = false }))
        local backend = outbox.durable(st)
        local svc = runs.service({ store = st, backend = backend, log = function() end, log_sink = function() end,
          workflow = workflow })
        return svc, backend, function()
          local n = st:count("outbox")
          st:close()
          os.execute("rm -rf '" .. dir .. "'")
          return n
        end
      end)
      assert.are.same({ n = 1, tag = "original", len = 1 }, seen[1])
      assert.are.same({ n = 1, tag = "original", len = 1 }, seen[2])
      assert.are.equal(0, left)
    end)
  end)

  describe("max_inflight_runs", function()
    -- A run that holds its slot for 100 (virtual) seconds.
    local blocker = chorus.workflow { name = "blocker", run = function(ctx)
      ctx.sleep(100)
      return true
    end }

    it("an outbox workflow entry waits for room, with no attempt counted, then starts", function()
      local seen = {}
      local backend = outbox.memory(true)
      local svc
      local probe = chorus.workflow { name = "sink", run = function()
        seen[#seen + 1] = { at = core.now(), inflight = svc.inflight }
        return true
      end }
      svc = runs.service({ backend = backend, config = { limits = { max_inflight_runs = 1 } },
        log = function() end, log_sink = function() end,
        workflow = function(name) return name == "sink" and { workflow = probe } or nil end })
      local out = in_loop(function()
        local blocked_until
        core.start(nil, function()
          svc:start({ workflow = blocker }, {})
          blocked_until = core.now()
        end)
        core.sleep(0)
        svc:start({ workflow = single }, {}) -- one entry for sink, due now
        local relay = svc:relay({ poll = 0.1 })
        core.start(nil, function()
          while #seen == 0 or not blocked_until do
            core.sleep(0.05)
          end
          relay:stop()
        end)
        relay:run()
        return { blocked_until = blocked_until, started_at = seen[1].at, inflight = seen[1].inflight }
      end)
      assert.is_truthy(out.blocked_until, "the blocker ended")
      assert.is_true(out.started_at >= out.blocked_until, "the entry's run started while the server was full")
      assert.are.equal(1, out.inflight) -- its own run alone
      assert.are.equal(0, #backend.dead)
      assert.are.equal(1, #backend.delivered)
      assert.are.equal(0, backend.delivered[1].attempts) -- waiting was no failed attempt
    end)

    it("a scheduled run waits for room, then the schedule goes on", function()
      local state = require "chorus.server_state"
      local scheduler = require "chorus.scheduler"
      local log = require "chorus.log"
      local starts = {}
      local svc = runs.service({ config = { limits = { max_inflight_runs = 1 } }, log = function() end,
        log_sink = function() end })
      local tick = chorus.workflow { name = "tick_full", schedule = { every = 1 }, run = function()
        starts[#starts + 1] = { at = core.now(), inflight = svc.inflight }
        return true
      end }
      local saved = { runs = state.runs, workflows = state.workflows, store = state.store,
        draining = state.draining }
      state.runs, state.workflows, state.store, state.draining = svc, { tick_full = { workflow = tick } }, nil, false
      log.set_level("error")
      local blocked_until
      local ok, err = pcall(in_loop, function()
        core.start(nil, function()
          svc:start({ workflow = blocker }, {})
          blocked_until = core.now()
        end)
        core.start(nil, function()
          core.sleep(105)
          state.draining = true
        end)
        scheduler.loop()
      end)
      state.runs, state.workflows, state.store, state.draining = saved.runs, saved.workflows, saved.store,
        saved.draining
      log.set_level("info")
      assert(ok, tostring(err))
      assert.is_truthy(blocked_until)
      assert.is_true(#starts >= 1, "the schedule never started a run once there was room")
      for _, s in ipairs(starts) do
        assert.is_true(s.at >= blocked_until, ("a scheduled run started at %s, while the server was full"):format(
          s.at - T0))
        assert.are.equal(1, s.inflight)
      end
    end)
  end)

  describe("inflight_runs_per_workflow", function()
    -- A run of workflow name that holds its slot for 100 (virtual) seconds.
    local function blocker(name)
      return chorus.workflow { name = name, run = function(ctx)
        ctx.sleep(100)
        return true
      end }
    end

    it("an entry of a workflow at its share waits and the entries behind it in its lane go", function()
      local started = {}
      local backend = outbox.memory(true)
      local function recorder(name)
        return chorus.workflow { name = name, run = function()
          started[#started + 1] = { name = name, at = core.now() }
          return true
        end }
      end
      local wfs = { full = recorder("full"), free = recorder("free") }
      local svc = runs.service({ backend = backend,
        config = { limits = { max_inflight_runs = 4, inflight_runs_per_workflow = 1 } },
        log = function() end, log_sink = function() end,
        workflow = function(name) return wfs[name] and { workflow = wfs[name] } end })
      local both = chorus.workflow { name = "both", run = function(ctx)
        ctx.later("full", {}) -- first in both's lane
        ctx.later("free", {})
        return true
      end }
      local out = in_loop(function()
        local blocked_until
        core.start(nil, function()
          svc:start({ workflow = blocker("full") }, {})
          blocked_until = core.now()
        end)
        core.sleep(0)
        svc:start({ workflow = both }, {})
        -- one delivery at a time: free's entry goes only past full's
        local relay = svc:relay({ poll = 0.1, concurrency = 1 })
        core.start(nil, function()
          while #started < 2 do
            core.sleep(0.05)
          end
          relay:stop()
        end)
        relay:run()
        return { blocked_until = blocked_until, charged = svc.charged.full }
      end)
      assert.are.equal("free", started[1].name)
      assert.is_true(started[1].at < out.blocked_until, "free's entry waited behind full's")
      assert.are.equal("full", started[2].name)
      assert.is_true(started[2].at >= out.blocked_until, "full's entry started past its share")
      assert.are.equal(0, out.charged)
      assert.are.equal(0, #backend.dead)
      for _, e in ipairs(backend.delivered) do
        assert.are.equal(0, e.attempts) -- waiting was no failed attempt
      end
    end)

    it("a scheduled slot of a workflow at its share waits while another workflow's go on", function()
      local state = require "chorus.server_state"
      local scheduler = require "chorus.scheduler"
      local log = require "chorus.log"
      local starts = { full = {}, free = {} }
      local svc = runs.service({ config = { limits = { max_inflight_runs = 4, inflight_runs_per_workflow = 1 } },
        log = function() end, log_sink = function() end })
      local function ticker(name)
        return chorus.workflow { name = name, schedule = { every = 1 }, run = function()
          table.insert(starts[name], core.now())
          return true
        end }
      end
      local saved = { runs = state.runs, workflows = state.workflows, store = state.store,
        draining = state.draining }
      state.runs, state.store, state.draining = svc, nil, false
      state.workflows = { full = { workflow = ticker("full") }, free = { workflow = ticker("free") } }
      log.set_level("error")
      local blocked_until
      local ok, err = pcall(in_loop, function()
        core.start(nil, function()
          svc:start({ workflow = blocker("full") }, {})
          blocked_until = core.now()
        end)
        core.start(nil, function()
          core.sleep(105)
          state.draining = true
        end)
        scheduler.loop()
      end)
      state.runs, state.workflows, state.store, state.draining = saved.runs, saved.workflows, saved.store,
        saved.draining
      log.set_level("info")
      assert(ok, tostring(err))
      assert.is_truthy(blocked_until)
      assert.is_true(#starts.full >= 1, "full's schedule never started a run once it had room")
      for _, at in ipairs(starts.full) do
        assert.is_true(at >= blocked_until, ("full's scheduled run started at %s, past its share"):format(at - T0))
      end
      assert.is_true(#starts.free >= 50, ("free's schedule ran %d times in 105 s"):format(#starts.free))
      assert.is_true(starts.free[1] < blocked_until)
    end)
  end)
end)
