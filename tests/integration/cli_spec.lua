-- The command line as a user meets it (issue 15, item 8): help for chorus
-- and for each command, shell completion scripts, argparse's usage errors
-- (exit 2, one line), and `chorus init` making a project whose specs pass,
-- which luacheck accepts and which `chorus serve` serves.
local H = require "tests.integration.helpers"

local ABS_CHORUS = H.exec("pwd").stdout:gsub("\n$", "") .. "/" .. H.chorus
if H.chorus:sub(1, 1) == "/" then
  ABS_CHORUS = H.chorus
end

-- Runs chorus with args from the folder dir (a shell command line).
local function chorus_in(dir, args, env, timeout)
  local quoted = {}
  for i, a in ipairs(args) do
    quoted[i] = H.quote(a)
  end
  return H.exec("sh -c " .. H.quote(("cd %s && %s %s"):format(H.quote(dir), H.quote(ABS_CHORUS),
    table.concat(quoted, " "))), env, timeout)
end

local COMMANDS = { "run", "serve", "check", "test", "init", "runs", "outbox", "dlq", "data", "version",
  "completion", "help" }

describe("chorus --help", function()
  it("lists every command and exits 0", function()
    local r = H.chorus_run({ "--help" })
    assert.are.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("Usage: chorus", 1, true), r.stdout)
    for _, name in ipairs(COMMANDS) do
      assert.truthy(r.stdout:find("\n   " .. name .. " ", 1, true), name .. " not in:\n" .. r.stdout)
    end
    assert.are.equal(r.stdout, H.chorus_run({ "-h" }).stdout)
    assert.are.equal(r.stdout, H.chorus_run({ "help" }).stdout)
  end)

  it("prints each command's usage and options with CMD --help, exit 0", function()
    for _, name in ipairs(COMMANDS) do
      local r = H.chorus_run({ name, "--help" })
      assert.are.equal(0, r.code, name .. ": " .. r.stderr)
      assert.truthy(r.stdout:find("Usage: chorus " .. name, 1, true), r.stdout)
    end
    local run = H.chorus_run({ "run", "--help" })
    for _, flag in ipairs({ "--input JSON", "--config FILE", "--data DIR", "--verbose" }) do
      assert.truthy(run.stdout:find(flag, 1, true), flag .. " not in:\n" .. run.stdout)
    end
    assert.are.equal(run.stdout, H.chorus_run({ "help", "run" }).stdout)
    local list = H.chorus_run({ "dlq", "list", "--help" })
    assert.are.equal(0, list.code)
    assert.truthy(list.stdout:find("Usage: chorus dlq list [-h] [--data DIR] [--limit N]", 1, true), list.stdout)
    assert.is_nil(list.stdout:find("--config", 1, true), list.stdout) -- accepted, meaningless: hidden
  end)

  it("works from any folder: argparse comes from the system Lua path", function()
    local r = chorus_in("/", { "run", "--help" })
    assert.are.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("Usage: chorus run", 1, true))
  end)

  it("prints the version with --version", function()
    local r = H.chorus_run({ "--version" })
    assert.are.equal(0, r.code)
    assert.truthy(r.stdout:match("^chorus %d+%.%d+%.%d+ %(Lua 5%.4%)"), r.stdout)
  end)
end)

