-- `make install` into a DESTDIR tree, and the installed chorus used from
-- outside the checkout: `chorus init` + `chorus test` with the modules and
-- core.so it installed, plain busted with LUA_PATH/LUA_CPATH into the tree,
-- the man page, the systemd unit; then `make uninstall` leaves no file.
local H = require "tests.integration.helpers"

local MULTIARCH = H.exec("cc -print-multiarch").stdout:match("%S+")

local function exists(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
  end
  return f ~= nil
end

-- a shell command line (cd, &&): H.exec runs its command under timeout
local function sh(cmd, env, timeout)
  return H.exec("sh -c " .. H.quote(cmd), env, timeout)
end

local function make(target, dest, prefix)
  return H.exec(("make %s DESTDIR=%s PREFIX=%s"):format(target, H.quote(dest), prefix), nil, 300)
end

local function files_under(dir)
  local r = H.exec("find " .. H.quote(dir) .. " -type f")
  local list = {}
  for line in r.stdout:gmatch("[^\n]+") do
    list[#list + 1] = line:sub(#dir + 2)
  end
  table.sort(list)
  return list
end

describe("make install PREFIX=/usr DESTDIR=tmp", function()
  local dest, work, bin
  local prefix = "/usr"

  setup(function()
    dest, work = H.temp_dir(), H.temp_dir()
    local r = make("install", dest, prefix)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    bin = dest .. "/usr/bin/chorus"
  end)

  teardown(function() H.clean(dest, work) end)

  it("puts the binary, the Lua modules, core.so on Debian's lua5.4 cpath, the man page, docs and examples", function()
    local cdir = "/usr/lib/" .. MULTIARCH .. "/lua/5.4"
    assert.truthy(H.exec("lua5.4 -e 'print(package.cpath)'").stdout:find(cdir .. "/?.so", 1, true))
    for _, path in ipairs({ "/usr/bin/chorus", "/usr/share/lua/5.4/chorus/init.lua",
      "/usr/share/lua/5.4/chorus/testing.lua", cdir .. "/chorus/core.so", "/usr/share/man/man1/chorus.1",
      "/usr/share/doc/chorus/README.md", "/usr/share/doc/chorus/LICENSE",
      "/usr/share/doc/chorus/examples/fanout/fanout.lua", "/usr/share/doc/chorus/contrib/chorus.service",
      "/usr/share/doc/chorus/contrib/grafana-dashboard.json", "/usr/share/chorus/types/chorus/http.lua" }) do
      assert.is_true(exists(dest .. path), path)
    end
    assert.is_true(H.exec("test -x " .. H.quote(bin)).code == 0)
    local v = H.exec(H.quote(bin) .. " version")
    assert.are.equal(0, v.code)
    assert.truthy(v.stdout:match("^chorus %d+%.%d+%.%d+"), v.stdout)
  end)

  it("chorus init and chorus test work in a folder outside the checkout, on the installed modules", function()
    local r = sh(("cd %s && %s init app"):format(H.quote(work), H.quote(bin)))
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    -- the editor settings name the installed annotations, not the checkout's
    local luarc = H.decode(H.read(work .. "/app/.luarc.json"))
    assert.are.equal(dest .. "/usr/share/chorus/types", luarc["workspace.library"][1])
    r = sh(("cd %s/app && %s test"):format(H.quote(work), H.quote(bin)), nil, 120)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("4 successes / 0 failures / 0 errors", 1, true), r.stdout .. r.stderr)
    -- and the installed examples pass there too
    r = sh(("cd %s && %s test %s"):format(H.quote(work), H.quote(bin),
      H.quote(dest .. "/usr/share/doc/chorus/examples/fanout")), nil, 120)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find(" 0 failures / 0 errors", 1, true), r.stdout)
  end)

  it("lets plain busted require chorus.testing with LUA_PATH and LUA_CPATH into the tree", function()
    local share = dest .. "/usr/share/lua/5.4"
    local cdir = dest .. "/usr/lib/" .. MULTIARCH .. "/lua/5.4"
    local env = { LUA_PATH = share .. "/?.lua;" .. share .. "/?/init.lua;;", LUA_CPATH = cdir .. "/?.so;;" }
    local r = sh(("cd %s/app && lua5.4 /usr/bin/busted"):format(H.quote(work)), env, 120)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("4 successes / 0 failures", 1, true), r.stdout .. r.stderr)
    -- without them there is nothing to load (/usr holds no chorus here)
    if not exists("/usr/share/lua/5.4/chorus/testing.lua") then
      r = sh(("cd %s/app && lua5.4 /usr/bin/busted"):format(H.quote(work)), nil, 120)
      assert.are_not.equal(0, r.code)
      assert.truthy((r.stdout .. r.stderr):find("module 'chorus.testing' not found", 1, true), r.stdout)
    end
  end)

  it("installs a man page generated from the README that groff reads without a warning", function()
    local page = dest .. "/usr/share/man/man1/chorus.1"
    local r = H.exec("groff -man -Tutf8 -ww -z " .. H.quote(page))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("", r.stderr)
    local text = H.exec("groff -man -Tascii -P-cbou " .. H.quote(page)).stdout
    for _, needle in ipairs({ "SYNOPSIS", "chorus serve  [--config FILE]", "COMMANDS", "TESTING WORKFLOWS",
      "OPERATING CHORUS", "READY=1", "make install PREFIX=/usr/local" }) do
      assert.truthy(text:find(needle, 1, true), needle)
    end
    assert.truthy(H.read(page):find("Generated from README.md", 1, true))
  end)

  it("installs a systemd unit that systemd-analyze verify accepts (skipped without systemd-analyze)", function()
    if not H.exec("sh -c 'command -v systemd-analyze'").stdout:match("systemd%-analyze") then
      print("systemd-analyze is not installed: skipping the unit check")
      return
    end
    local unit = H.read(dest .. "/usr/share/doc/chorus/contrib/chorus.service")
    assert.truthy(unit:find("\nType=notify\n", 1, true))
    assert.truthy(unit:find("\nWatchdogSec=", 1, true))
    -- the unit names /usr/local/bin/chorus: point it at the tree's binary
    local path = work .. "/chorus.service"
    local f = assert(io.open(path, "wb"))
    f:write((unit:gsub("/usr/local/bin/chorus", bin)))
    f:close()
    local r = H.exec("systemd-analyze verify " .. H.quote(path), { MANPATH = dest .. "/usr/share/man" }, 60)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
  end)

  it("says what is missing when the installed binary finds no modules next to it", function()
    local lone = H.temp_dir()
    assert.is_true(os.execute(("mkdir -p %s/usr/bin && cp %s %s/usr/bin/"):format(H.quote(lone), H.quote(bin),
      H.quote(lone))))
    local r = sh(("cd %s/app && %s/usr/bin/chorus test"):format(H.quote(work), H.quote(lone)), nil, 60)
    H.clean(lone)
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stderr:find("cannot find lua/chorus", 1, true), r.stderr)
    assert.truthy(r.stderr:find("make install", 1, true), r.stderr)
  end)

  it("make uninstall removes every file it installed", function()
    local r = make("uninstall", dest, prefix)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({}, files_under(dest))
  end)
end)

describe("make install PREFIX=/usr/local", function()
  it("puts core.so in lib/lua/5.4, where lua5.4 looks for /usr/local, and chorus test finds it", function()
    local dest, work = H.temp_dir(), H.temp_dir()
    local r = make("install", dest, "/usr/local")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(H.exec("lua5.4 -e 'print(package.cpath)'").stdout:find("/usr/local/lib/lua/5.4/?.so", 1, true))
    assert.is_true(exists(dest .. "/usr/local/lib/lua/5.4/chorus/core.so"))
    local bin = H.quote(dest .. "/usr/local/bin/chorus")
    r = sh(("cd %s && %s init app && cd app && %s test"):format(H.quote(work), bin, bin), nil, 120)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("4 successes / 0 failures", 1, true), r.stdout)
    r = make("uninstall", dest, "/usr/local")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.same({}, files_under(dest))
    H.clean(dest, work)
  end)
end)
