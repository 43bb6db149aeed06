-- The sandbox against a script attacking it (lua/chorus/sandbox.lua): each
-- case is a hole a review found, kept closed.
local core = require "chorus.core"
local sandbox = require "chorus.sandbox"
local script = require "chorus.script"
local testing = require "chorus.testing"

-- Runs source as a workflow script's chunk in a fresh sandbox, as a run
-- with opts; returns ok, value.
local function run_script(source, opts)
  local chunk = assert(load(source, "=script", "t", sandbox.env()))
  return core.run(opts or { instructions = 1000000 }, chunk)
end

describe("sandbox", function()
  before_each(testing.reset)

  describe("pairs on a view or on the sealed globals", function()
    it("does not hand out the table behind the globals: a run cannot set one through it", function()
      local wf = assert(script.compile([[
        local chorus = require "chorus"
        return chorus.workflow { name = "w", run = function()
          local _, g = pairs(_G)
          g.counter = (g.counter or 0) + 1
          return counter
        end }
      ]], "inline.lua"))
      local r = testing.run(wf, {})
      assert.is_false(r.ok)
      assert.matches("cannot assign the global 'counter'", tostring(r.error.message or r.error), 1, true)
      r = testing.run(wf, {})
      assert.is_false(r.ok) -- nothing was left behind by the first run
    end)

    it("still lists the globals and a module's functions", function()
      local ok, value = run_script([[
        local n, seen = 0, {}
        for k in pairs(require "chorus.http") do seen[k] = true end
        for k in pairs(string) do n = n + 1 end
        return { get = seen.get, string = n > 10 }
      ]])
      assert.is_true(ok, tostring(value))
      assert.are.same({ get = true, string = true }, value)
    end)

    it("does not hand out the table behind a module's or a library's view", function()
      for _, lib in ipairs({ 'require "chorus.http"', 'require "chorus"', "require('chorus').json", "string",
          "table", "coroutine" }) do
        local ok, err = run_script(([[
          local _, inner = pairs(%s)
          inner.get = function() return "forged" end
        ]]):format(lib))
        assert.is_false(ok, lib)
        assert.matches("is read-only in workflow scripts", tostring(err.message or err), 1, true)
      end
    end)
  end)
end)

describe("sandbox: loops inside one C call", function()
  local HUGE_LEN = "setmetatable({}, { __len = function() return math.maxinteger - 1 end })"
  -- #t is 2^40 though t holds 41 elements: # finds that border by doubling
  local SPARSE = "(function() local t = {} for k = 40, 0, -1 do t[1 << k] = k end return t end)()"

  for name, call in pairs({
    move = "table.move({}, 1, math.maxinteger - 1, 1)",
    move_to = "table.move({}, 1, math.maxinteger - 1, 1, {})",
    insert_len = ("table.insert(%s, 1, 0)"):format(HUGE_LEN),
    remove_len = ("table.remove(%s, 1)"):format(HUGE_LEN),
    insert_sparse = ("table.insert(%s, 1, 0)"):format(SPARSE),
    remove_sparse = ("table.remove(%s, 1)"):format(SPARSE),
  }) do
    it(("charges each element to the budget (%s): the run stops with kind budget"):format(name), function()
      local ok, err = run_script(("local ok = pcall(function() %s end) return ok"):format(call))
      assert.is_false(ok, name)
      assert.are.equal("budget", err.kind, name)
    end)
  end

  it("repeats an empty string at once, as a function and as a method", function()
    local ok, value = run_script([[
      return { string.rep("", math.maxinteger), (""):rep(math.maxinteger), ("").rep("", 1e18, ""),
        ("ab"):rep(3, "-"), pcall(string.rep, "", 1.5) }
    ]])
    assert.is_true(ok, tostring(value))
    assert.are.same({ "", "", "", "ab-ab-ab", false }, { value[1], value[2], value[3], value[4], value[5] })
  end)

  it("moves, inserts and removes exactly as the C functions do", function()
    local env = sandbox.env()
    local tmove, tinsert, tremove = env.table.move, env.table.insert, env.table.remove
    local function filled(n)
      local t = {}
      for i = 1, n do t[i] = i end
      return t
    end
    local N = 3000 -- over the sandbox's block of 1024
    for _, c in ipairs({ { 1, N, 2 }, { 2, N, 1 }, { 1, N, 1500 }, { 1500, N, 1 }, { 1, N, N + 10 },
        { -5, N, 3 }, { 1, 0, 5 }, { 10, 2500, 11 }, { 11, 2500, 10 } }) do
      local f, e, t = c[1], c[2], c[3]
      local a, b = filled(N), filled(N)
      assert.are.same(table.move(a, f, e, t), tmove(b, f, e, t))
      local a2, b2 = {}, {}
      table.move(filled(N), f, e, t, a2)
      tmove(filled(N), f, e, t, b2)
      assert.are.same(a2, b2)
    end
    for _, pos in ipairs({ 1, 2, 1500, N, N + 1 }) do
      local a, b = filled(N), filled(N)
      table.insert(a, pos, "x")
      tinsert(b, pos, "x")
      assert.are.same(a, b)
      a, b = filled(N), filled(N)
      assert.are.equal(table.remove(a, pos), tremove(b, pos))
      assert.are.same(a, b)
    end
    local a, b = filled(5), filled(5)
    table.insert(a, "y")
    tinsert(b, "y")
    assert.are.same(a, b)
    assert.are.equal(table.remove(a), tremove(b))
    assert.are.same(a, b)
    for _, bad in ipairs({ function(ins) ins(filled(3), 9, 0) end, function(_, rem) rem(filled(3), 9) end,
        function(ins) ins(filled(3), 1, 2, 3) end,
        function() tmove({}, math.mininteger, 1, 1) end, function() tmove({}, 1, 10, math.maxinteger) end }) do
      assert.has_error(function() bad(tinsert, tremove) end)
    end
  end)
end)

