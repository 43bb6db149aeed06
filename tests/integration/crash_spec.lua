-- The crash test: a server under steady load of idempotent requests is
-- killed with SIGKILL at random moments 20 times and restarted on the same
-- data folder and port. At the end every client key got exactly one
-- success (and a replay of the same run when asked again), the mock saw
-- every charge and every receipt exactly once per run, the outbox is empty
-- and no run is left running. The counts are printed.
local H = require "tests.integration.helpers"

local KILLS = tonumber(os.getenv("CHORUS_CRASH_KILLS") or "20")
local CLIENTS = 6

describe("crash test", function()
  it(("loses and duplicates nothing across %d SIGKILLs under load"):format(KILLS), function()
    math.randomseed(os.time())
    local mock = H.start_mock(600)
    local dir = H.temp_dir({
      ["donate.lua"] = H.read("tests/integration/fixtures/crash/donate.lua"),
      ["receipt.lua"] = H.read("tests/integration/fixtures/crash/receipt.lua"),
    })
    local data = H.temp_dir()
    local conf = H.write_temp(([[
return { access_log = false, outbox = { base = 0.05, cap = 0.5, poll = 0.02 },
  upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    local srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
    local port = srv.url:match(":(%d+)$")
    local logs = { srv.log } -- every server's stderr: printed when a defect shows up
    local function restart()
      srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data,
        "--listen", "127.0.0.1:" .. port })
      logs[#logs + 1] = srv.log
    end

    local stop_file = os.tmpname()
    os.remove(stop_file)
    local outs = {}
    for c = 1, CLIENTS do
      outs[c] = os.tmpname()
      os.execute(("lua5.4 tests/integration/crash_client.lua %s %d %s %s >/dev/null 2>&1 &"):format(
        H.quote(srv.url), c, H.quote(stop_file), H.quote(outs[c])))
    end

    local t0 = H.now()
    for _ = 1, KILLS do
      H.sleep(0.3 + math.random() * 0.6)
      srv.kill("KILL")
      srv.wait()
      restart()
    end
    local load_seconds = H.now() - t0
    assert(io.open(stop_file, "w")):close()

    -- every client finishes its current key, then exits
    local done = H.eventually(function()
      for c = 1, CLIENTS do
        local f = io.open(outs[c] .. ".done")
        if not f then
          return false
        end
        f:close()
      end
      return true
    end, 60)
    assert.is_truthy(done, "the clients did not finish")

    local keys, tries, defects, run_of = 0, 0, {}, {}
    for c = 1, CLIENTS do
      for line in H.read(outs[c]):gmatch("[^\n]+") do
        local key, run_id, n, others = line:match("^(%S+) (%S+) (%d+)(.*)$")
        assert.is_truthy(key, "bad client line: " .. line)
        assert.is_nil(run_of[key], "key succeeded twice: " .. key)
        keys = keys + 1
        tries = tries + tonumber(n)
        run_of[key] = run_id
        if others ~= "" then
          defects[#defects + 1] = key .. ":" .. others
        end
      end
      os.remove(outs[c])
      os.remove(outs[c] .. ".done")
    end
    os.remove(stop_file)

    -- asked again, every key answers with the stored response of its one run
    local replays_ok, asked = 0, 0
    for key, run_id in pairs(run_of) do
      if asked < 100 then
        asked = asked + 1
        local r = H.request(srv.url .. "/workflows/donate", { method = "POST",
          body = ('{"n":"%s"}'):format(key), headers = { ["Idempotency-Key"] = key } })
        if r.status == 201 and r.headers["idempotent-replayed"] == "true"
            and r.headers["x-run-id"] == run_id then
          replays_ok = replays_ok + 1
        end
      end
    end

    -- the outbox drains and nothing stays running
    local settled = H.eventually(function()
      local stats = mock.stats()
      local receipts = 0
      for k in pairs(stats.effects) do
        if k:match(":receipt$") then
          receipts = receipts + 1
        end
      end
      return receipts >= keys and stats
    end, 60)
    local stats = settled or mock.stats()
    H.sleep(0.5) -- the relay commits the last deliveries
    local function cli(...)
      return H.exec(H.chorus .. " " .. table.concat({ ... }, " ") .. " --data " .. H.quote(data))
    end
    local outbox_left = select(2, cli("outbox", "list").stdout:gsub("\n", ""))
    local dlq_left = select(2, cli("dlq", "list").stdout:gsub("\n", ""))
    local running = select(2, cli("runs", "list", "--limit", "1000000").stdout:gsub('"status":"running"', ""))

    local charges, receipts, charged_runs = 0, 0, {}
    for k, count in pairs(stats.effects) do
      if k:match(":charge$") then
        charges = charges + count
        charged_runs[k:gsub(":charge$", "")] = true
      elseif k:match(":receipt$") then
        receipts = receipts + count
      end
    end
    local unmatched = 0
    for _, run_id in pairs(run_of) do
      if not charged_runs[run_id] then
        unmatched = unmatched + 1
      end
    end

    print(("\ncrash test: %d SIGKILLs in %.1f s; %d keys, %d requests (%d retries), %d defects; "
      .. "mock: %d charges, %d receipts, %d duplicates absorbed by keys; "
      .. "replays checked %d/%d; outbox left %d, dlq %d, running %d"):format(
      KILLS, load_seconds, keys, tries, tries - keys, #defects, charges, receipts, stats.replayed,
      replays_ok, asked, outbox_left, dlq_left, running))

    if #defects > 0 then -- what the servers said about failing runs
      for _, log in ipairs(logs) do
        for line in (H.read(log) or ""):gmatch("[^\n]+") do
          if line:find('"level":"error"', 1, true) then
            print(line)
          end
        end
      end
    end
    srv.stop()
    for _, log in ipairs(logs) do
      os.remove(log)
    end
    mock.stop()
    os.execute("rm -rf " .. H.quote(dir) .. " " .. H.quote(data))
    os.remove(conf)

    assert.is_true(keys > 0, "no request succeeded")
    assert.are.same({}, defects)
    assert.are.equal(keys, charges, "charges ≠ keys: an effect was lost or duplicated")
    assert.are.equal(0, unmatched, "a client's run never charged")
    assert.are.equal(keys, receipts, "receipts ≠ keys: an outbox entry was lost or duplicated")
    assert.are.equal(asked, replays_ok)
    assert.are.equal(0, outbox_left)
    assert.are.equal(0, dlq_left)
    assert.are.equal(0, running)
  end)
end)
