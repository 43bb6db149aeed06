-- Ordinary matching: core.pattern (budgeted, runtime/lua_pattern.c) against
-- Lua's own string library, on the kinds of patterns chorus and workflow
-- scripts use. From the repo root after make: lua5.4 scripts/bench/pattern.lua [rounds]
package.cpath = "build/lua/?.so;" .. package.cpath
local core = require "chorus.core"

local P = core.pattern
local S = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }
local text = ("The quick brown fox jumps over the lazy dog. "):rep(20)
local CASES = {
  { "find", "GET /workflows/donation?id=42&x=y HTTP/1.1", "^(%u+)%s+(%S+)" },
  { "match", "key = value", "^%s*([%w_]+)%s*=%s*(.-)%s*$" },
  { "match", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "^%x%x%-(%x+)%-%x+%-%x%x$" },
  { "find", text, "lazy", 1, true },
  { "find", text, "l%a+y" },
  { "gsub", text, "%s+", " " },
  { "gsub", "  trim me please  ", "^%s*(.-)%s*$", "%1" },
  { "gmatch", "a=1, b=2, c=3, d=4", "(%w+)=(%w+)" },
  { "match", "/runs/123e4567-e89b-12d3-a456-426614174000", "^/runs/([%x%-]+)$" },
  { "find", "Content-Type: application/json", ":%s*" },
}

local function loop(lib, cases, n)
  local t0 = os.clock()
  for _ = 1, n do
    for _, c in ipairs(cases) do
      if c[1] == "gmatch" then
        for _ in lib.gmatch(c[2], c[3]) do end -- luacheck: ignore 512
      else
        lib[c[1]](table.unpack(c, 2))
      end
    end
  end
  return os.clock() - t0
end

local n = tonumber(arg[1]) or 20000
loop(S, CASES, 1000)
loop(P, CASES, 1000)
local ts, tp = loop(S, CASES, n), loop(P, CASES, n)
print(("all cases: string %.3fs, core.pattern %.3fs, ratio %.2f"):format(ts, tp, tp / ts))
local _, ratio = core.run({ instructions = 1e12 }, function()
  return loop(P, CASES, n) / loop(S, CASES, n)
end)
print(("inside a budgeted run: ratio %.2f"):format(ratio))
for _, c in ipairs(CASES) do
  local one = { c }
  local a, b = loop(S, one, n), loop(P, one, n)
  print(("  %-6s %-32s %.2f"):format(c[1], c[3], b / a))
end