-- Reads through a table's __index inside one C call: a C function there
-- (no hook fires in it) or a chain of tables, each the __index of the
-- next (every read walks all of them), made one call of table.concat,
-- table.unpack or gsub's table replacement do any amount of work:
-- table.concat(t, "", 1, 1e12) looped for days, a million reads through a
-- chain of 1,900 took 27 s. Each read is charged now (and, read in Lua, one
-- walk of a chain at most between two checks of the CPU limit).
describe("sandbox: reads through __index inside one C call", function()
  local CHAIN = [[
    local chain = setmetatable({}, { __index = rawget })
    for _ = 1, 1000 do chain = setmetatable({}, { __index = chain }) end
  ]]
  for name, call in pairs({
    concat = [[table.concat(setmetatable({}, { __index = table.concat, __len = rawlen }), "", 1, 2e6)]],
    unpack = [[table.unpack(setmetatable({}, { __index = rawget }), 1, 5e5)]],
    gsub_chain = CHAIN .. [[(("a"):rep(2000)):gsub(".", chain)]],
    gsub_chain_function = CHAIN .. [[string.gsub(("a"):rep(2000), ".", chain)]],
  }) do
    it(("charges each read to the budget (%s): the run stops with kind budget"):format(name), function()
      local ok, err = run_script(("local ok = pcall(function() %s end) return ok"):format(call))
      assert.is_false(ok, name)
      assert.are.equal("budget", err.kind, name)
    end)
  end

  it("concatenates, unpacks and replaces exactly as the C functions do", function()
    local env = sandbox.env()
    local function same(f, g, ...)
      local a, b = table.pack(pcall(f, ...)), table.pack(pcall(g, ...))
      if not a[1] then -- the message names the function as its caller calls it; (the
        -- script sees no position of the server's: sandbox.strip_internal)
        a[2], b[2] = a[2]:gsub("'[^']*'", "'f'"), sandbox.strip_internal(b[2]):gsub("'[^']*'", "'f'")
      end
      assert.are.same(a, b)
    end
    local p = setmetatable({ "a", "b", 3 }, { __index = function(_, k) if k == 5 then return "e" end end,
      __len = function() return 3 end })
    for _, args in ipairs({ {}, { "," }, { ",", 2 }, { ",", 2, 5 }, { ",", 3, 1 }, { {}, 1 }, { ",", "x" },
        { ",", 1.5 }, { ",", 1, 3 } }) do
      same(table.concat, env.table.concat, p, table.unpack(args, 1, 3))
    end
    for _, args in ipairs({ {}, { 2 }, { 4, 5 }, { 3, 1 }, { -2, 1 }, { 1, 1e8 } }) do
      same(table.unpack, env.table.unpack, p, table.unpack(args, 1, 2))
    end
    same(table.concat, env.table.concat, { 1, 2, "x" }, "-")
    same(table.unpack, env.table.unpack, { 1, 2 })
    local base = { a = "A", b = false }
    local top = setmetatable({}, { __index = setmetatable({ c = "C" }, { __index = base }) })
    local loop = {}
    setmetatable(loop, { __index = loop })
    for _, repl in ipairs({ top, setmetatable({}, { __index = function(t, k) return k .. tostring(t == top) end }),
        setmetatable({}, { __index = "xyz" }), { a = 1, b = {} }, loop }) do
      same(string.gsub, env.string.gsub, "abcd", "%w", repl)
    end
    same(string.gsub, env.string.gsub, "abcd", "()%w", { [1] = "one", [3] = "three" })
  end)
end)

describe("sandbox: table.sort", function()
  it("stops a sort through C metamethods and a huge __len with kind budget", function()
    local ok, err = run_script([[
      local t = setmetatable({}, { __len = function() return (1 << 31) - 2 end, __index = type,
        __newindex = rawequal })
      pcall(table.sort, t)
    ]])
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
  end)

  -- The C sort compares without running an instruction: without a
  -- comparator (or with a C one) a sort was free to the instruction budget,
  -- and comparing long strings read them through inside that one C call,
  -- where the CPU limit cannot stop it (10 s of the server's thread here).
  it("counts every comparison against the instruction budget, without a comparator or with a C one", function()
    for _, call in ipairs({ "table.sort(t)", "table.sort(t, math.ult)" }) do
      local ok, err = run_script(([[
        local t = {}
        for i = 1, 100000 do t[i] = 100000 - i end
        %s
        return "sorted"
      ]]):format(call), { instructions = 1000000 })
      assert.is_false(ok, call)
      assert.are.equal("budget", err.kind, call)
    end
  end)

  it("stops a sort comparing long strings at the run's CPU limit", function()
    local ok, err, info = run_script([[
      local a, b = ("x"):rep(1e6) .. "a", ("x"):rep(1e6) .. "b"
      local t = {}
      for i = 1, 20000 do t[i] = i % 2 == 0 and a or b end
      table.sort(t)
      return "sorted"
    ]], { instructions = 100000000, cpu_ms = 200 })
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
    assert.matches("limits.run_cpu_seconds", err.message, 1, true)
    -- CPU time, not wall time: the whole sort takes about 10 s of it
    assert.is_true(info.cpu_ms < 3000, "CPU ms: " .. tostring(info.cpu_ms))
  end)

  it("sorts and raises as the C sort does", function()
    local ok, value = run_script([[
      local nums, strs = { 3, 1, 2 }, { "b", "c", "a" }
      table.sort(nums)
      table.sort(strs, function(x, y) return x > y end)
      local mixed = select(2, pcall(table.sort, { 1, "a", 2 }))
      local bad = select(2, pcall(table.sort, { 2, 1 }, 3))
      return { nums = nums, strs = strs, mixed = mixed, bad = bad }
    ]])
    assert.is_true(ok, tostring(value))
    assert.are.same({ 1, 2, 3 }, value.nums)
    assert.are.same({ "c", "b", "a" }, value.strs)
    assert.matches("attempt to compare", value.mixed, 1, true)
    assert.is_nil(value.mixed:find("sandbox", 1, true))
    assert.matches("bad argument #2 to 'sort'", value.bad, 1, true)
  end)

  it("sorts a table with a metatable as the C sort does", function()
    local ok, value = run_script([[
      local store = { 5, 3, 9, 1 }
      local proxy = setmetatable({}, { __index = store, __newindex = store, __len = function() return #store end })
      table.sort(proxy)
      local desc = setmetatable({ 2, 8, 4 }, {})
      table.sort(desc, function(a, b) return a > b end)
      local with_nil = setmetatable({ 1, nil, 3 }, { __len = function() return 3 end })
      local nil_ok = pcall(table.sort, with_nil)
      local too_big = select(2, pcall(table.sort, setmetatable({}, { __len = function() return 1 << 31 end })))
      return { store = store, desc = { desc[1], desc[2], desc[3] }, nil_ok = nil_ok, too_big = too_big }
    ]])
    assert.is_true(ok, tostring(value))
    assert.are.same({ 1, 3, 5, 9 }, value.store)
    assert.are.same({ 8, 4, 2 }, value.desc)
    assert.is_false(value.nil_ok)
    assert.matches("array too big", value.too_big, 1, true)
  end)
end)

describe("sandbox: C work out of proportion to the instructions", function()
  -- One VM instruction may be C work through megabytes (s:upper() of a
  -- 1 MB string: about 15,000 instructions for 3000 of them, over a second
  -- of CPU; a == b of two long strings), so the instruction budget alone let
  -- a loop of them hold the server's thread for minutes. The run's CPU time is
  -- limited too (limits.run_cpu_seconds; cpu_ms here, small so the spec is
  -- quick): the watchdog's ticks are charged to the run they land in.
  -- comparing two equal strings of a megabyte: one instruction, a memcmp
  -- of the whole string, nothing allocated and nothing charged by the byte
  local BURN = [[
    local a, b, same = ("x"):rep(1e6), ("x"):rep(1e6), 0
    for _ = 1, 1e7 do if a == b then same = same + 1 end end
    return "finished"
  ]]

  it("stops a run whose few instructions each do megabytes of C work, with kind budget", function()
    local ok, err, info = run_script(BURN, { instructions = 100000000, cpu_ms = 200 })
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
    assert.are.equal("run exceeded its CPU time limit of 0.2 seconds (limits.run_cpu_seconds)", err.message)
    assert.is_true(info.instructions < 1000000, "stopped long before its instruction budget")
    assert.is_true(info.cpu_ms >= 200)
  end)

  it("cannot be caught: pcall, xpcall and a coroutine re-raise the stop", function()
    for _, wrap in ipairs({
      "local ok = pcall(burn) return ok and 'finished' or 'caught'",
      "local ok = xpcall(burn, function(e) return e end) return ok and 'finished' or 'caught'",
      "local ok = coroutine.resume(coroutine.create(burn)) return ok and 'finished' or 'caught'",
      "local ok = pcall(burn) pcall(burn) return 'caught twice'",
    }) do
      local ok, err = run_script(([[
        local function burn()
          local a, b, same = ("x"):rep(1e6), ("x"):rep(1e6), 0
          for _ = 1, 1e7 do if a == b then same = same + 1 end end
        end
        %s
      ]]):format(wrap), { instructions = 100000000, cpu_ms = 200 })
      assert.is_false(ok, wrap)
      assert.are.equal("budget", err.kind, wrap)
      assert.matches("limits.run_cpu_seconds", err.message, 1, true)
    end
  end)

  -- The stop is raised from the count hook, and Lua calls an xpcall
  -- message handler right there, with hooks off: xpcall(loop, loop) held
  -- the server for good. (This handler's loop is bounded, so that the
  -- old code fails instead of hanging.)
  it("never calls an xpcall handler with the stop: it would run without hooks", function()
    for _, limits in ipairs({ { instructions = 1000000, cpu_ms = 60000 }, { instructions = 0, cpu_ms = 200 } }) do
      local seen = {}
      local chunk = assert(load([[
        local seen = ...
        local function loop() while true do end end
        return xpcall(loop, function(e)
          seen.handler = true
          for _ = 1, 1e7 do end
          return e
        end)
      ]], "=script", "t", sandbox.env()))
      local ok, err = core.run(limits, chunk, seen)
      assert.is_false(ok)
      assert.are.equal("budget", err.kind)
      assert.is_nil(seen.handler)
    end
  end)

  it("names the instruction budget when that is what ran out", function()
    local ok, err = run_script("while true do end", { instructions = 1000000, cpu_ms = 60000 })
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
    assert.are.equal("run exceeded its instruction budget of 1000000 instructions (limits.run_instructions)",
      err.message)
  end)

  it("takes the server's CPU limit unless the run has its own; 0 is none", function()
    local SOME_CPU = [[
      local a, b, same = ("x"):rep(1e6), ("x"):rep(1e6), 0
      for _ = 1, 10000 do if a == b then same = same + 1 end end -- a few hundred ms of CPU
      return "finished"
    ]]
    core.set_limits({ cpu_ms = 100 })
    finally(function() core.set_limits({ cpu_ms = 5000 }) end)
    local ok, err = run_script(SOME_CPU, { instructions = 100000000 })
    assert.is_false(ok)
    assert.are.equal("run exceeded its CPU time limit of 0.1 seconds (limits.run_cpu_seconds)", err.message)
    local ok2, value = run_script(SOME_CPU, { instructions = 100000000, cpu_ms = 0 })
    assert.is_true(ok2, tostring(type(value) == "table" and value.message or value))
    assert.are.equal("finished", value)
  end)
end)

describe("sandbox: load", function()
  -- Lua's parser checks each label against every goto pending in its
  -- function, inside the one C call of load: 16 functions of 16,000 of each
  -- (7.4 MB) held the thread 7 s of CPU here, past the run's limit.
  it("stops a compile that is quadratic at the run's CPU limit", function()
    local ok, err, info = run_script([[
      local labels = {}
      for i = 1, 16000 do labels[i] = "::a" .. i .. ":: do end " end
      local body = "local function f() " .. ("goto z do end "):rep(16000) .. table.concat(labels) .. " ::z:: end "
      local f, why = load(body:rep(16))
      return f and "compiled" or why
    ]], { instructions = 100000000, cpu_ms = 200 })
    assert.is_false(ok, tostring(err))
    assert.are.equal("budget", err.kind)
    assert.matches("limits.run_cpu_seconds", err.message, 1, true)
    assert.is_true(info.cpu_ms < 2000, "CPU ms: " .. tostring(info.cpu_ms))
  end)

  it("stops a workflow script whose compile is quadratic at the CPU limit, as it loads", function()
    local labels = {}
    for i = 1, 16000 do labels[i] = "::a" .. i .. ":: do end " end
    local body = "local function f() " .. ("goto z do end "):rep(16000) .. table.concat(labels) .. " ::z:: end "
    core.set_limits({ cpu_ms = 200 })
    finally(function() core.set_limits({ cpu_ms = 5000 }) end)
    local cpu = os.clock()
    local wf, err = script.compile(body:rep(16) .. "return require('chorus').workflow { name = 'q', run = print }",
      "quad.lua")
    cpu = os.clock() - cpu
    assert.is_nil(wf)
    assert.matches("quad.lua: error while loading: .*limits.run_cpu_seconds", err)
    assert.is_true(cpu < 2, "CPU s: " .. cpu) -- the whole compile takes about 7 s of it
    local _, syntax = script.compile("return +", "bad.lua")
    assert.matches("^syntax error: bad.lua:1: ", syntax)
    assert.truthy(script.compile("return require('chorus').workflow { name = 'fine', run = print }", "fine.lua"))
  end)

  it("compiles strings and reader functions as load does", function()
    local ok, value = run_script([[
      local big = ("do local x = 1 end "):rep(1000) .. "return 'big'"
      local parts, i = { "return ", "1 ", "+ ", 41 }, 0
      local reader = function() i = i + 1 return parts[i] end
      local _, syntax = load("return +")
      local _, named = load("return +", "=mine")
      local _, binary = load("\27Lua")
      local _, bad = load(function() return {} end)
      return { big = load(big)(), read = load(reader)(), syntax = syntax, named = named, binary = binary,
        bad = bad, number = load(42) == nil, env = load("return x", "=c", "t", { x = 7 })() }
    ]])
    assert.is_true(ok, tostring(type(value) == "table" and value.message or value))
    assert.are.equal("big", value.big)
    assert.are.equal(42, value.read)
    assert.matches('^%[string "return %+"%]:1:', value.syntax)
    assert.matches("^mine:1:", value.named)
    assert.matches("binary chunk", value.binary, 1, true)
    assert.matches("reader function must return a string", value.bad, 1, true)
    assert.is_true(value.number)
    assert.are.equal(7, value.env)
  end)
end)

describe("sandbox: string functions charged by the bytes they handle", function()
  -- 20 MB: 1.25 million instructions' worth at one per 16 bytes, so the
  -- string itself fits in a budget of 2 million and one more pass does not
  for name, call in pairs({
    upper = "s:upper()", lower = "string.lower(s)", reverse = "s:reverse()", rep = "s:rep(2)",
    rep_sep = "('x'):rep(2e7, 'y')", format = "string.format('%s', s)", concat = "table.concat({ s })",
  }) do
    it(("charges %s before the budget runs out, uncatchable"):format(name), function()
      local ok, err, info = run_script(([[
        local s = ("x"):rep(2e7)
        pcall(function() return %s end)
        return "finished"
      ]]):format(call), { instructions = 2000000, cpu_ms = 0 })
      assert.is_false(ok, name)
      assert.are.equal("budget", err.kind, name)
      assert.matches("limits.run_instructions", err.message, 1, true)
      assert.is_true(info.instructions > 2000000, name)
    end)
  end

  it("stops json.encode of one table repeated to terabytes at the memory cap", function()
    local ok, err = run_script([[
      local json = require("chorus").json
      local t = { "leaf" }
      for _ = 1, 40 do t = { t, t } end -- 2^40 leaves, a few tables
      pcall(json.encode, t)
      return "finished"
    ]], { instructions = 100000000, memory = 4 << 20, cpu_ms = 0 })
    assert.is_false(ok)
    assert.are.equal("memory", err.kind)
  end)

  it("stops a loop of megabyte calls at the budget, without a CPU limit", function()
    local ok, err, info = run_script([[
      local s = ("x"):rep(1e6)
      for _ = 1, 1e5 do s:upper() end
      return "finished"
    ]], { instructions = 10000000, cpu_ms = 0, memory = 0 }) -- no cap: the garbage strings are not what is tested
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
    assert.is_true(info.instructions > 10000000)
  end)

  -- one VM instruction each, their output proportional to their
  -- arguments: charged by the bytes they make, as table.concat
  for name, call in pairs({
    os_date = "os.date(f, 0)", utf8_char = "utf8.char(table.unpack(cps))", pack = "string.pack('c1000000', '')",
  }) do
    it(("charges the output of %s to the budget"):format(name), function()
      local ok, err = run_script(([[
        local f = ("%%c"):rep(20000) -- about 480 KB of dates
        local cps = { utf8.codepoint(("\u{10000}"):rep(100000), 1, -1) } -- 400 KB of characters
        for _ = 1, 100 do pcall(function() return %s end) end -- 40 MB or more: 2.5 million at 16 a byte
        return "finished"
      ]]):format(call), { instructions = 2000000, cpu_ms = 0, memory = 0 })
      assert.is_false(ok, name)
      assert.are.equal("budget", type(err) == "table" and err.kind or err, name)
    end)
  end

  it("returns and raises what the string library does", function()
    local ok, value = run_script([[
      local function err(f) return (select(2, pcall(f)):gsub("^script:%d+: ", "")) end
      return {
        string.upper("aBc1"), ("aBc1"):lower(), string.reverse("abc"), string.upper(12), ("ab"):rep(3, ","),
        string.rep("ab", 0), string.rep("", 1e18), string.format("%s=%5.1f", "x", 2.25),
        table.concat({ 1, "b", 3 }, "-", 2),
        err(function() return string.upper() end), err(function() return ("x"):rep(1.5) end),
        err(function() return table.concat({ {} }) end), err(function() return string.format("%d", "x") end),
        err(function() return string.rep("xx", math.maxinteger) end),
      }
    ]], { instructions = 1000000 })
    assert.is_true(ok, tostring(type(value) == "table" and value.message or value))
    assert.are.same({
      "ABC1", "abc1", "cba", "12", "ab,ab,ab", "", "", "x=  2.2", "b-3",
      "bad argument #1 to 'upper' (string expected, got no value)",
      "bad argument #1 to 'rep' (number has no integer representation)", -- a method call: self is not counted
      "invalid value (table) at index 1 in table for 'concat'",
      "bad argument #2 to 'format' (number expected, got string)",
      "resulting string too large",
    }, value)
  end)
end)

-- The luacheck standard of workflow scripts (chorus.luacheck_std) must
-- name what the sandbox gives: lint passing a global the sandbox lacks
-- would promise a script that fails at its first run.
describe("sandbox: the luacheck standard of workflow scripts", function()
  local std = require "chorus.luacheck_std"

  it("names every global of the sandbox, and only those", function()
    local env, named = sandbox.env(), {}
    for k, v in pairs(std.read_globals) do
      local name = type(k) == "string" and k or v
      named[name] = true
      assert.is_not_nil(env[name], name .. " is in the standard but not in the sandbox")
    end
    for name in pairs(env) do
      assert.is_true(named[name], name .. " is in the sandbox but not in the standard")
    end
  end)

  it("names library fields the sandbox has, leaving out math.randomseed", function()
    local env = sandbox.env()
    for lib, def in pairs(std.read_globals) do
      if type(lib) == "string" then
        for _, field in ipairs(def.fields) do
          assert.is_not_nil(env[lib][field], ("%s.%s is in the standard but not in the sandbox"):format(lib, field))
        end
      end
    end
    for _, field in ipairs(std.read_globals.math.fields) do
      assert.are_not.equal("randomseed", field)
    end
    assert.is_nil(env.io)
    assert.is_nil(rawget(std.read_globals, "io"))
  end)
end)

describe("sandbox: __close handlers of a task closed by the scheduler", function()
  -- A race's loser, a task left running when its run ends, a run the server
  -- drops: the scheduler closes such a task's coroutine (lua_resetthread)
  -- outside any resume of it, and its __close handlers ran with no run
  -- current: under no instruction budget, CPU limit or memory cap (a loop
  -- there held the server's only thread for good). They run as the task now.
  local function workflow(close_body)
    return assert(script.compile(([[
      local chorus = require "chorus"
      return chorus.workflow { name = "closer", run = function(ctx)
        return chorus.race(
          function()
            local _ <close> = setmetatable({}, { __close = function() %s end })
            ctx.sleep(60)
            return "slow"
          end,
          function() return "fast" end)
      end }
    ]]):format(close_body), "closer.lua"))
  end

  local function with_limits(limits, fn)
    core.set_limits(limits)
    finally(function() core.set_limits({ instructions = 100000000, cpu_ms = 5000, memory = 64 * 1024 * 1024 }) end)
    return fn()
  end

  it("counts a loser's __close against the run's instruction budget", function()
    with_limits({ instructions = 1000000 }, function()
      -- ten million iterations: well past the budget, done in well under a second unbudgeted
      local r = testing.run(workflow("local n = 0 for _ = 1, 1e7 do n = n + 1 end"), {})
      assert.is_false(r.ok)
      assert.are.equal("budget", r.error.kind)
    end)
  end)

  it("counts a loser's __close against the run's CPU limit", function()
    with_limits({ instructions = 100000000, cpu_ms = 100 }, function()
      local r = testing.run(workflow([[
        local a, b, same = ("x"):rep(1e6), ("x"):rep(1e6), 0
        for _ = 1, 20000 do if a == b then same = same + 1 end end]]), {})
      assert.is_false(r.ok)
      assert.are.equal("budget", r.error.kind)
      assert.matches("limits.run_cpu_seconds", r.error.message, 1, true)
    end)
  end)

  it("counts what a loser's __close allocates against the run's memory cap", function()
    with_limits({ memory = 8 * 1024 * 1024 }, function()
      local r = testing.run(workflow("local t = {} for i = 1, 64 do t[i] = ('x'):rep(1 << 20, tostring(i)) end"), {})
      assert.is_false(r.ok)
      assert.are.equal("memory", r.error.kind)
    end)
  end)

  it("stops the __close of a task cancelled after its run was stopped at once", function()
    -- the second task ends the run at the budget; chorus.all cancels the
    -- first. Its ctx.log runs outside the run: the process's sink gets it.
    local context = require "chorus.context"
    local lines = {}
    context.log_sink = function(line) lines[#lines + 1] = line end
    finally(function() context.log_sink = nil end)
    with_limits({ instructions = 1000000 }, function()
      local r = testing.run(assert(script.compile([[
        local chorus = require "chorus"
        return chorus.workflow { name = "killed", run = function(ctx)
          return chorus.all(
            function()
              local _ <close> = setmetatable({}, { __close = function()
                local n = 0 for _ = 1, 1e7 do n = n + 1 end
                ctx.log("closed after the stop")
              end })
              ctx.sleep(60)
            end,
            function() while true do end end)
        end }
      ]], "killed.lua")), {})
      assert.is_false(r.ok)
      assert.are.equal("budget", r.error.kind)
      for _, line in ipairs(r.logs) do
        assert.are_not.equal("closed after the stop", line.msg)
      end
      assert.are.same({}, lines)
    end)
  end)

  it("refuses a chorus call that would outlive the closing task", function()
    local r = testing.run(workflow("error('x') "), {})
    assert.is_true(r.ok, tostring(r.error and r.error.message))
    assert.are.equal("fast", r.value)
    r = testing.run(workflow("chorus.race(function() return 1 end)"), {})
    assert.are.equal("fast", r.value) -- the refusal is the handler's error, which a close drops
  end)

  it("still lets a handler that does little run to its end", function()
    local r = testing.run(workflow("local n = 0 for _ = 1, 1000 do n = n + 1 end"), {})
    assert.is_true(r.ok, tostring(r.error and r.error.message))
    assert.are.equal("fast", r.value)
  end)
end)

describe("sandbox: tasks a run spawns", function()
  -- Each task's C struct (and its slot in the run's task list) lives until
  -- the run ends, outside the Lua heap: a loop of chorus.all over short tasks
  -- grew the process by hundreds of megabytes under an 8 MiB cap.
  it("count against the run's memory cap: a spawning loop stops with kind memory", function()
    core.set_limits({ memory = 8 * 1024 * 1024 })
    finally(function() core.set_limits({ memory = 64 * 1024 * 1024 }) end)
    local r = testing.run(assert(script.compile([[
      local chorus = require "chorus"
      return chorus.workflow { name = "spawner", run = function()
        local f, n = function() end, 0
        for _ = 1, 100000 do chorus.all(f, f, f, f, f, f, f, f) n = n + 8 end
        return n
      end }
    ]], "spawner.lua")), {})
    assert.is_false(r.ok, "spawned " .. tostring(r.value) .. " tasks")
    assert.are.equal("memory", r.error.kind)
  end)
end)

describe("sandbox: what a run leaves in the process", function()
  -- Process-wide caches keyed by what scripts pass (method names, URL hosts
  -- as metric labels, upstream paths, a request's upstream, breaker names)
  -- kept each new value for good, outside any run's cap: a run passing a
  -- fresh megabyte each time grew the server without bound.
  before_each(testing.reset)

  local LEAKY = [[
    local chorus = require "chorus"
    local http = require "chorus.http"
    local breaker = require "chorus.breaker"
    return chorus.workflow { name = "leaky", run = function(ctx, input)
      local big = ("x"):rep(1024 * 1024) .. ctx.uuid():gsub("-", "")
      local how = input.how
      if how == "method" then
        pcall(http.request, { url = "http://mock.test/ok", method = big })
      elseif how == "host" then
        pcall(http.request, { url = "http://" .. big .. "/ok" })
      elseif how == "upstream" then
        pcall(http.request, { url = "http://mock.test/ok", upstream = { big } })
      elseif how == "path" then
        pcall(function() return http.upstream("cards"):get("/" .. big) end)
      elseif how == "breaker" then
        pcall(function() breaker.new({ name = big }):call(function() return { status = 200 } end) end)
      end
      return true
    end }
  ]]

  local function heap()
    collectgarbage("collect")
    collectgarbage("collect")
    return collectgarbage("count") * 1024
  end

  for _, how in ipairs({ "method", "host", "upstream", "path", "breaker" }) do
    it(("keeps nothing of a megabyte a run passed (%s)"):format(how), function()
      testing.mock("cards", { status = 200 })
      local wf = assert(script.compile(LEAKY, "leaky.lua"))
      assert.is_true(testing.run(wf, { how = how }).ok) -- caches of a first call are made
      local before = heap()
      for _ = 1, 8 do
        local r = testing.run(wf, { how = how })
        assert.is_true(r.ok, tostring(r.error and r.error.message))
      end
      local grown = heap() - before
      assert.is_true(grown < 2 * 1024 * 1024, ("the process kept %.1f MiB"):format(grown / 1048576))
    end)
  end
end)

describe("sandbox: weak tables", function()
  -- The collector clears weak tables in its atomic phase, outside any run,
  -- hook or CPU limit: 40,000 weak keys chained through each other (each
  -- value the next key) held the whole server for 19 s in one collection.
  -- No script table may be weak, now or later.
  for name, source in pairs({
    direct = [[ setmetatable({}, { __mode = "k" }) ]],
    later = [[ local mt = {}; local t = setmetatable({}, mt); mt.__mode = "k"; return t ]],
    rawset = [[ local mt = {}; local t = setmetatable({}, mt); rawset(mt, "__mode", "k"); return t ]],
    load_env = [[ local mt = {}; local t = setmetatable({}, mt); load("__mode = 'k'", "x", "t", mt)(); return t ]],
    json_array = [[ local mt = {}; local t = setmetatable({}, mt); require("chorus").json.array(mt); mt.__mode = "k" ]],
    over_own = [[ local mt = setmetatable({}, {}); local t = setmetatable({}, mt); mt.__mode = "k"; return t ]],
    set_later = [[ local mt = {}; local t = setmetatable({}, mt); setmetatable(mt, {}); mt.__mode = "k"; return t ]],
  }) do
    it(("refuses __mode on a script's metatable (%s)"):format(name), function()
      local ok, err = run_script(source)
      assert.is_false(ok)
      local message = tostring(type(err) == "table" and err.message or err)
      assert.truthy(message:find("__mode is not allowed in workflow scripts", 1, true)
        or message:find("json.array: the table has a metatable already", 1, true), message)
    end)
  end

  it("leaves the usual metatable patterns as they were", function()
    local ok, value = run_script([[
      local Base = {}; Base.__index = Base
      function Base.hello(self) return "hello " .. self.n end
      local X = { __index = Base }
      local Derived = setmetatable({}, X)
      Derived.__index = Derived
      local o = setmetatable({ n = 1 }, Derived)
      function Derived.bye(self) return "bye " .. self.n end -- a method added after its first object
      local Later = {}; Later.__index = Later
      local l = setmetatable({ n = 2 }, Later)
      setmetatable(Later, { __index = Base }) -- a metatable given one of its own afterwards
      local Class = setmetatable({}, { __call = function(cls, n) return setmetatable({ n = n }, cls) end })
      Class.__index = Class
      function Class:get() return self.n end
      local p = setmetatable({}, { __metatable = "mine" })
      local Protected = setmetatable({}, { __metatable = "sealed" })
      setmetatable({}, Protected)
      return { o:hello(), o:bye(), getmetatable(o) == Derived, getmetatable(Derived) == X, l:hello(),
        Class(5):get(), getmetatable(p), (pcall(setmetatable, p, {})), getmetatable(Protected),
        (pcall(setmetatable, Protected, {})), getmetatable(Later).__index == Base, getmetatable(Base) }
    ]])
    assert.is_true(ok, tostring(value))
    assert.are.same({ "hello 1", "bye 1", true, true, "hello 2", 5, "mine", false, "sealed", false, true }, value)
  end)
end)

describe("sandbox: what a queued call keeps", function()
  before_each(testing.reset)

  -- A call queued for after the run (later = true, a saga's capture) kept
  -- its headers table as the script made it: a table as a header name went
  -- to the outbox relay, which reads it outside the run.
  it("refuses a header name that is not a string", function()
    for _, call in ipairs({
      [[http.request({ url = "http://mock.test/x", later = true, headers = { [{}] = "v" } })]],
      [[http.upstream("cards"):post("/x", { later = true, headers = { [{}] = "v" } })]],
    }) do
      testing.mock("cards", { status = 200 })
      local wf = assert(script.compile(([[
        local chorus = require "chorus"
        local http = require "chorus.http"
        return chorus.workflow { name = "queued", run = function() return %s end }
      ]]):format(call), "queued.lua"))
      local r = testing.run(wf, {})
      assert.is_false(r.ok, call)
      local message = type(r.error) == "table" and r.error.message or r.error
      assert.matches("header names must be strings", tostring(message), 1, true)
    end
  end)

  -- An option was checked, then read again: an __index answering the
  -- second read differently put a table in the queued call's timeout (and
  -- could have put any url or body past their checks).
  it("keeps the options as checked, each read once", function()
    local wf = assert(script.compile([[
      local chorus = require "chorus"
      local http = require "chorus.http"
      return chorus.workflow { name = "queued", run = function()
        local reads = {}
        local first = { timeout = 5, connect_timeout = 2, url = "http://mock.test/x", body = "b",
          idempotency_key = "k-1", later = true }
        local req = setmetatable({}, { __index = function(_, k)
          reads[k] = (reads[k] or 0) + 1
          if reads[k] == 1 then return first[k] end
          return ({ timeout = {}, connect_timeout = {}, url = "file:///etc/passwd", body = {}, later = {} })[k]
        end })
        http.request(req)
        return reads
      end }
    ]], "queued.lua"))
    local r = testing.run(wf, {})
    assert.is_true(r.ok, tostring(r.error))
    local sent = r.outbox[1].request
    assert.same({ "http://mock.test/x", 5, "b", "k-1" }, { sent.url, sent.timeout, sent.body,
      sent.headers["Idempotency-Key"] })
    for k, n in pairs(r.value) do
      assert.equal(1, n, k)
    end
  end)
end)

-- A wrapper of the sandbox that passed a bad argument on to the library
-- put its own position in the error ("lua/chorus/sandbox.lua:522: bad
-- argument #1 to 'rawset'"): the script saw the server's files.
describe("sandbox: errors a script sees", function()
  before_each(testing.reset)

  it("name no position inside the server's modules", function()
    local wf = assert(script.compile([[
      local chorus = require "chorus"
      return chorus.workflow { name = "positions", run = function()
        local out = {}
        local function note(_, err) out[#out + 1] = tostring(err) end
        note(pcall(setmetatable, 1, {}))
        note(pcall(rawset, 1, 2, 3))
        note(pcall(table.insert, nil, 1))
        note(pcall(table.remove, nil))
        note(pcall(table.sort, { 3, 1, 2 }, 5))
        note(pcall(chorus.json.array, 5))
        note(pcall(os.time, {}))
        note(pcall(chorus.secret, 5))
        note(xpcall(rawset, function(e) return e end, 1, 2, 3))
        note(pcall(coroutine.wrap(function() return setmetatable(1, {}) end)))
        note(coroutine.resume(coroutine.create(function() return rawset(1, 2, 3) end)))
        return out
      end }
    ]], "positions.lua"))
    local r = testing.run(wf, {})
    assert.is_true(r.ok, tostring(r.error))
    assert.equal(11, #r.value)
    for _, message in ipairs(r.value) do
      assert.is_nil(message:find("chorus/", 1, true), message)
      assert.truthy(message:find("bad argument", 1, true) or message:find("missing", 1, true)
        or message:find("must be a string", 1, true), message)
    end
  end)
end)

-- The same errors, not caught: the run's record kept the server's position
-- ("lua/chorus/sandbox.lua:540: bad argument #1 to 'rawset'").
describe("sandbox: errors that end a run", function()
  before_each(testing.reset)

  local wf = assert(script.compile([[
    local chorus = require "chorus"
    local cases = {
      function() return rawset(1, 2, 3) end,
      function() table.insert(nil, 1, 2) end,
      function() coroutine.create(1) end,
      function() chorus.json.array(5) end,
      function() chorus.env(5) end,
      function(ctx) ctx.log.info(1, 2) end,
      function() return tostring(setmetatable({}, { __tostring = function() return {} end })) end,
      function() error(setmetatable({ kind = "mine" }, { __index = function() return rawset(1, 2, 3) end })) end,
      function(ctx) return ctx.step("s", function() return rawset(1, 2, 3) end) end,
    }
    return chorus.workflow { name = "uncaught", run = function(ctx, input)
      return cases[input.i](ctx)
    end }
  ]], "uncaught.lua"))

  it("name no position inside the server's modules in the run's error", function()
    for i = 1, 9 do
      local r = testing.run(wf, { i = i }, { crash_after = i == 9 and 5 or nil }) -- 9: a durable run
      assert.is_false(r.ok, i)
      local message = type(r.error) == "table" and r.error.message or r.error
      assert.is_string(message, i)
      assert.is_nil(message:find("chorus/", 1, true), message)
      assert.truthy(message:find("bad argument", 1, true) or message:find("must be a string", 1, true)
        or message:find("__tostring", 1, true) or message:find("cannot be described", 1, true), message)
    end
  end)
end)
