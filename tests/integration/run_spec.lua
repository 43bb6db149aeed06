-- `chorus run` / `check` / `version` as a user runs them: a real process,
-- real HTTP to the mock upstream on loopback.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/"

local function input_for(mock)
  return H.encode({ mock = mock.url })
end

local function one_line(s)
  return s:gsub("\n$", ""):find("\n") == nil
end

describe("chorus run", function()
  local mock

  setup(function()
    mock = H.start_mock(120)
  end)

  teardown(function() H.clean(mock) end)

  before_each(function()
    mock.reset()
  end)

  it("fans out concurrently: 200 ms and 300 ms upstreams are in flight at once (the mock counts)", function()
    local env = {
      CHORUS_UPSTREAM_CRM = mock.url .. "/crm?delay=200",
      CHORUS_UPSTREAM_MARKETING = mock.url .. "/marketing?delay=300",
    }
    mock.reset()
    local r = H.chorus_run({ "run", "examples/fanout/fanout.lua", "--input", '{"type":"signup"}' }, env)
    assert.are.equal(0, r.code, r.stderr)
    local out = H.decode(r.stdout)
    assert.are.equal(200, out.status)
    assert.is_true(out.json.crm.ok)
    assert.is_true(out.json.marketing.ok)
    assert.is_true(r.elapsed >= 0.3, ("took %.3f s, faster than the slowest call"):format(r.elapsed))
    -- concurrency as the upstream saw it, not a wall-clock bound that a busy machine breaks
    local stats = mock.stats()
    assert.are.equal(2, stats.max_in_flight, "the two calls were not in flight together")
    assert.are.equal(1, stats.by_path["/crm/events"])
    assert.are.equal(1, stats.by_path["/marketing/events"])
  end)

  it("keeps delivering to one API when the other is down (all_settled)", function()
    local env = {
      CHORUS_UPSTREAM_CRM = mock.url .. "/crm?status=503",
      CHORUS_UPSTREAM_MARKETING = "http://127.0.0.1:9",
    }
    local r = H.chorus_run({ "run", "examples/fanout/fanout.lua", "--input", '{"type":"signup"}' }, env)
    assert.are.equal(0, r.code, r.stderr)
    local out = H.decode(r.stdout)
    assert.are.equal(207, out.status)
    assert.are.same({ ok = false, status = 503 }, out.json.crm)
    assert.are.same({ ok = false, error = "connect" }, out.json.marketing)
  end)

  it("sends the deterministic idempotency key of ctx.key on each call", function()
    local env = {
      CHORUS_UPSTREAM_CRM = mock.url .. "/crm",
      CHORUS_UPSTREAM_MARKETING = mock.url .. "/marketing",
    }
    local r = H.chorus_run({ "run", "examples/fanout/fanout.lua", "--input", '{"type":"signup"}' }, env)
    assert.are.equal(0, r.code, r.stderr)
    local keys = 0
    for key, count in pairs(mock.stats().effects) do
      assert.are.equal(1, count)
      assert.truthy(key:match("^[%x-]+:crm$") or key:match("^[%x-]+:marketing$"), key)
      keys = keys + 1
    end
    assert.are.equal(2, keys)
  end)

  it("cancels the other in-flight transfer when a call in chorus.all fails", function()
    local r = H.chorus_run({ "run", FIX .. "cancel_on_failure.lua", "--input", input_for(mock) })
    assert.are.equal(1, r.code)
    assert.is_true(one_line(r.stderr), r.stderr)
    local err = H.decode(r.stderr)
    assert.are.equal("boom", err.error.kind)
    -- the mock notices the closed connection within ~50 ms
    local stats
    for _ = 1, 40 do
      stats = mock.stats()
      if stats.aborted >= 1 then break end
      os.execute("sleep 0.05")
    end
    assert.are.equal(1, stats.aborted)
    assert.are.equal(0, stats.completed)
  end)

  it("sends every request header whole, however many and however long", function()
    local r = H.chorus_run({ "run", FIX .. "big_headers.lua", "--input", input_for(mock) })
    assert.are.equal(0, r.code, r.stderr)
    local sizes = H.decode(r.stdout)
    assert.are.equal(6000, sizes.big)
    for i = 1, 40 do
      assert.are.equal(i * 10, sizes.small[i])
    end
  end)

  it("cuts off an upstream that never answers with kind = timeout", function()
    local r = H.chorus_run({ "run", FIX .. "hang_timeout.lua", "--input", input_for(mock) })
    assert.are.equal(1, r.code)
    local err = H.decode(r.stderr).error
    assert.are.equal("timeout", err.kind)
    assert.are.equal("GET", err.method)
  end)

  it("runs all, all_settled, race and any", function()
    local r = H.chorus_run({ "run", FIX .. "concurrency.lua", "--input", input_for(mock) })
    assert.are.equal(0, r.code, r.stderr)
    local out = H.decode(r.stdout)
    assert.are.same({ "/a", "/b" }, out.all)
    assert.are.same({ true, 200, false, "reset" }, out.settled)
    assert.are.equal("fast", out.race)
    assert.are.equal("/any", out.any)
  end)

  it("reads --input from a file with @", function()
    local path = H.write_temp('{"type":"from-file"}', ".json")
    local env = { CHORUS_UPSTREAM_CRM = mock.url, CHORUS_UPSTREAM_MARKETING = mock.url }
    local r = H.chorus_run({ "run", "examples/fanout/fanout.lua", "--input", "@" .. path }, env)
    os.remove(path)
    assert.are.equal(0, r.code, r.stderr)
  end)
end)

