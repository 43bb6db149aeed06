-- Specs of runtime/lua_pattern.c: core.pattern's find/match/gmatch/gsub give
-- what Lua 5.4's string library gives (results and errors), on a table of
-- cases and on seeded random patterns; their steps are charged to the run's
-- instruction budget; string.dump is out of a script's reach.
local core = require "chorus.core"
local sandbox = require "chorus.sandbox"

local P = core.pattern
-- the stock library: the global string table is left as it is
local S = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }

local PATHOLOGICAL_S, PATHOLOGICAL_P = ("a"):rep(2000), ("a*"):rep(12) .. "b"

-- ---- comparing outcomes ------------------------------------------------------

local function show(v)
  if type(v) == "string" then
    return ("%q"):format(v)
  elseif math.type(v) == "float" then
    return tostring(v) .. "(float)"
  end
  return tostring(v)
end

local function show_all(t)
  local parts = {}
  for i = 1, t.n do
    parts[i] = show(t[i])
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- Calls f(...) (through a local, so argument errors name the same function)
-- and returns { ok, values... } packed; gmatch's iterator is run to its end.
local function outcome(kind, f, ...)
  local args = table.pack(...)
  return table.pack(pcall(function()
    if kind == "gmatch" then
      local all, it = {}, f(table.unpack(args, 1, args.n))
      for _ = 1, 200 do
        local r = table.pack(it())
        if r[1] == nil then
          break
        end
        all[#all + 1] = show_all(r)
      end
      return table.concat(all, " ")
    end
    return f(table.unpack(args, 1, args.n))
  end))
end

-- Tables (error objects) are equal when their fields are.
local function same_value(x, y)
  if type(x) == "table" and type(y) == "table" then
    for k, v in pairs(x) do
      if y[k] ~= v then
        return false
      end
    end
    return next(x) ~= nil or next(y) == nil
  end
  return x == y and math.type(x) == math.type(y)
end

local function same(a, b)
  if a.n ~= b.n then
    return false
  end
  for i = 1, a.n do
    if not same_value(a[i], b[i]) then
      return false
    end
  end
  return true
end

local checked = 0

-- Asserts that core.pattern[kind] and string[kind] agree on these arguments.
local function agree(kind, ...)
  local want = outcome(kind, S[kind], ...)
  local got = outcome(kind, P[kind], ...)
  checked = checked + 1
  if not same(want, got) then
    local args = table.pack(...)
    error(("%s(%s): string gives %s, core.pattern gives %s"):format(kind, show_all(args), show_all(want),
      show_all(got)), 2)
  end
  return want
end

-- Every function on subject s and pattern p.
local function agree_all(s, p)
  agree("find", s, p)
  agree("match", s, p)
  agree("gmatch", s, p)
  agree("gsub", s, p, "<%0>")
  agree("gsub", s, p, "%1")
end

-- ---- the case table ----------------------------------------------------------

local SUBJECTS = {
  "", "a", "aaa", "hello world", "  trim me  ", "key=value; other=1", "THE (quick) [brown] fox",
  "x = f(a, g(b, c)) + h()", "THE (quick) fox", "1234.5e-6", "0x1F ff GG", "tab\there\nnewline\r\n",
  "a\0b\0c", "\0", "caf\195\169 \255\128", "[[nested]] ]]", "%percent% 100%", "f(o)o(b)a(r)",
  "abcabcabc", "aXbXc", "   ", "a.b.c", "$100 ^up^", "-x- --y--", "abba", "hello hello hello",
  "THE END", "mixedCase_words and-dashes", "\1\2\31\127 ctrl", "alpha123beta456",
}

local PATTERNS = {
  -- literals, anchors, '.'
  "", "a", "hello", "o w", "^hello", "world$", "^$", "^", "$", "a$b", "^^", "$$", ".", "..", "^.", ".$",
  "x^y", "%$", "%^", "%.", "%%", "^%s*(.-)%s*$", "^(.*)$", "a.c", "\0", "a%z", "%a\0",
  -- classes and complements
  "%a+", "%A+", "%c", "%C+", "%d+", "%D+", "%g+", "%G", "%l+", "%L+", "%p+", "%P+", "%s+", "%S+",
  "%u+", "%U+", "%w+", "%W+", "%x+", "%X+", "%z", "%q", "%Q+", "%_", "%-", "%]",
  -- sets
  "[abc]", "[^abc]+", "[a-z]+", "[^a-z]+", "[%a_][%w_]*", "[%d.]+", "[]]", "[^]]+", "[a-]", "[-a]+",
  "[a%-z]+", "[%]]", "[%[%]]+", "[]a]+", "[^%s]+", "[a-c-e]+", "[z-a]", "[%w%p]+", "[\0-\31]+",
  "[\128-\255]+", "[^\0]+", "[.]", "[%%]+", "[%^]", "[^^]+", "[a-]+", "[%a-z]", "[A-Z%d]+",
  -- repetitions
  "a*", "a+", "a-", "a?", "a*b", "a+b", "a-b", "a?b", ".*", ".+", ".-", ".?", ".-$", "^.-o", "o.-o",
  "%s*", "[ab]*", "[ab]-c", "x*", "%d*%.?%d*", "a*a*a*b", "(a*)*", "%w+%s*=%s*%w+", "l+", "l-o",
  "h?e?l+o?", "-", "*", "+", "?", "a**", "a+?", "a-+",
  -- captures
  "(a)", "(h)(e)(l)", "()", "()a()", "(%w+)=(%w+)", "((a)(b))", "(.-)=", "(%s*)", "(%d+)%.(%d+)",
  "()ll()", "(o)(.-)%1", "(.)%1", "(%a+) %1", "(a*(.)%w(%s*))", "(()a)", "^(%w+)", "(x?)",
  "(%w+)%s*(%w*)", "([%a_][%w_]*)%s*%((.-)%)", "()$", "^()",
  -- %b and %f
  "%b()", "%b[]", "%b((", "%bxy", "%b\"\"", "f%b()", "%b()%b()", "%f[%a]%a+", "%f[%A]", "%f[%w]%w+%f[%W]",
  "%f[^%z]", "%f[%z]", "%f[^\0]", "%f[\0]", "%f[%s]", "%f[a]", "%f[]]", "%f[%d].",
  -- back-references
  "(a)%1", "(ab)%1", "(.)(.)%2%1", "(l+)", "(%a)%1", "(.-)%1", "()%1",
  -- malformed patterns and limits (errors)
  "%", "a%", "[a", "[^", "[", "[%", "[a%", "(", "(()", ")", "a)", "%b", "%ba", "%f", "%fa", "%f[a",
  "%1", "(a)%2", "(a%1)", "%0", "%9", "(%1)", ("(a)"):rep(33), ("(a)"):rep(32), ("a?"):rep(250),
  ("(a?)"):rep(40), ("a?"):rep(190) .. ("a"):rep(10),
}

describe("core.pattern agrees with Lua 5.4's string library", function()
  it("on every subject and pattern of the table", function()
    for _, s in ipairs(SUBJECTS) do
      for _, p in ipairs(PATTERNS) do
        agree_all(s, p)
      end
    end
  end)

  it("on find's init and plain arguments", function()
    local s = "hello world, hello moon"
    for _, init in ipairs({ 1, 2, 5, 7, 13, 23, 24, 25, 100, 0, -1, -5, -23, -24, -100,
        math.mininteger, math.maxinteger }) do
      for _, p in ipairs({ "hello", "o", "", "^h", "l+", "(o)", "$", "o.", "%w+$" }) do
        agree("find", s, p, init)
        agree("match", s, p, init)
        agree("gmatch", s, p, init)
        agree("find", s, p, init, true)
        agree("find", s, p, init, 1)
        agree("find", s, p, init, false)
        agree("find", s, p, init, nil)
      end
    end
    for _, p in ipairs({ "a.b", "(x)", "%d", "[1]", "a+", "^a", "a$", "", "\0b", "b\0", "a\0." }) do
      agree("find", "xa.b(x)%d[1]a+^aa$\0b\0", p, 1, true)
      agree("find", "a\0b\0c", p)
    end
    agree("find", "", "")
    agree("find", "", "", 1)
    agree("find", "", "", 2)
    agree("find", "", "", -1)
    agree("find", "abc", "", 4)
    agree("find", "abc", "", 5)
    agree("find", "abc", "c", 3.0)
    agree("find", "ab.c", ".", 1, true)
  end)

  it("on gmatch, including its init argument", function()
    for _, case in ipairs({
      { "one two  three", "%a+" }, { "a,b,,c", "([^,]*)" }, { "abc", "" }, { "abc", "()" },
      { "k1=v1, k2=v2", "(%w+)=(%w+)" }, { "aaa", "a*" }, { "hello", "^h" }, { "^hello^", "^h" },
      { "abc", "$" }, { "ab$", "b$" }, { "x", "(x)(y?)" }, { "((a)(b))", "%b()" },
    }) do
      for _, init in ipairs({ 1, 2, 3, 0, -1, -2, 50, -50 }) do
        agree("gmatch", case[1], case[2], init)
      end
    end
  end)

  it("on gsub with string, number, table and function replacements and a maximum", function()
    local t = { hello = "HI", world = false, x = 42, y = 1.5, z = {} }
    local reps = {
      "%0%0", "[%1]", "%2-%1", "%%", "%", "a%b", "%9", "<%0>", "", 7, 2.5, t,
      function(a, b) return b and (a .. b) or a:upper() end,
      function() return nil end, function() return false end, function() return 12 end,
      function() return {} end, function(w) return t[w] end, function(...) return select("#", ...) end,
    }
    for _, s in ipairs({ "hello world", "x y z", "abc", "", "hello", "a=1, b=2", "(x)(y)" }) do
      for _, p in ipairs({ "%w+", "(%w+)", "(%w)(%w*)", "", "^%w+", "%w+$", "()", "(%w+)=(%w+)",
          "x*", "%b()", "(h)(e)", "l" }) do
        for _, r in ipairs(reps) do
          agree("gsub", s, p, r)
          agree("gsub", s, p, r, 1)
        end
      end
    end
    for _, max in ipairs({ 0, 1, 2, 3, -1, 100, math.maxinteger, math.mininteger, 2.0 }) do
      agree("gsub", "a b c d", "%a", "<%0>", max)
      agree("gsub", "abc", "", "-", max)
    end
  end)

  it("on bad arguments", function()
    agree("find")
    agree("find", "a")
    agree("find", {}, "a")
    agree("find", "a", {})
    agree("find", "a", "a", "x")
    agree("find", "a", "a", 1.5)
    agree("find", 123, 2)
    agree("find", 12.5, "%.")
    agree("match", 123, "(%d)(%d)")
    agree("match", "a", "a", {})
    agree("gmatch", nil, "a")
    agree("gmatch", "a", nil)
    agree("gmatch", "a", "a", "z")
    agree("gmatch", 1e15, "%d+")
    agree("gsub", "a", "a")
    agree("gsub", "a", "a", true)
    agree("gsub", "a", "a", nil, 1)
    agree("gsub", "a", "a", "b", "x")
    agree("gsub", "a", "a", "b", 1.5)
    agree("gsub", nil, "a", "b")
    agree("gsub", 12, 1, 3)
    agree("gsub", "aaa", "a", function() error("boom") end)
    agree("gsub", "aaa", "a", function() error({ kind = "x" }) end)
    agree("gsub", "aaa", "a", setmetatable({}, { __index = function(_, k) return k .. "!" end }))
  end)

  it("with method calls on strings (the string metatable's __index)", function()
    assert.are.equal(P.find, ("x").find)
    assert.are.equal(P.gsub, ("x").gsub)
    assert.are.same({ 2, 3 }, { ("abc"):find("bc") })
    assert.are.equal("b", ("abc"):match("b"))
    -- an argument error through a method call does not count self
    local _, want = pcall(function() return S.find("abc", "b", "x") end)
    local _, got = pcall(function() return ("abc"):find("b", "x") end)
    assert.matches("bad argument #3 to 'find'", want)
    assert.matches("bad argument #2 to 'find'", got)
  end)

  it("on seeded random patterns and subjects", function()
    local seed = 20240601
    local function rand(n) -- a deterministic LCG, 1..n
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed // 65536 % n + 1
    end
    local function pick(t)
      return t[rand(#t)]
    end
    local ATOMS = { "a", "b", "c", "1", " ", ".", "%a", "%d", "%s", "%w", "%A", "%S", "%p", "[ab]", "[^a]",
      "[a-c]", "[%d_]", "[^%s]", "%.", "%%", "(", ")", "()", "%b()", "%f[%w]", "%f[%W]", "%1", "%2", "$", "^",
      "[", "%", "]", "-", "*", "+", "?" }
    local COMMON = { "a", "b", ".", "%a", "[ab]", "[^b]", "()", "%b()" }
    local SUFFIXES = { "", "", "", "*", "+", "-", "?" }
    local CHARS = { "a", "b", "c", "1", "2", " ", "_", "(", ")", ".", "%", "\0", "\200" }
    local FEW = { "a", "b", "(", ")" }
    local function pattern()
      local parts = {}
      if rand(5) == 1 then
        parts[1] = "^"
      end
      for _ = 1, rand(4) do
        local atom = rand(3) == 1 and pick(ATOMS) or pick(COMMON)
        parts[#parts + 1] = atom
        if #atom == 1 and atom:match("[%w%.%s]") or atom:sub(-1) == "]" and atom:sub(1, 2) ~= "%f" then
          parts[#parts + 1] = pick(SUFFIXES)
        end
        if rand(6) == 1 then -- a whole capture around what came so far
          table.insert(parts, rand(#parts), "(")
          parts[#parts + 1] = ")"
        end
      end
      if rand(6) == 1 then
        parts[#parts + 1] = "$"
      end
      return table.concat(parts)
    end
    local function subject()
      local parts = {}
      for i = 1, rand(16) - 1 do
        parts[i] = pick(rand(2) == 1 and CHARS or FEW)
      end
      return table.concat(parts)
    end
    local REPS = { "<%0>", "%1", "%%", "[%2]", "x" }
    for _ = 1, 4000 do
      local s, p = subject(), pattern()
      agree("find", s, p, rand(#s + 4) - 2)
      agree("match", s, p)
      agree("gmatch", s, p)
      agree("gsub", s, p, pick(REPS), rand(4) - 1)
    end
  end)

  it("compared hundreds of calls", function()
    assert.is_true(checked > 1000, checked)
  end)
end)

-- ---- the budget ---------------------------------------------------------------

-- Compiles source as a workflow script's chunk in a fresh sandbox and runs
-- it as a run with opts; returns ok, value, info.
local function run_script(source, opts)
  local chunk = assert(load(source, "=script", "t", sandbox.env()))
  return core.run(opts, chunk)
end

describe("core.pattern's step budget", function()
  it("stops a run whose pattern outruns its instruction budget, with kind budget", function()
    for _, kind in ipairs({ "find", "match", "gmatch", "gsub" }) do
      local ok, err = core.run({ instructions = 1000000 }, function()
        if kind == "gmatch" then
          return P.gmatch(PATHOLOGICAL_S, PATHOLOGICAL_P)()
        end
        return P[kind](PATHOLOGICAL_S, PATHOLOGICAL_P, kind == "gsub" and "x" or nil)
      end)
      assert.is_false(ok, kind)
      assert.are.equal("budget", err.kind, kind)
      assert.are.equal("run exceeded its instruction budget of 1000000 instructions (limits.run_instructions)",
        err.message)
    end
  end)

  it("is not caught by pcall inside a script, with string.find or a method call", function()
    for _, call in ipairs({ "string.find(s, p)", "s:find(p)", "s:match(p)", "s:gsub(p, '')",
        "s:gmatch(p)()", "string.gsub('aaa', 'a', function() return s:find(p) end)" }) do
      local ok, err = run_script(([[
        local s, p = ("a"):rep(2000), ("a*"):rep(12) .. "b"
        local caught = 0
        for _ = 1, 3 do
          local ok = pcall(function() return %s end)
          if not ok then caught = caught + 1 end
        end
        return "survived, caught " .. caught
      ]]):format(call), { instructions = 1000000 })
      assert.is_false(ok, call .. ": " .. tostring(ok and err))
      assert.are.equal("budget", err.kind, call)
    end
  end)

  it("charges the steps of a long but finite match to the run", function()
    -- ".-b" against 3000 'a's is about 9 million steps (4.5 million tries,
    -- two steps each): more than the budget of 2 million even though the
    -- watchdog may never have counted the run
    local ok, err = run_script([[
      return string.find(("a"):rep(3000), ".-b")
    ]], { instructions = 2000000 })
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
    local ok2, value, info = run_script([[
      return string.find(("a"):rep(3000), ".-b")
    ]], { instructions = 100000000 })
    assert.is_true(ok2)
    assert.is_nil(value)
    assert.is_true(info.instructions >= 4500000, info.instructions)
    assert.is_true(info.instructions < 20000000, info.instructions)
  end)

  it("charges back-references, %b and long sets by their length", function()
    local cases = {
      { ("x"):rep(4000), "(.+)%1y" },
      { ("("):rep(3000), "%b()" },
      { ("z"):rep(20000), "[" .. ("abcdefgh"):rep(200) .. "]" },
    }
    for _, c in ipairs(cases) do
      local ok, err = core.run({ instructions = 1000000 }, function() return P.find(c[1], c[2]) end)
      assert.is_false(ok, c[2]:sub(1, 10))
      assert.are.equal("budget", err.kind)
    end
  end)

  it("caps one call at 1e8 steps outside a budgeted run, with a catchable error", function()
    local ok, err = pcall(P.find, PATHOLOGICAL_S, PATHOLOGICAL_P)
    assert.is_false(ok)
    assert.are.equal("pattern too costly: more than 100000000 matching steps in one call", err)
    local rok, value = core.run({ instructions = 0 }, function()
      return pcall(P.find, PATHOLOGICAL_S, PATHOLOGICAL_P)
    end)
    assert.is_true(rok)
    assert.is_false(value)
  end)

  it("leaves ordinary matching inside a run alone", function()
    local ok, a, info = run_script([[
      local n = 0
      for k, v in ("a=1, b=2, c=3"):gmatch("(%w+)=(%w+)") do n = n + #k + tonumber(v) end
      local s = ("key: value"):gsub("%s+", "")
      return n + #s + (string.find("hello", "l+"))
    ]], { instructions = 1000000 })
    assert.is_true(ok, tostring(a))
    assert.are.equal(9 + 9 + 3, a)
    assert.is_true(info.instructions < 1000000)
  end)
end)

describe("string.dump", function()
  it("is nil inside a script, also as a string method", function()
    local ok, value = run_script([[
      return { type(string.dump), type(("").dump), type(("x")["dump"]), type(rawget(string, "dump")) }
    ]], {})
    assert.is_true(ok)
    assert.are.same({ "nil", "nil", "nil", "nil" }, value)
  end)

  it("stays in the string table for the server's own code", function()
    assert.are.equal("function", type(string.dump))
    assert.is_nil(("").dump)
    -- a function added to the string table later is still a method
    rawset(string, "chorus_test_method", function(s) return s .. "!" end)
    assert.are.equal("x!", ("x"):chorus_test_method())
    rawset(string, "chorus_test_method", nil)
  end)
end)
