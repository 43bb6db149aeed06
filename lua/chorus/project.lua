-- chorus.project — `chorus init DIR`: a new project whose specs pass at
-- once, laid out the way `chorus test` and `chorus serve` look for it:
--
--   DIR/workflows/hello.lua       a workflow calling the upstream "greeter"
--   DIR/workflows/hello_spec.lua  its specs, on chorus.testing's mocks
--   DIR/.busted                   busted's ROOT: workflows/
--   DIR/chorus.conf.lua           chorus serve's config (the upstream's URL)
--   DIR/.luarc.json               LuaLS: the API's annotations (types/ of the checkout or install)
--   DIR/.luacheckrc               luacheck: the sandbox's globals (chorus.luacheck_std)
local core = require "chorus.core"

local project = {}

local WORKFLOW = [[
-- hello — greets someone with the greeting the "greeter" API gives.
--
-- The upstream "greeter" is declared in chorus.conf.lua (its base_url, or
-- the environment variable CHORUS_UPSTREAM_GREETER); the specs in
-- hello_spec.lua mock it by that name.
local chorus = require "chorus"
local http = require "chorus.http"
local retry = require "chorus.retry"

-- A busy greeter (5xx, 429, a timeout) is asked again, backing off.
local POLICY = retry.policy { attempts = 3, backoff = "full_jitter", base = 0.2, cap = 2 }

return chorus.workflow {
  name = "hello",
  description = "Greet someone by name",
  timeout = 30,
  run = function(ctx, input)
    if type(input) ~= "table" or type(input.name) ~= "string" then
      return { status = 400, json = { error = "input must be an object with a 'name'" } }
    end
    local r = retry.run(POLICY, function()
      return http.upstream("greeter"):get("/greeting", { timeout = 5 })
    end)
    if r.status ~= 200 or type(r.json) ~= "table" or type(r.json.greeting) ~= "string" then
      return { status = 502, json = { error = "the greeter answered " .. r.status } }
    end
    ctx.log.info("greeted", { name = input.name })
    return { status = 200, json = { message = r.json.greeting .. ", " .. input.name } }
  end,
}
]]