describe("chorus run with bad input", function()
  local function fails(args, code, pattern)
    local r = H.chorus_run(args, nil, 20)
    assert.are.equal(code, r.code, r.stderr)
    assert.are.equal("", r.stdout)
    assert.is_true(one_line(r.stderr), "not one line: " .. r.stderr)
    assert.truthy(r.stderr:find(pattern), ("%q not in %q"):format(pattern, r.stderr))
    return r
  end

  it("rejects malformed --input JSON with exit 2", function()
    fails({ "run", "examples/fanout/fanout.lua", "--input", "{bad" }, 2, "--input is not valid JSON")
  end)

  it("rejects --input that is not strict JSON with exit 2, naming the offset", function()
    fails({ "run", "examples/fanout/fanout.lua", "--input", "-01" }, 2,
      "--input is not valid JSON: invalid JSON at offset 1: leading zero in a number")
    fails({ "run", "examples/fanout/fanout.lua", "--input", '{"a":2.}' }, 2,
      "invalid JSON at offset 7: digit expected after the decimal point")
  end)

  it("rejects a missing script with exit 2", function()
    fails({ "run", "no/such/script.lua" }, 2, "cannot read script")
  end)

  it("rejects unknown options and commands with exit 2", function()
    fails({ "run", "examples/fanout/fanout.lua", "--nope" }, 2,
      "unknown option '%-%-nope' %(see 'chorus run %-%-help'%)")
    fails({ "frobnicate" }, 2, "unknown command 'frobnicate' %(see 'chorus %-%-help'%)")
    fails({ "run" }, 2, "missing argument 'script'")
    fails({ "run", "a.lua", "b.lua" }, 2, "too many arguments")
    fails({ "run", "examples/fanout/fanout.lua", "--input" }, 2, "'%-%-input' requires an argument")
    fails({}, 2, "no command given")
  end)

  it("reports a syntax error with file and line, exit 1", function()
    fails({ "run", FIX .. "syntax_error.lua" }, 1, "syntax_error.lua:4:")
  end)

  it("reports a script that returns no workflow, exit 1", function()
    fails({ "run", FIX .. "no_workflow.lua" }, 1, "must end with `return chorus.workflow")
  end)

  it("stops an infinite loop with the instruction budget, exit 1", function()
    local r = fails({ "run", FIX .. "infinite_loop.lua" }, 1, "instruction budget")
    assert.are.equal("budget", H.decode(r.stderr).error.kind)
  end)

  it("stops a loop that pcalls around the budget error", function()
    fails({ "run", FIX .. "swallowing_loop.lua" }, 1, "instruction budget")
  end)

  it("stops a runaway inside a coroutine the script made (resume and wrap)", function()
    local r = fails({ "run", FIX .. "coroutine_loop.lua", "--input", '{"wrap":true}' }, 1, "instruction budget")
    assert.are.equal("budget", H.decode(r.stderr).error.kind)
    fails({ "run", FIX .. "coroutine_loop.lua" }, 1, "instruction budget")
  end)

  it("keeps coroutine.create, resume, yield and wrap working in scripts", function()
    local r = H.chorus_run({ "run", FIX .. "coroutine_ok.lua" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ first = 2, second = 20, y = "y", status = "suspended", caught = true, err = "boom",
      running = "cannot resume non-suspended coroutine", closed = "in close" }, H.decode(r.stdout))
  end)

  it("stops a runaway that yields between its loops", function()
    fails({ "run", FIX .. "yielding_loop.lua" }, 1, "instruction budget")
  end)

  it("stops the whole run when one task runs away, even inside all_settled", function()
    fails({ "run", FIX .. "settled_loop.lua" }, 1, "instruction budget")
  end)

  it("stops a memory bomb at the memory cap, exit 1", function()
    local r = fails({ "run", FIX .. "memory_bomb.lua" }, 1, "memory cap")
    assert.are.equal("memory", H.decode(r.stderr).error.kind)
  end)

  it("stops a script whose top level never ends", function()
    fails({ "run", FIX .. "toplevel_loop.lua" }, 1, "instruction budget")
  end)

  it("refuses I/O while a script loads", function()
    fails({ "run", FIX .. "toplevel_http.lua" }, 1, "I/O is not allowed while a script loads")
  end)
end)

