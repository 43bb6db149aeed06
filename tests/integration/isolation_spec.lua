-- Isolation through a real server: one workflow script can harm only its own
-- runs. Each case is an attack a script could make on the process or on the
-- other workflows; the server must answer it as a failed run (or refuse it)
-- and go on serving everyone else. Runs under the ASan build too.
local H = require "tests.integration.helpers"

-- Waiting where Lua cannot yield: inside a C function that calls back into
-- the script (table.sort's comparator, tostring's __tostring, gsub's
-- replacement function, load's reader). table.concat's __index once was
-- one too; it is called from Lua now (a table with a metatable is read
-- there), so it may wait.
local WAIT_IN = [[
local chorus = require "chorus"
return chorus.workflow { name = "wait_in", run = function(ctx, input)
  local function w(v) ctx.sleep(0.05); return v end
  local cases = {
    sort = function() local t = { 3, 1, 2 }; table.sort(t, function(a, b) w(); return a < b end); return t end,
    tostring = function() return tostring(setmetatable({}, { __tostring = function() return w("x") end })) end,
    gsub = function() return (("abc"):gsub("%w", function() return w("x") end)) end,
    load = function()
      local n = 0
      local f, err = load(function() n = n + 1; if n == 1 then return w("return 1") end end)
      if not f then error(err, 0) end
      return f()
    end,
    concat = function()
      local mt = { __index = function(_, i) return w("x" .. i) end, __len = function() return 2 end }
      return table.concat(setmetatable({}, mt))
    end,
  }
  local f = cases[input.where]
  if input.pcall then
    local ok, err = pcall(f)
    return { caught = not ok, kind = type(err) == "table" and err.kind or nil }
  end
  return { value = f() }
end }
]]

-- A script that tries to reach what is shared with the server and the
-- other workflows.
local REACH = [[
local chorus = require "chorus"
local http = require "chorus.http"
local webhook = require "chorus.webhook"
local function try(f)
  local ok, err = pcall(f)
  return ok and "allowed" or tostring(type(err) == "table" and err.message or err)
end
return chorus.workflow { name = "reach", run = function(ctx, input)
  local r = {}
  local up = http.upstream("mock")
  r.upstream_config = type(up.config) .. " " .. tostring(next(up)) .. " " .. up.name
  r.upstream_write = try(function() up.name = "other" end)
  r.webhook_equal = try(function() webhook.equal = function() return true end end)
  r.set_transport = try(function() http.set_transport(function() end) end)
  r.json_encode = try(function() chorus.json.encode = function() return "{}" end end)
  r.string_rep = try(function() string.rep = nil end)
  r.ctx_mt = try(function() getmetatable(ctx).__index = function() end end)
  r.ctx_setmt = try(function() setmetatable(ctx, {}) end)
  r.rawset_module = try(function() rawset(http, "get", print) end)
  r.string_mt = getmetatable("") == nil and "hidden" or "visible"
  r.dump = (string.dump == nil and ("").dump == nil) and "absent" or "present"
  r.gc = try(function() setmetatable({}, { __gc = function() while true do end end }) end)
  r.global = try(function() counter = (counter or 0) + 1 end)
  r.resume_task = try(function() coroutine.resume(coroutine.running()) end)
  r.env_admin = try(function() return chorus.env("CHORUS_ADMIN_TOKEN") end)
  r.env_secret = try(function() return chorus.env("CHORUS_SECRET_API_KEY") end)
  r.secret_admin = try(function() return chorus.secret("CHORUS_ADMIN_TOKEN") end)
  r.secret_webhook = try(function() return chorus.secret("hook") end)
  r.secret_own = try(function() return chorus.secret("api_key") end)
  r.leak = "key=" .. chorus.secret("api_key")
  return r
end }
]]

-- Values whose metamethods loop, returned to the server or raised.
local LOOPY = [[
local chorus = require "chorus"
local function loop() while true do end end
return chorus.workflow { name = "loopy", run = function(ctx, input)
  local how = input.how
  if how == "error_tostring" then error(setmetatable({}, { __tostring = loop })) end
  if how == "error_index" then error(setmetatable({}, { __index = loop })) end
  if how == "error_tostring_raises" then error(setmetatable({}, { __tostring = function() error("nope") end })) end
  if how == "error_tostring_number" then error(setmetatable({}, { __tostring = function() return 42 end })) end
  if how == "headers_pairs" then
    return { status = 200, headers = setmetatable({}, { __pairs = loop }), body = "x" }
  end
  if how == "result_index" then return setmetatable({ status = 200 }, { __index = loop }) end
  if how == "cycle" then local t = {}; t.t = t; return t end
  return { ok = true }
end }
]]

-- Few instructions, each C work through a megabyte (a memcmp of two long
-- strings, charged to no budget by the byte): within its instruction
-- budget, but over its CPU limit within a second.
-- Or one C call comparing them 300,000 times: table.sort (10 s unstopped).
-- Or one C call reading a table through a C __index for days: table.concat.
local BURN = [[
local chorus = require "chorus"
return chorus.workflow { name = "burn", run = function(ctx, input)
  local a, b, same = ("x"):rep(1e6), ("x"):rep(1e6), 0
  local ok
  if input.how == "index" then -- reads through a C __index inside one C call, 10^12 of them
    local t = setmetatable({}, { __index = table.concat, __len = rawlen })
    ok = pcall(table.concat, t, "", 1, 1e12)
  elseif input.how == "sort" then
    local t = {}
    for i = 1, 20000 do t[i] = i % 2 == 0 and a or b end
    ok = pcall(table.sort, t)
  else
    ok = pcall(function() for _ = 1, 1e7 do if a == b then same = same + 1 end end end)
  end
  return { finished = true, caught = not ok }
end }
]]

-- A task cancelled while it holds a to-be-closed variable (a race's loser):
-- the scheduler closes it outside its resume, and its __close handler ran
-- under no budget or cap (a loop held the server; past the memory cap, the
-- memory error was raised on the server's own state and the process died).
local CLOSER = [[
local chorus = require "chorus"
local handlers = {
  loop = function() while true do end end,
  memory = function() local t, s = {}, "x" for i = 1, 28 do s = s .. s; t[i] = s end end, -- 256 MiB
}
return chorus.workflow { name = "closer", run = function(ctx, input)
  return chorus.race(
    function()
      local _ <close> = setmetatable({}, { __close = handlers[input.how] })
      ctx.sleep(60)
      return "slow"
    end,
    function() return "fast" end)
end }
]]

-- A workflow that enqueues more than limits.outbox_pending_per_workflow
-- (3 here) starts for later, catching every error.
local GREEDY = [[
local chorus = require "chorus"
return chorus.workflow { name = "greedy", run = function(ctx, input)
  local queued = 0
  for _ = 1, input.n do
    if pcall(ctx.later, input.target, {}, { delay = 3600 }) then
      queued = queued + 1
    end
  end
  return { queued = queued }
end }
]]

-- The workflow the others must not disturb.
local HONEST = [[
local chorus = require "chorus"
local http = require "chorus.http"
local webhook = require "chorus.webhook"
return chorus.workflow { name = "honest", run = function(ctx, input)
  local res = http.upstream("mock"):get("/ok")
  return { status = res.status, same = webhook.equal("abc", "abc"), differ = webhook.equal("abc", "abd"),
    encoded = chorus.json.encode({ a = 1 }), rep = ("ab"):rep(2) }
end }
]]

local ADMIN = { Authorization = "Bearer adm1n-t0ken" }

describe("isolation", function()
  local mock, dir, conf, srv

  local function post(name, input, headers)
    return H.request(srv.url .. "/workflows/" .. name, { method = "POST", body = H.encode(input or {}),
      headers = headers })
  end

  local function healthy()
    assert.are.equal(200, H.request(srv.url .. "/healthz").status)
  end

  setup(function()
    mock = H.start_mock(200)
    dir = H.temp_dir({ ["wait_in.lua"] = WAIT_IN, ["reach.lua"] = REACH, ["loopy.lua"] = LOOPY,
      ["honest.lua"] = HONEST, ["burn.lua"] = BURN, ["closer.lua"] = CLOSER, ["greedy.lua"] = GREEDY })
    conf = H.write_temp(([[
local chorus = require "chorus"
return {
  admin_token = chorus.secret("CHORUS_ADMIN_TOKEN"),
  webhook_secret = chorus.secret("hook"),
  limits = { run_instructions = 2e6, run_cpu_seconds = 0.5, outbox_pending_per_workflow = 3 },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir },
      { CHORUS_ADMIN_TOKEN = "adm1n-t0ken", CHORUS_SECRET_HOOK = "h00k-secret",
        CHORUS_SECRET_API_KEY = "k3y-of-reach" })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  describe("waiting where Lua cannot yield", function()
    for _, where in ipairs({ "sort", "tostring", "gsub", "load" }) do
      it(("fails the run with kind script (%s), and the server lives on"):format(where), function()
        local r = post("wait_in", { where = where })
        assert.are.equal(500, r.status)
        assert.are.equal("script", r.json.kind)
        assert.truthy(r.json.run_id)
        local rec = H.request(srv.url .. "/runs/" .. r.json.run_id, { headers = ADMIN })
        assert.truthy(rec.json.error.message:find("cannot wait here", 1, true), rec.body)
        -- the sleep the script asked for would have ended by now
        H.sleep(0.1)
        healthy()
      end)
      it(("is an error pcall sees, nothing left pending (%s)"):format(where), function()
        local r = post("wait_in", { where = where, pcall = true })
        assert.are.equal(200, r.status)
        assert.are.same({ caught = true, kind = "script" }, r.json)
        H.sleep(0.1)
        healthy()
      end)
    end
  end)

  it("table.concat's __index may wait: it is called from Lua", function()
    local r = post("wait_in", { where = "concat" })
    assert.are.equal(200, r.status, r.body)
    assert.are.same({ value = "x1x2" }, r.json)
  end)

  describe("the outbox", function()
    it("a workflow past limits.outbox_pending_per_workflow fails with kind outbox_full; the others enqueue", function()
      local r = post("greedy", { n = 10, target = "honest" })
      assert.are.equal(500, r.status, r.body)
      assert.are.equal("outbox_full", r.json.kind)
      local rec = H.request(srv.url .. "/runs/" .. r.json.run_id, { headers = ADMIN })
      assert.truthy(rec.json.error.message:find("limits.outbox_pending_per_workflow", 1, true), rec.body)
      -- its 3 entries stay pending: the next run of it fails at its first
      r = post("greedy", { n = 1, target = "honest" })
      assert.are.equal(500, r.status, r.body)
      assert.are.equal("outbox_full", r.json.kind)
      local box = H.request(srv.url .. "/admin/outbox", { headers = ADMIN })
      local mine = 0
      for _, e in ipairs(box.json.entries) do
        mine = mine + (e.owner == "greedy" and 1 or 0)
      end
      assert.are.equal(3, mine)
      assert.are.equal(200, post("honest").status)
      healthy()
    end)
  end)

  describe("shared state", function()
    it("no module, metatable, global or coroutine of the server is reachable", function()
      local r = post("reach")
      assert.are.equal(200, r.status, r.body)
      local j = r.json
      assert.are.equal("nil nil mock", j.upstream_config) -- no config, no raw fields
      assert.truthy(j.upstream_write:find("read-only", 1, true))
      assert.truthy(j.webhook_equal:find("read-only", 1, true))
      assert.truthy(j.set_transport:find("nil value", 1, true)) -- not in the script's view
      assert.truthy(j.json_encode:find("read-only", 1, true))
      assert.truthy(j.string_rep:find("read-only", 1, true))
      assert.truthy(j.ctx_mt:find("nil value", 1, true)) -- getmetatable(ctx) is nil
      assert.truthy(j.ctx_setmt:find("belongs to the runtime", 1, true))
      assert.truthy(j.rawset_module:find("belongs to the runtime", 1, true))
      assert.are.equal("hidden", j.string_mt)
      assert.are.equal("absent", j.dump)
      assert.truthy(j.gc:find("__gc is not allowed", 1, true))
      assert.truthy(j.global:find("cannot assign the global 'counter'", 1, true))
      assert.truthy(j.resume_task:find("only coroutines the script created", 1, true))
      assert.truthy(j.env_admin:find("holds a secret", 1, true))
      assert.truthy(j.env_secret:find("holds a secret", 1, true))
      assert.truthy(j.secret_admin:find("server's own secrets", 1, true))
      assert.truthy(j.secret_webhook:find("server's own secrets", 1, true))
      assert.are.equal("allowed", j.secret_own)
      -- a secret the run returns is redacted from its answer, as from its record
      assert.are.equal("key=[REDACTED]", j.leak)
      assert.is_nil(r.body:find("k3y-of-reach", 1, true))
    end)

    it("the other workflows and the admin token work as before", function()
      post("reach")
      local r = post("honest")
      assert.are.equal(200, r.status, r.body)
      assert.are.same({ status = 200, same = true, differ = false, encoded = '{"a":1}', rep = "abab" }, r.json)
      local wrong = { Authorization = "Bearer wrong" }
      assert.are.equal(401, H.request(srv.url .. "/admin/outbox", { headers = wrong }).status)
      assert.are.equal(200, H.request(srv.url .. "/admin/outbox", { headers = ADMIN }).status)
    end)
  end)

  describe("CPU spent in C calls", function()
    for _, how in ipairs({ "compare", "sort" }) do
      it(("a run burning CPU in big C calls is stopped (kind budget; %s); the others answered"):format(how), function()
        local burner = H.request_async(srv.url .. "/workflows/burn", { method = "POST", body = H.encode({ how = how }),
          max_time = 60 })
        H.sleep(0.2) -- the burner holds the loop now (or has been stopped already)
        -- answered once the burner is stopped: well within 5 s (unstopped,
        -- it held the loop for as long as its instruction budget lasted)
        local r = H.request(srv.url .. "/workflows/honest", { method = "POST", body = "{}", max_time = 5 })
        assert.are.equal(200, r.status, r.body)
        assert.are.equal(200, r.json.status)
        local b = burner.wait(60)
        assert.are.equal(500, b.status, b.body)
        assert.are.equal("budget", b.json.kind, b.body)
        local rec = H.request(srv.url .. "/runs/" .. b.json.run_id, { headers = ADMIN })
        assert.truthy(rec.json.error.message:find("limits.run_cpu_seconds", 1, true), rec.body)
        healthy()
      end)
    end
  end)

  it("a run reading through a C __index in one C call is stopped (kind budget); the others answered", function()
    local burner = H.request_async(srv.url .. "/workflows/burn", { method = "POST", body = H.encode({ how = "index" }),
      max_time = 60 })
    H.sleep(0.2)
    -- unstopped, the burner held the loop for days
    local r = H.request(srv.url .. "/workflows/honest", { method = "POST", body = "{}", max_time = 20 })
    assert.are.equal(200, r.status, r.body)
    local b = burner.wait(60)
    assert.are.equal(500, b.status, b.body)
    assert.are.equal("budget", b.json.kind, b.body)
    healthy()
  end)

  describe("__close of a task the scheduler cancels", function()
    for how, kind in pairs({ loop = "budget", memory = "memory" }) do
      it(("runs under the run's limits (%s): 500 kind %s, the others are answered"):format(how, kind), function()
        local r = H.request(srv.url .. "/workflows/closer", { method = "POST", body = H.encode({ how = how }),
          max_time = 60 })
        assert.are.equal(500, r.status, r.body)
        assert.are.equal(kind, r.json.kind, r.body)
        healthy()
        local honest = post("honest")
        assert.are.equal(200, honest.status, honest.body)
        assert.are.equal(200, honest.json.status)
      end)
    end
  end)

  describe("metamethods of what a run returns or raises", function()
    for _, how in ipairs({ "error_tostring", "error_index" }) do
      it(("run under the run's budget (%s): 500 with the run id, server alive"):format(how), function()
        local r = post("loopy", { how = how }, { ["Idempotency-Key"] = "loopy-" .. how })
        assert.are.equal(500, r.status, r.body)
        assert.are.equal("application/problem+json", r.headers["content-type"])
        assert.truthy(r.json.run_id)
        healthy()
        -- the key is settled: the same request replays the stored 500
        local again = post("loopy", { how = how }, { ["Idempotency-Key"] = "loopy-" .. how })
        assert.are.equal(500, again.status)
        assert.are.equal("true", again.headers["idempotent-replayed"])
      end)
    end

    it("a result leaves the run as plain data: its metamethods never run in the server", function()
      local r = post("loopy", { how = "headers_pairs" })
      assert.are.equal(200, r.status, r.body)
      assert.are.equal("x", r.body)
      r = post("loopy", { how = "result_index" })
      assert.are.equal(200, r.status, r.body)
      assert.are.same({ status = 200 }, r.json)
      healthy()
    end)

    for _, how in ipairs({ "error_tostring_raises", "error_tostring_number", "cycle" }) do
      it(("an error that cannot be described still ends the run normally (%s)"):format(how), function()
        local r = post("loopy", { how = how }, { ["Idempotency-Key"] = "loopy-" .. how })
        assert.are.equal(500, r.status, r.body)
        assert.truthy(r.json.run_id)
        local rec = H.request(srv.url .. "/runs/" .. r.json.run_id, { headers = ADMIN })
        assert.are.equal("failed", rec.json.status)
        local again = post("loopy", { how = how }, { ["Idempotency-Key"] = "loopy-" .. how })
        assert.are.equal(500, again.status)
        assert.are.equal("true", again.headers["idempotent-replayed"])
      end)
    end
  end)
end)

-- What the server reads of a run after it has ended (its record's JSON,
-- the redaction of its input, its spans for the exporter) runs outside the
-- run's budget. A script reached some of it: ctx.timeline was the record's
-- timeline, ctx.input the record's input and a request's `upstream` went
-- into the timeline. A metamethod that behaves in the run and loops after
-- it (or a table shared 2^40 times over) then held the server's thread.
local AFTER = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "after", redact = { "card" }, run = function(ctx, input)
  local done = false
  local function late() if done then while true do end end return "x" end
  local evil = setmetatable({}, { __tostring = late, __index = function() return late() end })
  local dag = {}
  for _ = 1, 40 do dag = { dag, dag } end
  local how = input.how
  if how == "timeline" then
    local tl = ctx.timeline
    if tl then
      tl[#tl + 1] = evil
      setmetatable(tl, { __index = function() return late() end })
    end
  elseif how == "timeline_dag" then
    local tl = ctx.timeline
    if tl then tl[#tl + 1] = dag end
  elseif how == "input" then
    ctx.input[evil] = 1
  elseif how == "input_dag" then
    ctx.input.card = dag
  elseif how == "upstream" then
    pcall(http.request, { url = input.url, upstream = evil })
  end
  done = true
  return { how = how }
end }
]]

describe("isolation: what the server reads after a run", function()
  local mock, dir, conf, srv

  setup(function()
    mock = H.start_mock(200)
    dir = H.temp_dir({ ["after.lua"] = AFTER })
    -- spans go to a port nobody listens on: made and encoded all the same
    conf = H.write_temp([[
return { admin_token = "adm1n-t0ken", telemetry = { otlp_endpoint = "http://127.0.0.1:9", interval = 0.1 } }
]])
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  for _, how in ipairs({ "timeline", "timeline_dag", "input", "input_dag", "upstream" }) do
    it(("never runs a script's value without its budget (%s): answered, record readable"):format(how), function()
      local r = H.request(srv.url .. "/workflows/after", { method = "POST", max_time = 20,
        body = H.encode({ how = how, url = mock.url .. "/ok", card = "4111" }) })
      assert.are.equal(200, r.status, r.body)
      assert.are.same({ how = how }, r.json)
      H.sleep(0.3) -- the spans are encoded and sent meanwhile
      assert.are.equal(200, H.request(srv.url .. "/healthz", { max_time = 5 }).status)
      local rec = H.request(srv.url .. "/runs/" .. r.headers["x-run-id"], { headers = ADMIN, max_time = 5 })
      assert.are.equal(200, rec.status, rec.body)
      assert.are.equal("succeeded", rec.json.status)
      -- the record keeps the input the request sent, masked
      assert.are.same({ how = how, url = mock.url .. "/ok", card = "[REDACTED]" }, rec.json.input)
    end)
  end
end)

describe("isolation: a run's HTTP answer", function()
  local dir, srv

  setup(function()
    dir = H.temp_dir({ ["odd.lua"] = [[
local chorus = require "chorus"
return chorus.workflow { name = "odd", run = function(_, input)
  local f = function() end
  if input.how == "body" then return { status = 200, body = f } end
  if input.how == "table" then return { status = 200, body = {} } end
  if input.how == "header" then return { status = 200, body = "x", headers = { ["X-F"] = f } } end
  if input.how == "informational" then return { status = 101, body = "x" } end
  return f
end }
]], ["loud.lua"] = [[
local chorus = require "chorus"
return chorus.workflow { name = "loud", run = function(ctx, input)
  local big = ("x"):rep(1024 * 1024)
  for i = 1, 100 do ctx.log.info(big, { i = i }) end
  for i = 1, 100 do print(big, i) end
  error({ kind = "loud", message = big, detail = big })
end }
]], ["headers.lua"] = [[
local chorus = require "chorus"
return chorus.workflow { name = "headers", run = function(ctx, input)
  local h = {}
  for i = 1, input.count do h["X-H" .. i] = "v" end
  return { status = 200, headers = h, body = "ok" }
end }
]] })
    srv = H.start_server({ "--scripts", dir })
  end)

  teardown(function() H.clean(srv, dir) end)

  -- the answer is built after the run, outside its budget: 300,000 headers
  -- held the server's thread 1.3 s, 600,000 ran the handler out of memory
  -- tostring answered "function: 0x55..." (the server's memory layout)
  for _, how in ipairs({ "body", "table", "header", "function", "informational" }) do
    it(("answers a result that is no HTTP answer (%s) with a 500 of kind bad_response, no address"):format(how),
      function()
        local r = H.request(srv.url .. "/workflows/odd", { method = "POST", body = ('{"how":"%s"}'):format(how) })
        assert.are.equal(500, r.status, r.body)
        for k, v in pairs(r.headers) do
          assert.is_nil(v:find("0x", 1, true), k .. ": " .. v)
        end
        assert.is_nil(r.body:find("0x", 1, true), r.body)
        assert.truthy(r.json.run_id, r.body)
        assert.are.equal("bad_response", r.json.kind, r.body)
      end)
  end

  -- the log every workflow shares: a run logging megabyte lines wrote
  -- 800 MB there (the line cap alone), its error a line of its size
  it("writes at most limits.run_log_bytes of a run's lines to the log, and a brief line of its error", function()
    local before = #H.read(srv.log)
    local r = H.request(srv.url .. "/workflows/loud", { method = "POST", body = "{}", max_time = 60 })
    assert.are.equal(500, r.status, r.body)
    assert.are.equal("loud", r.json.kind, r.body)
    local text = H.read(srv.log):sub(before + 1)
    assert.truthy(#text < 4 * 1024 * 1024 + 64 * 1024, #text) -- the default 4 MiB
    assert.truthy(text:find("limits.run_log_bytes", 1, true))
    local failed
    for line in text:gmatch("[^\n]+") do
      failed = failed or line:find('"run failed"', 1, true) and line
    end
    assert.truthy(failed and #failed < 16 * 1024, failed and #failed)
  end)

  it("has at most 100 headers: past them a 500 with the run id, the run recorded", function()
    local ok = H.request(srv.url .. "/workflows/headers", { method = "POST", body = H.encode({ count = 100 }) })
    assert.are.equal(200, ok.status, ok.body)
    for i = 1, 100 do -- every one of them reaches the client (past the 64th they were dropped)
      assert.are.equal("v", ok.headers["x-h" .. i], "x-h" .. i)
    end
    local r = H.request(srv.url .. "/workflows/headers", { method = "POST", body = H.encode({ count = 300000 }),
      headers = { ["Idempotency-Key"] = "many-headers" }, max_time = 60 })
    assert.are.equal(500, r.status, r.body)
    assert.truthy(r.json.detail:find("more than 100 headers", 1, true), r.body)
    local again = H.request(srv.url .. "/workflows/headers", { method = "POST", body = H.encode({ count = 300000 }),
      headers = { ["Idempotency-Key"] = "many-headers" }, max_time = 60 })
    assert.are.equal(500, again.status)
    assert.are.equal("true", again.headers["idempotent-replayed"])
  end)
end)

-- The metrics' series are the server's, shared by every workflow: each
-- workflow makes at most metrics.PER_WORKFLOW new series of a metric. Under
-- one process-wide cap, a workflow calling 1,000 made-up hosts (or naming
-- 334 breakers) sent every other workflow's new hosts and breakers to
-- "_other" for the process's life.
describe("isolation: metric series", function()
  local dir, srv, mock

  setup(function()
    mock = H.start_mock(200)
    dir = H.temp_dir({ ["hosts.lua"] = [[
local chorus = require "chorus"
local http = require "chorus.http"
local breaker = require "chorus.breaker"
return chorus.workflow { name = "hosts", run = function(ctx, input)
  for i = 1, input.count do -- distinct hosts of the loopback net, a port that refuses
    pcall(http.get, ("http://127.0.%d.%d:9/"):format(i // 250, i % 250 + 1), { timeout = 2 })
    local b = breaker.new { name = "b" .. i }
    pcall(b.call, b, function() end)
  end
  return { ok = true }
end }
]], ["honest.lua"] = [[
local chorus = require "chorus"
local http = require "chorus.http"
local breaker = require "chorus.breaker"
return chorus.workflow { name = "honest", run = function(ctx, input)
  breaker.new { name = "mine" }:call(function() end)
  return { status = http.get(input.url).status }
end }
]] })
    srv = H.start_server({ "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir) end)

  it("a workflow past its share of series leaves the other workflows' new series their own", function()
    local r = H.request(srv.url .. "/workflows/hosts", { method = "POST", body = H.encode({ count = 1100 }),
      max_time = 120 })
    assert.are.equal(200, r.status, r.body)
    local h = H.request(srv.url .. "/workflows/honest", { method = "POST",
      body = H.encode({ url = mock.url .. "/ok" }) })
    assert.are.equal(200, h.status, h.body)
    local text = H.request(srv.url .. "/metrics").body
    local host = mock.url:match("^https?://([^/]+)")
    assert.truthy(text:find(('chorus_http_calls_total{upstream="%s",status="200",error=""} 1'):format(host), 1, true),
      text)
    assert.truthy(text:find(('chorus_http_call_duration_seconds_count{upstream="%s"} 1'):format(host), 1, true))
    assert.truthy(text:find('chorus_breaker_state{breaker="honest/mine",state="closed"} 1', 1, true))
    -- the hostile workflow's own calls past its share count as _other
    assert.truthy(text:find('chorus_http_calls_total{upstream="_other",status="_other",error="_other"}', 1, true))
  end)
end)

-- An upstream's breaker is every workflow's: a call failing under limits
-- its script chose (a max_response_bytes of 1, a timeout of 50 ms against
-- the upstream's 30 s) said nothing of the upstream, yet counted as a
-- failure: five such calls opened the breaker, every workflow's calls to
-- the upstream failing with breaker_open for open_for seconds.
describe("isolation: an upstream's breaker", function()
  local dir, srv, mock, conf

  setup(function()
    mock = H.start_mock(200)
    dir = H.temp_dir({ ["tight.lua"] = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "tight", run = function(ctx, input)
  local up, kinds = http.upstream("mock"), {}
  for i = 1, 20 do
    local ok, err = pcall(up.get, up, input.path, input.opts)
    kinds[i] = ok and "ok" or err.kind
  end
  return { kinds = kinds }
end }
]], ["honest.lua"] = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "honest", run = function(ctx, input)
  return { status = http.upstream("mock"):get("/ok").status }
end }
]] })
    conf = H.write_temp(([[
return { upstreams = { mock = { base_url = %q,
  breaker = { window = 10, min_calls = 5, failure_rate = 50, open_for = 60 } } } }
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  for how, input in pairs({ max_response_bytes = { path = "/ok", opts = { max_response_bytes = 1 } },
    timeout = { path = "/ok?delay=200", opts = { timeout = 0.05 } } }) do
    it(("is not opened by one workflow's calls failing under its own limits (%s)"):format(how), function()
      local r = H.request(srv.url .. "/workflows/tight", { method = "POST", body = H.encode(input), max_time = 30 })
      assert.are.equal(200, r.status, r.body)
      for _, kind in ipairs(r.json.kinds) do
        assert.are_not.equal("breaker_open", kind, r.body)
      end
      local h = H.request(srv.url .. "/workflows/honest", { method = "POST", body = "{}" })
      assert.are.equal(200, h.status, h.body)
      assert.are.equal(200, h.json.status, h.body)
    end)
  end
end)

-- A workflow script that makes input.n calls at once (each returns the
-- Lua expression `call`) and answers how many ended how: { [value or
-- error kind] = count }.
local function settled_counts(name, call)
  return ([[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = %q, run = function(ctx, input)
  local fns = {}
  for i = 1, input.n do
    fns[i] = function() return %s end
  end
  local kinds = {}
  for _, r in ipairs(chorus.all_settled(table.unpack(fns))) do
    local k = r.ok and tostring(r.value) or r.err.kind
    kinds[k] = (kinds[k] or 0) + 1
  end
  return kinds
end }
]]):format(name, call)
end

-- Each HTTP call holds a socket, a file descriptor of the process: one
-- workflow's runs holding 20,000 calls to an address that never answered
-- used every descriptor, and the server accepted no request of any
-- workflow. A workflow has at most limits.http_calls_per_workflow calls in
-- flight (by default half the open-file limit).
describe("isolation: HTTP calls in flight", function()
  local dir, srv, mock, conf

  setup(function()
    mock = H.start_mock(200)
    dir = H.temp_dir({ ["many.lua"] = settled_counts("many", "http.get(input.url).status"),
      ["honest.lua"] = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "honest", run = function(ctx, input)
  return { status = http.get(input.url).status }
end }
]], ["caller.lua"] = settled_counts("caller", 'ctx.call("honest", { url = input.url }).status') })
    conf = H.write_temp("return { limits = { http_calls_per_workflow = 20 } }")
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  it("refuses a workflow's calls past its share (kind calls_full); the others' calls go out", function()
    local many = H.request_async(srv.url .. "/workflows/many", { method = "POST", max_time = 30,
      body = H.encode({ n = 60, url = mock.url .. "/ok?delay=1500" }) })
    H.sleep(0.5) -- its calls are in flight
    local h = H.request(srv.url .. "/workflows/honest", { method = "POST",
      body = H.encode({ url = mock.url .. "/ok" }) })
    assert.are.equal(200, h.status, h.body)
    assert.are.equal(200, h.json.status)
    local r = many.wait(30)
    assert.are.equal(200, r.status, r.body)
    assert.are.same({ ["200"] = 20, calls_full = 40 }, r.json)
    -- given back as they ended: the next run has the whole share again
    local again = H.request(srv.url .. "/workflows/many", { method = "POST", max_time = 30,
      body = H.encode({ n = 20, url = mock.url .. "/ok" }) })
    assert.are.same({ ["200"] = 20 }, again.json)
  end)

  it("counts a child run's calls in the share of the workflow that called it", function()
    local caller = H.request_async(srv.url .. "/workflows/caller", { method = "POST", max_time = 30,
      body = H.encode({ n = 30, url = mock.url .. "/ok?delay=1500" }) })
    H.sleep(0.5) -- its children's calls are in flight: honest's own share is untouched
    local h = H.request(srv.url .. "/workflows/honest", { method = "POST",
      body = H.encode({ url = mock.url .. "/ok" }) })
    assert.are.equal(200, h.status, h.body)
    local r = caller.wait(30)
    assert.are.equal(200, r.status, r.body)
    assert.are.same({ ["200"] = 20, calls_full = 10 }, r.json)
  end)
end)