local SPEC = [[
-- Specs of hello.lua: `chorus test` in the project folder runs them, with
-- mock upstreams and a virtual clock (a backoff takes no real time).
local testing = require "chorus.testing"

local SCRIPT = testing.here "hello.lua"

describe("hello", function()
  before_each(testing.reset)

  it("greets by name with the greeter's greeting", function()
    testing.mock("greeter", { status = 200, json = { greeting = "Hello" } })
    local r = testing.run(SCRIPT, { name = "Ada" })
    assert.is_true(r.ok)
    assert.are.same({ status = 200, json = { message = "Hello, Ada" } }, r.value)
    assert.called_upstream(r, "greeter", "GET", "/greeting")
  end)

  it("asks a busy greeter again", function()
    testing.mock("greeter", { { status = 503 }, { status = 503 }, { status = 200, json = { greeting = "Hi" } } })
    local r = testing.run(SCRIPT, { name = "Ada" })
    assert.are.equal("Hi, Ada", r.value.json.message)
    assert.are.equal(3, #testing.calls_to(r, "greeter"))
  end)

  it("answers 502 when the greeter keeps failing", function()
    testing.mock("greeter", { status = 503 })
    local r = testing.run(SCRIPT, { name = "Ada" })
    assert.are.equal(502, r.value.status)
  end)

  it("answers 400 to an input without a name, calling nobody", function()
    local r = testing.run(SCRIPT, { nope = true })
    assert.are.equal(400, r.value.status)
    assert.are.equal(0, #r.calls)
  end)
end)
]]

local BUSTED = [[
-- `chorus test` (from this folder or below) runs busted here: the specs
-- are the *_spec.lua files under workflows/.
return {
  default = {
    ROOT = { "workflows" },
    pattern = "_spec",
  },
}
]]

local CONFIG = [[
-- The config of `chorus serve --config chorus.conf.lua` (README "Config
-- file" lists every key). The greeter's URL can also come from the
-- environment: GREETER_URL=http://... chorus serve ...
local chorus = require "chorus"

return {
  listen = "127.0.0.1:8080",
  scripts = "./workflows",
  data = "./.chorus-data",
  upstreams = {
    greeter = { base_url = chorus.env("GREETER_URL", "http://127.0.0.1:9100"), timeout = 5 },
  },
}
]]

local GITIGNORE = [[
.chorus-data/
]]

-- A Lua literal of v (strings, numbers, lists and string-keyed tables),
-- keys sorted so the file reads the same each time.
local function literal(v, indent)
  if type(v) ~= "table" then
    return ("%q"):format(v)
  end
  indent = indent or ""
  local inner = indent .. "  "
  local parts = {}
  for _, item in ipairs(v) do
    parts[#parts + 1] = literal(item, inner)
  end
  local keys = {}
  for k in pairs(v) do
    if type(k) == "string" then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  if #keys == 0 then
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  for _, k in ipairs(keys) do
    parts[#parts + 1] = ("%s = %s"):format(k, literal(v[k], inner))
  end
  return "{\n" .. inner .. table.concat(parts, ",\n" .. inner) .. ",\n" .. indent .. "}"
end

local function luacheckrc()
  return ([[
-- luacheck: workflow scripts see the globals of chorus's sandbox only
-- (chorus.luacheck_std); specs run under busted.
stds.chorus_workflow = %s
std = "chorus_workflow"
max_line_length = 120
files["**/*_spec.lua"] = { std = "lua54+busted" }
files["chorus.conf.lua"] = { std = "chorus_workflow" }
exclude_files = { ".chorus-data/**" }
]]):format(literal((require("chorus.luacheck_std"))))
end

-- The editor settings (lua-language-server reads .luarc.json): the API's
-- annotations live in the folder types (types/ of the chorus checkout, or
-- PREFIX/share/chorus/types once installed).
local function luarc(types)
  local library = { "${3rd}/busted/library", "${3rd}/luassert/library" }
  if types then
    table.insert(library, 1, types)
  end
  for i, path in ipairs(library) do
    library[i] = "    " .. core.json.encode(path)
  end
  return table.concat({
    "{",
    '  "$schema": "https://raw.githubusercontent.com/LuaLS/vscode-lua/master/setting/schema.json",',
    '  "runtime.version": "Lua 5.4",',
    '  "runtime.pathStrict": true,',
    '  "workspace.library": [',
    table.concat(library, ",\n"),
    "  ],",
    '  "workspace.checkThirdParty": false',
    "}",
    "",
  }, "\n")
end

local function write(path, text)
  local f, err = io.open(path, "wb")
  if not f then
    return nil, err
  end
  local ok, werr = f:write(text)
  f:close()
  return ok and true, werr
end

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- Creates the project in dir (which must be missing or empty); opts.types
--- is the folder of the API's annotations the editor settings name (nil:
--- none found, the settings name busted's only). Returns the list of files made,
--- or nil and why not.
function project.create(dir, opts)
  local entries = core.scandir(dir)
  if entries and #entries > 0 then
    return nil, ("'%s' is not empty: chorus init creates a new project in a missing or empty folder"):format(dir)
  end
  local f = not entries and io.open(dir, "rb")
  if f then -- there, and no folder
    f:close()
    return nil, ("'%s' is a file: chorus init creates a new project in a missing or empty folder"):format(dir)
  end
  local ok = os.execute("mkdir -p " .. quote(dir .. "/workflows"))
  if not ok then
    return nil, ("cannot create the folder '%s'"):format(dir)
  end
  local files = {
    { "workflows/hello.lua", WORKFLOW },
    { "workflows/hello_spec.lua", SPEC },
    { ".busted", BUSTED },
    { "chorus.conf.lua", CONFIG },
    { ".luarc.json", luarc(opts and opts.types) },
    { ".luacheckrc", luacheckrc() },
    { ".gitignore", GITIGNORE },
  }
  local made = {}
  for _, file in ipairs(files) do
    local path = dir .. "/" .. file[1]
    local wok, err = write(path, file[2])
    if not wok then
      return nil, ("cannot write %s: %s"):format(path, tostring(err))
    end
    made[#made + 1] = path
  end
  return made
end

--- What to run next in the project at dir, one command a line.
function project.next_steps(dir)
  local shown = dir:find("^[%w_%-%./]+$") and dir or quote(dir)
  return table.concat({
    "  cd " .. shown .. " && chorus test",
    "  chorus serve --config chorus.conf.lua --scripts workflows   # GREETER_URL=... names the greeter API",
  }, "\n")
end

return project