describe("the sandbox", function()
  it("keeps io, os.execute, package, debug and bytecode away from scripts", function()
    local r = H.chorus_run({ "run", FIX .. "sandboxed.lua" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({
      io = false, os_execute = false, loadfile = false, dofile = false, package = false,
      debug = false, require_io = false, string_dump = false, bytecode = false,
    }, H.decode(r.stdout))
  end)
end)

describe("chorus check", function()
  it("passes good scripts and names each", function()
    local r = H.chorus_run({ "check", "examples/fanout/fanout.lua" })
    assert.are.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("ok   examples/fanout/fanout.lua (workflow fanout)", 1, true))
  end)

  it("fails when any script fails, without side effects", function()
    local r = H.chorus_run({ "check", "examples/fanout/fanout.lua", FIX .. "syntax_error.lua",
      FIX .. "toplevel_http.lua" })
    assert.are.equal(1, r.code)
    assert.truthy(r.stdout:find("FAIL syntax error", 1, true))
    assert.truthy(r.stderr:find("2 of 3 scripts failed", 1, true))
  end)
end)

describe("chorus version", function()
  it("prints the version", function()
    local r = H.chorus_run({ "version" })
    assert.are.equal(0, r.code)
    assert.truthy(r.stdout:match("^chorus %d+%.%d+%.%d+ %(Lua 5%.4%)"))
  end)
end)

-- A server that starts on a folder resumes every unfinished run in it, as
-- after a crash, and a `chorus run --data` still running there was one of
-- them: its run went on twice at once (its call in flight sent again, its
-- end written by both). The runs of a live `chorus run` are left to it,
-- and resumed by the server only once that process is gone.
describe("chorus run --data beside a server starting on the folder", function()
  local mock, dir, data, srv

  local SLOW = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "dup", run = function(ctx)
  http.post("%s/charge", { json = {}, idempotency_key = ctx.key "c" })
  return http.get("%s/slow?delay=3000", { timeout = 30 }).status
end }
]]

  setup(function()
    mock = H.start_mock(120)
    dir = H.temp_dir({ ["dup.lua"] = SLOW:format(mock.url, mock.url) })
  end)

  teardown(function() H.clean(srv, mock, dir, data) end)

  before_each(function()
    mock.reset()
    data = H.temp_dir()
  end)

  after_each(function()
    if srv then
      srv.stop()
      srv = nil
    end
    os.execute("rm -rf " .. H.quote(data))
  end)

  -- `chorus run` in the background, its pid and its stdout's file
  local function run_in_background()
    local out = os.tmpname()
    local p = assert(io.popen(("sh -c 'echo $$; exec %s run %s --data %s >%s 2>/dev/null'")
      :format(H.chorus, H.quote(dir .. "/dup.lua"), H.quote(data), H.quote(out))))
    local pid = assert(tonumber(p:read("l")))
    assert.truthy(H.eventually(function() return (mock.stats().by_path["/slow"] or 0) > 0 end, 10))
    return p, pid, out
  end

  local function runs()
    return H.chorus_run({ "runs", "list", "--data", data }).stdout
  end

  it("leaves a live `chorus run`'s run to it", function()
    local p, _, out = run_in_background()
    srv = H.start_server({ "--scripts", dir, "--data", data })
    p:close() -- its run ends
    assert.are.equal("200", H.read(out):match("%d+"))
    os.remove(out)
    H.sleep(1.5) -- (a server that resumed it too would be sending its call again now)
    assert.are.equal(1, mock.stats().by_path["/slow"])
    assert.are.equal(1, mock.stats().by_path["/charge"])
    assert.truthy(runs():find('"succeeded"', 1, true))
  end)

  it("resumes the run of a `chorus run` killed while the server runs", function()
    local p, pid, out = run_in_background()
    srv = H.start_server({ "--scripts", dir, "--data", data })
    os.execute("kill -KILL " .. pid)
    p:close()
    os.remove(out)
    assert.truthy(H.eventually(function() return runs():find('"succeeded"', 1, true) end, 15),
      "the server did not resume the run: " .. runs())
    assert.are.equal(2, mock.stats().by_path["/slow"]) -- the call in flight at the kill, sent again
    assert.are.equal(1, mock.stats().by_path["/charge"]) -- replayed from the journal
  end)

  -- (its run was left running until the server's next start)
  it("resumes the run of a `chorus run` started and killed while the server runs", function()
    srv = H.start_server({ "--scripts", dir, "--data", data })
    local p, pid, out = run_in_background()
    os.execute("kill -KILL " .. pid)
    p:close()
    os.remove(out)
    assert.truthy(H.eventually(function() return runs():find('"succeeded"', 1, true) end, 15),
      "the server did not resume the run: " .. runs())
    assert.are.equal(2, mock.stats().by_path["/slow"])
    assert.are.equal(1, mock.stats().by_path["/charge"])
  end)
end)