describe("bad usage", function()
  local function refused(args, pattern)
    local r = H.chorus_run(args)
    assert.are.equal(2, r.code, r.stderr)
    assert.are.equal("", r.stdout)
    assert.is_nil(r.stderr:gsub("\n$", ""):find("\n"), "not one line: " .. r.stderr)
    assert.truthy(r.stderr:find(pattern, 1, true), ("%q not in %q"):format(pattern, r.stderr))
  end

  it("exits 2 with argparse's message on one line, naming the command's help", function()
    refused({ "runs", "lst" }, "chorus: unknown command 'lst'; did you mean 'list'? (see 'chorus runs --help')")
    refused({ "serve", "extra" }, "too many arguments (see 'chorus serve --help')")
    refused({ "check" }, "missing argument 'scripts'")
    refused({ "dlq", "replay" }, "missing argument 'id'")
    refused({ "data", "verify", "--limit", "3" }, "unknown option '--limit' (see 'chorus data --help')")
    refused({ "completion", "tcsh" }, "argument 'shell' must be one of 'bash', 'zsh', 'fish'")
    refused({ "help", "nope" }, "unknown command 'nope'")
  end)

  it("still takes --data, --limit and --config anywhere in runs, outbox and dlq", function()
    local data = H.temp_dir()
    for _, args in ipairs({ { "dlq", "--data", data, "list" },
      { "dlq", "list", "--config", "x.lua", "--data", data },
      { "outbox", "--limit", "5", "list", "--data", data },
      { "runs", "list", "--config", "x.lua", "--data", data } }) do
      local r = H.chorus_run(args)
      assert.are.equal(0, r.code, table.concat(args, " ") .. ": " .. r.stderr)
    end
    local r = H.chorus_run({ "runs", "show", "nope", "--limit", "3", "--data", data })
    os.execute("rm -rf " .. H.quote(data))
    assert.are.equal(1, r.code)
    assert.truthy(r.stderr:find("no run with id 'nope'", 1, true), r.stderr)
  end)

  it("still reads a value that starts with '-' as the option's value", function()
    local r = H.chorus_run({ "run", "examples/fanout/fanout.lua", "--input", "-1" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(400, H.decode(r.stdout).status) -- -1 reached the workflow: no event
    r = H.chorus_run({ "run", "examples/fanout/fanout.lua", "--input=-1" })
    assert.are.equal(400, H.decode(r.stdout).status)
  end)
end)

describe("chorus completion", function()
  it("prints a bash script that bash accepts, naming the commands", function()
    local r = H.chorus_run({ "completion", "bash" })
    assert.are.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("complete -F _chorus", 1, true), r.stdout)
    assert.truthy(r.stdout:find("--input", 1, true))
    local path = H.write_temp(r.stdout, ".bash")
    local check = H.exec("bash -n " .. H.quote(path))
    os.remove(path)
    assert.are.equal(0, check.code, check.stderr)
  end)

  it("prints zsh and fish scripts", function()
    local zsh = H.chorus_run({ "completion", "zsh" })
    assert.are.equal(0, zsh.code)
    assert.truthy(zsh.stdout:find("#compdef chorus", 1, true))
    local fish = H.chorus_run({ "completion", "fish" })
    assert.are.equal(0, fish.code)
    assert.truthy(fish.stdout:find("complete -c chorus", 1, true))
    assert.truthy(fish.stdout:find("redrive", 1, true))
  end)
end)

describe("chorus init", function()
  local root, dir

  setup(function()
    root = H.temp_dir()
    dir = root .. "/my project"
  end)

  teardown(function() H.clean(root) end)

  it("creates a workflow, its spec, a .busted and a config, and names the next commands", function()
    local r = H.chorus_run({ "init", dir })
    assert.are.equal(0, r.code, r.stderr)
    for _, file in ipairs({ "workflows/hello.lua", "workflows/hello_spec.lua", ".busted", "chorus.conf.lua",
      ".luarc.json", ".luacheckrc" }) do
      assert.truthy(H.read(dir .. "/" .. file), file)
      assert.truthy(r.stdout:find("created " .. dir .. "/" .. file, 1, true), r.stdout)
    end
    assert.truthy(r.stdout:find("chorus test", 1, true), r.stdout)
    assert.truthy(r.stdout:find("chorus serve --config chorus.conf.lua --scripts workflows", 1, true), r.stdout)
    -- the editor settings name the API's annotations of this checkout
    local luarc = H.decode(H.read(dir .. "/.luarc.json"))
    assert.truthy(luarc["workspace.library"][1]:match("/types$"), H.read(dir .. "/.luarc.json"))
    assert.truthy(H.read(luarc["workspace.library"][1] .. "/chorus/http.lua"))
  end)

  it("makes a project whose specs pass at once with chorus test", function()
    local r = chorus_in(dir, { "test" }, nil, 60)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("4 successes / 0 failures / 0 errors", 1, true), r.stdout)
  end)

  it("makes a workflow chorus check passes and luacheck accepts under the workflow standard", function()
    local r = chorus_in(dir, { "check", "workflows/hello.lua" })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal("ok   workflows/hello.lua (workflow hello)\n", r.stdout)
    local lint = H.exec("sh -c " .. H.quote("cd " .. H.quote(dir) .. " && luacheck --no-color ."))
    assert.are.equal(0, lint.code, lint.stdout)
    -- and the standard holds: io is no global of a workflow script
    local f = assert(io.open(dir .. "/workflows/leaky.lua", "wb"))
    f:write('local f = io.open("/etc/passwd")\nreturn f\n')
    f:close()
    lint = H.exec("sh -c " .. H.quote("cd " .. H.quote(dir) .. " && luacheck --no-color workflows/leaky.lua"))
    os.remove(dir .. "/workflows/leaky.lua")
    assert.are_not.equal(0, lint.code)
    assert.truthy(lint.stdout:find("accessing undefined variable 'io'", 1, true), lint.stdout)
  end)

  it("makes a config chorus serve starts with, serving the workflow", function()
    local mock = H.start_mock(60)
    local srv = H.start_server({ "--config", dir .. "/chorus.conf.lua", "--scripts", dir .. "/workflows" },
      { GREETER_URL = mock.url .. "?body=%7B%22greeting%22%3A%22Hello%22%7D" })
    local r = H.request(srv.url .. "/workflows/hello", { method = "POST", body = '{"name":"Ada"}' })
    srv.stop()
    mock.stop()
    assert.are.equal(200, r.status, r.body)
    assert.are.same({ message = "Hello, Ada" }, H.decode(r.body))
  end)

  it("refuses a folder that is not empty, and a file, with exit 2", function()
    local r = H.chorus_run({ "init", dir })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("is not empty: chorus init creates a new project in a missing or empty folder",
      1, true), r.stderr)
    assert.are.equal("", r.stdout)
    r = H.chorus_run({ "init", dir .. "/chorus.conf.lua" })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("is a file", 1, true), r.stderr)
  end)

  it("creates the project in an empty folder that exists", function()
    local empty = H.temp_dir()
    local r = H.chorus_run({ "init", empty })
    os.execute("rm -rf " .. H.quote(empty))
    assert.are.equal(0, r.code, r.stderr)
  end)
end)
