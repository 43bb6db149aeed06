-- chorus.luacheck_std — the luacheck standard of workflow scripts: the
-- globals the sandbox (chorus.sandbox) gives them and nothing else, so
-- luacheck flags io, os.execute, package or a misspelt global before a run
-- does. The repo's .luacheckrc reads this file for examples/ and `chorus
-- init` writes it into a new project's .luacheckrc; tests/lua/sandbox_spec
-- holds it to the sandbox.
--
-- math.randomseed is left out (it always raises in a script: the generator
-- is the server's); os.time, os.date, os.clock and math.random are in (they
-- are journaled; `chorus check` warns about each use).
local function fields(list)
  return { fields = list }
end

return {
  read_globals = {
    "_G", "_VERSION", "assert", "collectgarbage", "error", "getmetatable", "ipairs", "load", "next", "pairs",
    "pcall", "print", "rawequal", "rawget", "rawlen", "rawset", "require", "select", "setmetatable",
    "tonumber", "tostring", "type", "xpcall",
    coroutine = fields({ "close", "create", "isyieldable", "resume", "running", "status", "wrap", "yield" }),
    math = fields({ "abs", "acos", "asin", "atan", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge", "log",
      "max", "maxinteger", "min", "mininteger", "modf", "pi", "rad", "random", "sin", "sqrt", "tan",
      "tointeger", "type", "ult" }),
    os = fields({ "clock", "date", "difftime", "time" }),
    string = fields({ "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match", "pack",
      "packsize", "rep", "reverse", "sub", "unpack", "upper" }),
    table = fields({ "concat", "insert", "move", "pack", "remove", "sort", "unpack" }),
    utf8 = fields({ "char", "charpattern", "codepoint", "codes", "len", "offset" }),
  },
}
