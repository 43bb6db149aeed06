-- The data folder when storage fails, through real processes and real LMDB
-- files: the map full at storage.max_size_mb (507, never a 2xx for a run
-- that was not stored, the key retryable), bytes overwritten in data.mdb
-- (chorus data verify, serve refusing a run it would resume, reads naming
-- the record), a zero-length
-- data.mdb refused.
local H = require "tests.integration.helpers"

local KEEP = [[
local chorus = require "chorus"
return chorus.workflow {
  name = "keep",
  run = function(_, input) return { kept = input.n } end,
}
]]

-- in flight for an hour: what a restart resumes
local PARK = [[
local chorus = require "chorus"
return chorus.workflow {
  name = "park",
  run = function(ctx, input) ctx.sleep(3600); return { parked = input.marker } end,
}
]]

-- Overwrites every occurrence of needle in path with repl (same length), as
-- a failing disk would; returns how many.
local function overwrite(path, needle, repl)
  assert(#needle == #repl)
  local f = assert(io.open(path, "r+b"))
  local bytes = f:read("a")
  local n, from = 0, 1
  while true do
    local at = bytes:find(needle, from, true)
    if not at then
      break
    end
    f:seek("set", at - 1)
    f:write(repl)
    n, from = n + 1, at + #needle
  end
  f:close()
  return n
end

local function cli(data, ...)
  local args = { ... }
  args[#args + 1] = "--data"
  args[#args + 1] = data
  return H.chorus_run(args)
end

-- `chorus serve` expected to refuse to start: returns its exit code and stderr.
local function serve_refused(dir, data, conf)
  local args = { "serve", "--listen", "127.0.0.1:0", "--scripts", dir, "--data", data }
  if conf then
    args[#args + 1] = "--config"
    args[#args + 1] = conf
  end
  return H.chorus_run(args, nil, 30)
end

describe("storage", function()
  local dir

  setup(function()
    dir = H.temp_dir({ ["keep.lua"] = KEEP, ["park.lua"] = PARK })
  end)

  teardown(function() H.clean(dir) end)

  describe("a full data folder", function()
    local conf, srv

    setup(function()
      -- a 1 MiB map that may grow to 2 MiB: about twenty 100 KB runs, of
      -- one workflow (no share of its own: the folder's cap is what is tested)
      conf = H.write_temp("return { storage = { map_size_mb = 1, max_size_mb = 2, workflow_share_mb = 0 } }")
      srv = H.start_server({ "--config", conf, "--scripts", dir })
    end)

    teardown(function() H.clean(srv, conf) end)

    it("grows to max_size_mb, then answers 507 problem+json; every 2xx run is stored", function()
      local pad = ("x"):rep(100 * 1024)
      local stored, full, statuses = {}, {}, {}
      for i = 1, 80 do
        local r = H.request(srv.url .. "/workflows/keep", { method = "POST",
          body = H.encode({ n = i, pad = pad }), headers = { ["Idempotency-Key"] = "k" .. i } })
        statuses[#statuses + 1] = r.status
        if r.status >= 200 and r.status < 300 then
          assert.are.equal(i, r.json.kept)
          stored[#stored + 1] = r.headers["x-run-id"]
        else
          assert.are.equal(507, r.status, r.body)
          assert.are.equal("application/problem+json", r.headers["content-type"])
          assert.are.equal(507, r.json.status)
          assert.are.equal("Insufficient Storage", r.json.title)
          assert.truthy(r.json.detail:find("max_size_mb", 1, true))
          full[#full + 1] = i
          if #full == 5 then
            break
          end
        end
      end
      -- the map grew (more than a 1 MiB map holds) and then filled up
      assert.is_true(#stored >= 10, table.concat(statuses, " "))
      assert.are.equal(5, #full, table.concat(statuses, " "))
      assert.truthy(H.read(srv.log):find("the data folder is full", 1, true))

      -- the server still answers
      assert.are.equal(200, H.request(srv.url .. "/healthz").status)

      -- every run answered 2xx is in the data folder, seen by another process
      local r = cli(srv.data, "runs", "list", "--limit", "1000")
      assert.are.equal(0, r.code, r.stderr)
      local listed = {}
      for line in r.stdout:gmatch("[^\n]+") do
        listed[H.decode(line).id] = true
      end
      for _, id in ipairs(stored) do
        assert.is_true(listed[id] == true, "run " .. tostring(id) .. " was answered 2xx but is not stored")
        local show = cli(srv.data, "runs", "show", id)
        assert.are.equal(0, show.code, show.stderr)
        assert.are.equal("succeeded", H.decode(show.stdout).status)
        assert.are.equal(200, H.request(srv.url .. "/runs/" .. id).status)
      end

      -- a key whose run was not stored is not stuck in flight: its retry
      -- runs again (and is refused for want of room, not 409)
      local again = H.request(srv.url .. "/workflows/keep", { method = "POST",
        body = H.encode({ n = full[1], pad = pad }), headers = { ["Idempotency-Key"] = "k" .. full[1] } })
      assert.are.equal(507, again.status, again.body)

      -- an async run that cannot be stored is refused too, not accepted
      local async = H.request(srv.url .. "/workflows/keep", { method = "POST",
        body = H.encode({ n = 0, pad = pad }), headers = { Prefer = "respond-async" } })
      assert.are.equal(507, async.status, async.body)
    end)

    it("refuses a config whose map_size_mb is above max_size_mb", function()
      local bad = H.write_temp("return { storage = { map_size_mb = 64, max_size_mb = 32 } }")
      local data = H.temp_dir()
      local r = serve_refused(dir, data, bad)
      os.remove(bad)
      os.execute("rm -rf " .. H.quote(data))
      assert.are_not.equal(0, r.code)
      assert.truthy(r.stderr:find("storage.map_size_mb (64) is above storage.max_size_mb (32)", 1, true), r.stderr)
    end)
  end)

  describe("bytes overwritten in data.mdb", function()
    local data, id

    setup(function()
      data = H.temp_dir()
      local srv = H.start_server({ "--scripts", dir, "--data", data })
      local r = H.request(srv.url .. "/workflows/keep", { method = "POST",
        body = H.encode({ n = 7, marker = "CORRUPT-ME-PLEASE" }) })
      assert.are.equal(200, r.status)
      id = r.headers["x-run-id"]
      local other = H.request(srv.url .. "/workflows/keep", { method = "POST", body = H.encode({ n = 8 }) })
      assert.are.equal(200, other.status)
      srv.stop()
    end)

    teardown(function() H.clean(data) end)

    it("is clean, then GET /runs/ID answers 500 naming the record once bytes are overwritten", function()
      local r = cli(data, "data", "verify")
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      assert.truthy(r.stdout:find("runs%s+2\n"), r.stdout)
      assert.truthy(r.stdout:find("scripts%s+2\n"), r.stdout) -- keep.lua and park.lua
      assert.truthy(r.stdout:find("ok: %d+ records"), r.stdout)

      -- a server started on the clean folder (the run is not in its memory)
      local srv = H.start_server({ "--scripts", dir, "--data", data })
      assert.are.equal(200, H.request(srv.url .. "/runs/" .. id).status)
      assert.is_true(overwrite(data .. "/data.mdb", "CORRUPT-ME-PLEASE", "CORRUPT-ME-PLEASF") >= 1)
      local g = H.request(srv.url .. "/runs/" .. id)
      srv.stop()
      assert.are.equal(500, g.status, g.body)
      assert.truthy(g.json.detail:find("corrupt record in database runs, key '" .. id .. "': checksum mismatch",
        1, true), g.body)
    end)

    it("chorus data verify names the bad record and exits 1", function()
      local r = cli(data, "data", "verify")
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      assert.truthy(r.stdout:find("runs%s+2\n"), r.stdout)
      assert.truthy(r.stdout:find(("BAD corrupt record in database runs, key '%s': checksum mismatch")
        :format(id), 1, true), r.stdout)
      assert.truthy(r.stderr:find("1 corrupt record in", 1, true), r.stderr)
    end)

    it("serve starts (a finished run's record is checked when read) and names it when read", function()
      -- reading every kept run before listening made a big folder's start
      -- take seconds; a finished run is no part of recovery
      local srv = H.start_server({ "--scripts", dir, "--data", data })
      local g = H.request(srv.url .. "/runs/" .. id)
      srv.stop()
      assert.are.equal(500, g.status, g.body)
      assert.truthy(g.json.detail:find("corrupt record in database runs, key '" .. id, 1, true), g.body)
    end)

    it("serve refuses to start when a run it would resume is corrupt, naming the record", function()
      local pdata = H.temp_dir()
      local srv = H.start_server({ "--scripts", dir, "--data", pdata })
      local r = H.request(srv.url .. "/workflows/park", { method = "POST",
        body = H.encode({ marker = "PARKED-CORRUPT-ME" }), headers = { Prefer = "respond-async" } })
      assert.are.equal(202, r.status, r.body)
      local pid = r.json.run_id
      srv.kill("KILL") -- in flight: the restart would resume it
      srv.wait()
      assert.is_true(overwrite(pdata .. "/data.mdb", "PARKED-CORRUPT-ME", "PARKED-CORRUPT-MF") >= 1)
      r = serve_refused(dir, pdata)
      H.clean(pdata)
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      assert.truthy(r.stderr:find("corrupt record in database runs, key '" .. pid, 1, true), r.stderr)
      assert.truthy(r.stderr:find("chorus data verify --data", 1, true), r.stderr)
      assert.falsy(r.stdout:find("listening", 1, true))
    end)

    it("runs list and runs show fail naming the record instead of skipping it", function()
      local r = cli(data, "runs", "list")
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      assert.truthy(r.stderr:find("corrupt record in database runs, key '" .. id, 1, true), r.stderr)
      r = cli(data, "runs", "show", id)
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      assert.truthy(r.stderr:find("checksum mismatch", 1, true), r.stderr)
    end)
  end)

  describe("a zero-length data.mdb", function()
    local data

    before_each(function()
      data = H.temp_dir({ ["data.mdb"] = "" })
    end)

    after_each(function()
      os.execute("rm -rf " .. H.quote(data))
    end)

    local function refused(r)
      assert.are.equal(1, r.code, r.stdout .. r.stderr)
      assert.truthy(r.stderr:find("data.mdb is empty (0 bytes)", 1, true), r.stderr)
      local f = assert(io.open(data .. "/data.mdb", "rb"))
      assert.are.equal(0, f:seek("end")) -- left as it was
      f:close()
    end

    it("is refused by serve", function()
      refused(serve_refused(dir, data))
    end)

    it("is refused by runs, data verify and run --data", function()
      refused(cli(data, "runs", "list"))
      refused(cli(data, "data", "verify"))
      refused(cli(data, "run", dir .. "/keep.lua", "--input", '{"n":1}'))
    end)
  end)
end)
