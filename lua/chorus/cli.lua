-- chorus.cli — the command line: parses arguments, dispatches, and maps
-- outcomes to exit codes (0 success, 1 the workflow or a script failed,
-- 2 bad usage). Every failure is one line on stderr.
local core = require "chorus.core"
local errors = require "chorus.errors"
local json = core.json

local cli = {}

local USAGE = [[
usage:
  chorus run    SCRIPT [--input JSON | --input @FILE] [--config FILE] [--data DIR] [--verbose]
  chorus serve  [--config FILE] [--scripts DIR] [--data DIR] [--listen HOST:PORT]
  chorus check  SCRIPT...
  chorus test   [DIR]
  chorus version
  chorus help]]

local Usage = {}

local function usage_error(fmt, ...)
  error(setmetatable({ message = fmt:format(...) }, Usage), 0)
end

-- Splits args into positionals and --flags; flags in spec take a value.
local function parse(args, spec)
  local pos, flags = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^%-%-([%w-]+)=(.*)$")
    name = name or a:match("^%-%-([%w-]+)$")
    if name then
      local kind = spec[name]
      if kind == nil then
        usage_error("unknown option --%s", name)
      elseif kind == "value" then
        local v = inline
        if not v then
          i = i + 1
          v = args[i]
        end
        if v == nil then
          usage_error("option --%s needs a value", name)
        end
        flags[name] = v
      else
        flags[name] = true
      end
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return pos, flags
end

local function read_input(text)
  if text == nil then
    return {}
  end
  if text:sub(1, 1) == "@" then
    local f, err = io.open(text:sub(2), "rb")
    if not f then
      usage_error("cannot read --input file: %s", err)
    end
    text = f:read("a") or ""
    f:close()
  end
  local ok, value = pcall(json.decode, text)
  if not ok then
    usage_error("--input is not valid JSON: %s", tostring(value):gsub("^json%.decode: ", ""))
  end
  return value
end

local function load_config(path)
  if not path then
    return {}
  end
  local config = require "chorus.config"
  local conf, err = config.load(path)
  if not conf then
    usage_error("%s", err)
  end
  config.apply(conf)
  return conf
end

local function fail(obj)
  io.stderr:write(json.encode(obj), "\n")
  return 1
end

function cli.run(args)
  local pos, flags = parse(args, { input = "value", config = "value", data = "value", verbose = true })
  if #pos ~= 1 then
    usage_error("run takes exactly one SCRIPT (got %d)", #pos)
  end
  local input = read_input(flags.input)
  load_config(flags.config)
  local script = require "chorus.script"
  local workflow, err = script.load(pos[1])
  if not workflow then
    if err:match("^cannot read script") then
      usage_error("%s", err)
    end
    return fail({ error = { kind = "script", message = err } })
  end
  local runner = require "chorus.runner"
  local ok, value, info = core.run(nil, runner.execute, workflow, input)
  if not ok then
    if flags.verbose and info.traceback then
      io.stderr:write(info.traceback, "\n")
    end
    return fail({ error = errors.normalize(value), run_id = info.id })
  end
  local eok, text = pcall(json.encode, value)
  if not eok then
    return fail({ error = { kind = "result", message = "the workflow's result is not JSON: " .. tostring(text) },
      run_id = info.id })
  end
  io.stdout:write(text, "\n")
  return 0
end

function cli.serve(args)
  local pos, flags = parse(args, { config = "value", scripts = "value", data = "value", listen = "value" })
  if #pos > 0 then
    usage_error("serve takes no positional arguments (got '%s')", pos[1])
  end
  local conf = load_config(flags.config)
  conf.listen = flags.listen or conf.listen or "127.0.0.1:8080"
  conf.scripts = flags.scripts or conf.scripts or "./examples"
  conf.data = flags.data or conf.data or "./.chorus-data"
  if not conf.listen:match("^%d+%.%d+%.%d+%.%d+:%d+$") then
    usage_error("--listen must be IPV4:PORT, e.g. 127.0.0.1:8080 (got '%s')", conf.listen)
  end
  local server = require "chorus.server"
  local ok, err = server.serve(conf, function(address)
    io.stdout:write("chorus: listening on http://", address, "\n")
    io.stdout:flush()
  end)
  if not ok then
    io.stderr:write("chorus serve: ", err, "\n")
    return 1
  end
  return 0
end

function cli.check(args)
  local pos = parse(args, {})
  if #pos == 0 then
    usage_error("check needs at least one SCRIPT")
  end
  local script = require "chorus.script"
  local failed = 0
  for _, path in ipairs(pos) do
    local workflow, err = script.load(path)
    if workflow then
      io.stdout:write(("ok   %s (workflow %s)\n"):format(path, workflow.name))
    else
      failed = failed + 1
      io.stdout:write(("FAIL %s\n"):format(err))
    end
  end
  if failed > 0 then
    io.stderr:write(("chorus check: %d of %d scripts failed\n"):format(failed, #pos))
    return 1
  end
  return 0
end

local function readable(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
  end
  return f ~= nil
end

-- The checkout this binary was built in: its lua/ and build/lua/ hold the
-- modules and the C core that busted loads.
local function find_root()
  local exe = core.exe() or ""
  local dir = exe:match("^(.*)/[^/]*$") or "."
  for _, root in ipairs({ dir, dir:match("^(.*)/[^/]*$") or "." }) do
    if readable(root .. "/lua/chorus/init.lua") and readable(root .. "/build/lua/chorus/core.so") then
      return root
    end
  end
  return nil
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

function cli.test(args)
  local pos = parse(args, {})
  if #pos > 1 then
    usage_error("test takes at most one DIR (got %d)", #pos)
  end
  local dir = pos[1] or "."
  if not core.scandir(dir) then
    usage_error("cannot read the folder '%s'", dir)
  end
  local root = find_root()
  if not root then
    io.stderr:write("chorus test: cannot find lua/chorus and build/lua/chorus/core.so next to this binary; ",
      "run `make` in the chorus checkout\n")
    return 1
  end
  local cmd = ("lua5.4 /usr/bin/busted --ignore-lua --lpath=%s --cpath=%s --pattern=_spec %s"):format(
    shell_quote(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua"),
    shell_quote(root .. "/build/lua/?.so"), shell_quote(dir))
  local ok, _, code = os.execute(cmd)
  if ok then
    return 0
  end
  return code ~= 0 and code or 1
end

function cli.version()
  io.stdout:write("chorus ", core.version, " (", _VERSION, ")\n")
  return 0
end

function cli.help()
  io.stdout:write(USAGE, "\n")
  return 0
end

local COMMANDS = { run = cli.run, serve = cli.serve, check = cli.check, test = cli.test,
  version = cli.version, help = cli.help,
  ["--help"] = cli.help, ["-h"] = cli.help, ["--version"] = cli.version }

--- Entry point from main.c: returns the process exit status.
function cli.main(argv)
  local cmd = argv[1]
  local fn = COMMANDS[cmd or ""]
  local ok, status = pcall(function()
    if not fn then
      usage_error(cmd and ("unknown command '%s'"):format(cmd) or "no command given")
    end
    return fn(table.move(argv, 2, #argv, 1, {}))
  end)
  if ok then
    return status
  end
  if getmetatable(status) == Usage then
    io.stderr:write("chorus: ", status.message, " (see 'chorus help')\n")
    return 2
  end
  io.stderr:write("chorus: ", tostring(status), "\n")
  return 1
end

return cli
