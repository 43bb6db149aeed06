-- man.lua — writes chorus(1) from README.md, so the man page says what the
-- README says and is never edited by hand:
--
--   lua5.4 scripts/man.lua README.md VERSION > chorus.1
--
-- NAME and DESCRIPTION come from the README's title and first paragraph,
-- SYNOPSIS from the code block that opens "### CLI", and the sections listed
-- in SECTIONS from the README sections of those headings, converted from the
-- Markdown the README uses (paragraphs, fenced code, lists, tables, `code`,
-- **bold**, [links](...)) to man(7) macros.
local SECTIONS = {
  { heading = "### CLI", title = "COMMANDS", skip_first_code = true },
  { heading = "### Testing workflows (`chorus.testing`, `chorus test`)", title = "TESTING WORKFLOWS" },
  { heading = "## Operating chorus", title = "OPERATING CHORUS" },
}

local readme_path, version = arg[1], arg[2] or ""
if not readme_path then
  io.stderr:write("usage: lua5.4 scripts/man.lua README.md [VERSION] > chorus.1\n")
  os.exit(2)
end
local f = assert(io.open(readme_path, "rb"))
local lines = {}
for line in f:read("a"):gmatch("([^\n]*)\n?") do
  lines[#lines + 1] = line
end
f:close()

-- roff text: backslashes and minus signs escaped, and every non-ASCII
-- character written as \[uXXXX], so the page is plain ASCII (troff reads
-- bytes, not UTF-8).
local function escape(s)
  s = s:gsub("\\", "\\e"):gsub("%-", "\\-")
  return (s:gsub(utf8.charpattern, function(c)
    local code = utf8.codepoint(c)
    return code < 128 and c or ("\\[u%04X]"):format(code)
  end))
end

local function line_start(s)
  if s:match("^[.']") then
    return "\\&" .. s
  end
  return s
end

-- Inline Markdown to roff fonts: `code` and **bold** in bold, *x* in italics,
-- [text](url) as its text.
local function inline(s)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c == "`" then
      local j = s:find("`", i + 1, true)
      if not j then
        out[#out + 1] = escape(s:sub(i))
        break
      end
      out[#out + 1] = "\\fB" .. escape(s:sub(i + 1, j - 1)) .. "\\fR"
      i = j + 1
    elseif s:sub(i, i + 1) == "**" then
      local j = s:find("**", i + 2, true)
      if not j then
        out[#out + 1] = escape(s:sub(i))
        break
      end
      out[#out + 1] = "\\fB" .. inline(s:sub(i + 2, j - 1)) .. "\\fR"
      i = j + 2
    elseif c == "[" and s:find("^%[[^%]]+%]%([^)]+%)", i) then
      local text, j = s:match("^%[([^%]]+)%]%([^)]+%)()", i)
      out[#out + 1] = inline(text)
      i = j
    else
      local j = s:find("[`%*%[]", i + 1) or #s + 1
      if c == "*" and s:sub(i + 1, i + 1) ~= "*" and s:find("^%*[^%*%s][^%*]-%*", i) then
        local text, k = s:match("^%*([^%*]+)%*()", i)
        out[#out + 1] = "\\fI" .. escape(text) .. "\\fR"
        i = k
      else
        out[#out + 1] = escape(s:sub(i, j - 1))
        i = j
      end
    end
  end
  return table.concat(out)
end

local function cells(row)
  local out = {}
  row = row:gsub("^%s*|", ""):gsub("|%s*$", "")
  -- a | inside `code` is part of the cell
  local cur, in_code = {}, false
  for ch in row:gmatch(".") do
    if ch == "`" then
      in_code = not in_code
    end
    if ch == "|" and not in_code then
      out[#out + 1] = table.concat(cur):match("^%s*(.-)%s*$")
      cur = {}
    else
      cur[#cur + 1] = ch
    end
  end
  out[#out + 1] = table.concat(cur):match("^%s*(.-)%s*$")
  return out
end

-- Converts lines[first..last] (a README section's body) to roff lines.
local function convert(first, last, opts, out)
  local i, para, skipped_code = first, {}, false
  local function flush()
    if #para > 0 then
      out[#out + 1] = ".PP"
      out[#out + 1] = line_start(inline(table.concat(para, " ")))
      para = {}
    end
  end
  while i <= last do
    local line = lines[i]
    if line:match("^```") then
      flush()
      local j = i + 1
      while j <= last and not lines[j]:match("^```") do
        j = j + 1
      end
      if opts.skip_first_code and not skipped_code then
        skipped_code = true
      else
        out[#out + 1] = ".PP"
        out[#out + 1] = ".RS 4"
        out[#out + 1] = ".nf"
        for k = i + 1, j - 1 do
          out[#out + 1] = line_start(escape(lines[k]))
        end
        out[#out + 1] = ".fi"
        out[#out + 1] = ".RE"
      end
      i = j + 1
    elseif line:match("^|") then
      flush()
      local header = cells(line)
      i = i + 2 -- the header and its | --- | line
      while i <= last and lines[i]:match("^|") do
        local row = cells(lines[i])
        out[#out + 1] = ".TP"
        out[#out + 1] = line_start(inline(row[1]))
        local rest = {}
        for k = 2, #row do
          rest[#rest + 1] = (#header > 2 and header[k] ~= "" and (header[k] .. ": ") or "") .. row[k]
        end
        out[#out + 1] = line_start(inline(table.concat(rest, "; ")))
        i = i + 1
      end
    elseif line:match("^%s*[-*] ") or line:match("^%s*%d+%. ") then
      flush()
      local item = { (line:gsub("^%s*[-*] ", ""):gsub("^%s*%d+%. ", "")) }
      i = i + 1
      while i <= last and lines[i]:match("^%s+%S") and not lines[i]:match("^%s*[-*] ") do
        item[#item + 1] = lines[i]:match("^%s*(.-)$")
        i = i + 1
      end
      out[#out + 1] = ".IP \\(bu 2"
      out[#out + 1] = line_start(inline(table.concat(item, " ")))
    elseif line:match("^#+ ") then
      flush()
      out[#out + 1] = ".SS " .. inline(line:gsub("^#+ ", ""))
      i = i + 1
    elseif line:match("^%s*$") then
      flush()
      i = i + 1
    else
      para[#para + 1] = line
      i = i + 1
    end
  end
  flush()
end

-- The README lines of a section: from its heading to the next heading of
-- the same level or higher.
local function section(heading)
  local level = #heading:match("^(#+)")
  for i, line in ipairs(lines) do
    if line == heading then
      local j = i + 1
      while j <= #lines do
        local h = lines[j]:match("^(#+) ")
        if h and #h <= level then
          break
        end
        j = j + 1
      end
      return i + 1, j - 1
    end
  end
  error(("README has no heading '%s' (scripts/man.lua SECTIONS names it)"):format(heading))
end

local function synopsis()
  local first = section("### CLI")
  local i = first
  while not lines[i]:match("^```") do
    i = i + 1
  end
  local out = { ".SH SYNOPSIS", ".nf" }
  i = i + 1
  while not lines[i]:match("^```") do
    out[#out + 1] = line_start(escape(lines[i]))
    i = i + 1
  end
  out[#out + 1] = ".fi"
  return out
end

local function description()
  local para, i = {}, 2
  while lines[i] == "" do
    i = i + 1
  end
  while lines[i] and lines[i] ~= "" do
    para[#para + 1] = lines[i]
    i = i + 1
  end
  return table.concat(para, " ")
end

local out = {
  '.\\" Generated from README.md by scripts/man.lua; edit the README instead.',
  (".TH CHORUS 1 \"\" \"chorus %s\" \"User Commands\""):format(escape(version)),
  ".SH NAME",
  "chorus \\- a durable workflow runtime for calling several APIs for one user action",
}
for _, l in ipairs(synopsis()) do
  out[#out + 1] = l
end
out[#out + 1] = ".SH DESCRIPTION"
out[#out + 1] = line_start(inline(description()))
for _, s in ipairs(SECTIONS) do
  out[#out + 1] = ".SH " .. s.title
  local first, last = section(s.heading)
  convert(first, last, s, out)
end
out[#out + 1] = ".SH FILES"
out[#out + 1] = ".TP"
out[#out + 1] = "\\fIPREFIX\\fR/share/lua/5.4/chorus/"
out[#out + 1] = "the Lua modules, for specs run by busted (\\fBrequire \"chorus.testing\"\\fR)"
out[#out + 1] = ".TP"
out[#out + 1] = "\\fIPREFIX\\fR/lib/lua/5.4/chorus/core.so"
out[#out + 1] = "the C core the specs load (under lib/\\fIMULTIARCH\\fR/ for PREFIX=/usr)"
out[#out + 1] = ".TP"
out[#out + 1] = "\\fIPREFIX\\fR/share/doc/chorus/"
out[#out + 1] = "README.md, LICENSE, the examples and the contrib files (systemd unit, Grafana dashboard, alerts)"
out[#out + 1] = ".SH SEE ALSO"
out[#out + 1] = "\\fBbusted\\fR(1), \\fBsystemd.service\\fR(5), \\fBsd_notify\\fR(3)"
out[#out + 1] = ".SH LICENSE"
out[#out + 1] = "MIT; see LICENSE."
io.stdout:write(table.concat(out, "\n"), "\n")
