-- soak.lua — the soak test: minutes of mixed load against `chorus serve`
-- with kill -9 restarts, then a full audit.
--
--   lua5.4 tests/soak/soak.lua [--seconds N] [--kills K] [--build build|build-asan] [--clients C]
--
-- Defaults: 600 s, 3 kills, build, 6 clients. Run from the repo root after
-- `make` (and, for --build build-asan, the ASan build of the Makefile's
-- test-asan target). SOAK_KEEP=1 keeps the temp folder (logs, data).
--
-- It starts build/mock-upstream and <build>/chorus serve (own temp data and
-- scripts folders, the workflows of tests/soak/workflows/, a config with the mock's
-- paths as upstreams, a fixed loopback port), and C client processes (this
-- file again, with --client) that mix:
--   * new keyed requests to donate (idempotent charge + receipt through the
--     outbox, 10% of the receipts refused on purpose: DLQ), fanout (two
--     upstreams at once, one slow and ok, flaky, down, resetting or
--     hanging) and order (a saga; 30% of the orders fail an item and are
--     rolled back through the outbox), each key retried until acknowledged
--     (the run's stored response);
--   * duplicate sends of acknowledged keys (must be replays of the same run);
--   * malformed requests (bad JSON, unknown workflow, over-long key, other
--     body for a used key, wrong method), whose answers are checked.
-- K times, spread over the first 60% of the run, the chorus process gets
-- SIGKILL and is restarted on the same data folder and port. RSS is sampled
-- every 2 s. At the end the clients stop, the outbox drains, and it checks:
-- every acknowledged key has one run, finished (succeeded; compensated for
-- the orders meant to fail), and a replay of it gives the same run; every
-- exactly-once effect reached the mock once (none doubled, none missing,
-- none for a run no key owns); the malformed answers; outbox, DLQ (only
-- the refused receipts), runs left running; heap growth after warm-up
-- (< 10%, see RECORDS below); sanitizer reports in every server lifetime's
-- stderr and the exit code of the last one (SIGTERM: 0). It prints the
-- counts, one last line starting with "soak:", and exits 1 on any violation.
--
-- Everything talks to 127.0.0.1 only, every process is bounded with
-- `timeout` (and curl --max-time), and the temp folder is removed.
local system = require "system"
local dkjson = require "dkjson"

local function now() return system.monotime() end
local function sleep(s) system.sleep(s) end
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function encode(v) return dkjson.encode(v) end
local function decode(s) return (dkjson.decode(s)) end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s
end

local function spit(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function exists(path)
  local f = io.open(path)
  if f then
    f:close()
  end
  return f ~= nil
end

-- ---------------------------------------------------------------------------
-- the client (a separate process: lua5.4 tests/soak/soak.lua --client ...)
-- ---------------------------------------------------------------------------

-- Statuses that acknowledge a new key, by workflow (the run's stored response).
local ACK = { donate = { [201] = true }, fanout = { [200] = true, [207] = true },
  order = { [201] = true, [424] = true } }
local FANOUT_MODES = { { "ok", 40 }, { "flaky", 25 }, { "down", 15 }, { "reset", 10 }, { "hang", 10 } }
local FANOUT_STATUS = { ok = 200, flaky = 200, down = 207, reset = 207, hang = 207 }

local function weighted(choices)
  local total = 0
  for _, c in ipairs(choices) do
    total = total + c[2]
  end
  local r = math.random() * total
  for _, c in ipairs(choices) do
    r = r - c[2]
    if r <= 0 then
      return c[1]
    end
  end
  return choices[#choices][1]
end

--- One HTTP request with curl; returns status (0: no answer), run id, replayed.
local function curl(method, url, key, body, max_time)
  local parts = { "curl -s -o /dev/null -D - --max-time", tostring(max_time or 10), "-X", method }
  if key then
    parts[#parts + 1] = "-H " .. q("Idempotency-Key: " .. key)
  end
  if body then
    parts[#parts + 1] = "-H 'Content-Type: application/json' --data-binary " .. q(body)
  end
  parts[#parts + 1] = q(url)
  local p = io.popen(table.concat(parts, " ") .. " 2>/dev/null", "r")
  local text = p and p:read("a") or ""
  if p then
    p:close()
  end
  local status = 0
  for code in text:gmatch("HTTP/[%d.]+ (%d%d%d)") do
    status = tonumber(code) -- the last status line (after any 100 Continue)
  end
  local run = text:match("\n[Xx]%-[Rr]un%-[Ii]d:%s*([^\r\n]+)")
  local replayed = text:lower():match("\nidempotent%-replayed:%s*true") ~= nil
  return status, run, replayed
end

local function client(url, id, stop_file, out_file, seed)
  math.randomseed(tonumber(seed) or os.time())
  local out = assert(io.open(out_file, "w"))
  local function emit(rec)
    out:write(encode(rec), "\n")
    out:flush()
  end
  local acked, n = {}, 0
  local hard -- set when the stop file appears: the current key gets 60 s more
  local function stopping()
    if not hard and exists(stop_file) then
      hard = now() + 60
    end
    return hard ~= nil
  end
  local function fresh(prefix)
    n = n + 1
    return ("%s%s-%d"):format(prefix, id, n)
  end

  -- Sends a new key until its run's response comes back.
  local function acquire(wf, key, body, expect, meta)
    local tries, seen = 0, {}
    while true do
      tries = tries + 1
      local status, run, replayed = curl("POST", url .. "/workflows/" .. wf, key, body, 15)
      if ACK[wf][status] then
        emit({ ev = "ack", wf = wf, key = key, run = run, status = status, expect = expect, tries = tries,
          replayed = replayed, meta = meta, seen = seen, body = body })
        acked[#acked + 1] = { wf = wf, key = key, body = body, status = status, run = run }
        return
      elseif status == 0 or status == 409 or status == 503 then
        seen[#seen + 1] = status
        if stopping() and now() > hard then
          emit({ ev = "pending", wf = wf, key = key, tries = tries, seen = seen })
          return
        end
        sleep(0.05)
      else
        emit({ ev = "fail", wf = wf, key = key, run = run, status = status, tries = tries, seen = seen })
        return
      end
    end
  end

  -- A request that must be refused with `expect`; retried only while the
  -- server is down (no answer) or shedding load.
  local function malformed(kind, method, path, key, body, expect)
    local status
    for _ = 1, 200 do
      status = curl(method, url .. path, key, body, 10)
      if status ~= 0 and status ~= 503 then
        break
      end
      sleep(0.05)
    end
    emit({ ev = "mal", kind = kind, expect = expect, got = status })
    return status
  end

  local function donate(bad_first)
    local key = fresh("d")
    local reject = math.random() < 0.1
    local body = encode({ n = key, amount = math.random(1, 1000), reject = reject })
    if bad_first then -- refused before the run: the key must stay unused
      malformed("bad_json", "POST", "/workflows/donate", key, '{"n":"' .. key .. '",', 400)
    end
    acquire("donate", key, body, 201, { reject = reject })
  end

  local function fanout()
    local key = fresh("f")
    local mode = weighted(FANOUT_MODES)
    acquire("fanout", key, encode({ n = key, mode = mode }), FANOUT_STATUS[mode], { mode = mode })
  end

  local function order()
    local key = fresh("o")
    local items = {}
    for i = 1, math.random(1, 4) do
      items[i] = "sku" .. math.random(1, 99)
    end
    local fail_at = math.random() < 0.3 and math.random(1, #items) or nil
    acquire("order", key, encode({ n = key, items = items, fail_at = fail_at }), fail_at and 424 or 201,
      { items = #items, fail_at = fail_at })
  end

  local function duplicate()
    local a = acked[math.random(1, #acked)]
    local status, run, replayed
    for _ = 1, 200 do
      status, run, replayed = curl("POST", url .. "/workflows/" .. a.wf, a.key, a.body, 15)
      if status ~= 0 and status ~= 503 then
        break
      end
      sleep(0.05)
    end
    emit({ ev = "dup", wf = a.wf, key = a.key, ok = status == a.status and replayed and run == a.run,
      status = status, run = run, replayed = replayed, want_status = a.status, want_run = a.run })
  end

  local function bad()
    local kind = weighted({ { "bad_json", 1 }, { "unknown_workflow", 1 }, { "long_key", 1 },
      { "other_body", 1 }, { "wrong_method", 1 } })
    if kind == "bad_json" then
      malformed(kind, "POST", "/workflows/order", fresh("m"), "{not json", 400)
    elseif kind == "unknown_workflow" then
      malformed(kind, "POST", "/workflows/no_such_" .. fresh("w"), fresh("m"), "{}", 404)
    elseif kind == "long_key" then
      malformed(kind, "POST", "/workflows/donate", fresh("m") .. ("k"):rep(256), '{"n":"x","amount":1}', 400)
    elseif kind == "other_body" and #acked > 0 then
      local a = acked[math.random(1, #acked)]
      malformed(kind, "POST", "/workflows/" .. a.wf, a.key, '{"n":"other"}', 422)
    else
      malformed("wrong_method", "GET", "/workflows/donate", nil, nil, 405)
    end
  end

  while not stopping() do
    local action = weighted({ { "donate", 30 }, { "fanout", 25 }, { "order", 20 }, { "duplicate", 15 },
      { "malformed", 10 } })
    if action == "donate" then
      donate(math.random() < 0.1)
    elseif action == "fanout" then
      fanout()
    elseif action == "order" then
      order()
    elseif action == "duplicate" and #acked > 0 then
      duplicate()
    else
      bad()
    end
  end
  out:close()
  spit(out_file .. ".done", "")
end

if arg[1] == "--client" then
  client(arg[2], arg[3], arg[4], arg[5], arg[6])
  return
end

-- ---------------------------------------------------------------------------
-- the driver
-- ---------------------------------------------------------------------------

local opts = { seconds = 600, kills = 3, build = "build", clients = 6 }
do
  local i = 1
  while i <= #arg do
    local name = arg[i]:match("^%-%-(%a+)$")
    if not name or opts[name] == nil or arg[i + 1] == nil then
      io.stderr:write("usage: lua5.4 tests/soak/soak.lua [--seconds N] [--kills K] [--build DIR] [--clients C]\n")
      os.exit(2)
    end
    opts[name] = name == "build" and arg[i + 1] or tonumber(arg[i + 1])
    if opts[name] == nil then
      io.stderr:write("soak: --" .. name .. " needs a number\n")
      os.exit(2)
    end
    i = i + 2
  end
end
local SECONDS, KILLS, BUILD, CLIENTS = opts.seconds, math.floor(opts.kills), opts.build, math.floor(opts.clients)
local CHORUS = BUILD .. "/chorus"
local MOCK = "build/mock-upstream"
local LIMIT = math.floor(SECONDS) + 900 -- upper bound of any process's life
local RECORDS = 10000 -- run records the server keeps in memory (README): RSS warm-up
for _, bin in ipairs({ CHORUS, MOCK }) do
  if not exists(bin) then
    io.stderr:write(("soak: %s is missing (run it from the repo root after make%s)\n"):format(bin,
      BUILD ~= "build" and (" and the " .. BUILD .. " build") or ""))
    os.exit(2)
  end
end

local T0 = now()
local function log(fmt, ...)
  io.stdout:write(("[soak %6.1fs] "):format(now() - T0), fmt:format(...), "\n")
  io.stdout:flush()
end

--- Runs a shell command bounded by `timeout`; returns its stdout and exit code.
local function exec(cmd, seconds)
  local p = assert(io.popen(("timeout -s KILL %d sh -c %s 2>/dev/null"):format(seconds or 60, q(cmd)), "r"))
  local text = p:read("a")
  local _, _, code = p:close()
  return text, code
end

local function alive(pid)
  local stat = pid and slurp(("/proc/%d/stat"):format(pid))
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

local function wait_until(fn, seconds, step)
  local deadline = now() + seconds
  repeat
    local v = fn()
    if v then
      return v
    end
    sleep(step or 0.05)
  until now() > deadline
  return nil
end

local TMP = assert(exec("mktemp -d /tmp/chorus-soak.XXXXXX")):match("[^\n]+")
assert(TMP and TMP:match("^/tmp/chorus%-soak%."), "mktemp failed")
local DIRS = { scripts = TMP .. "/scripts", data = TMP .. "/data", logs = TMP .. "/logs", clients = TMP .. "/clients" }
for _, d in pairs(DIRS) do
  assert(os.execute("mkdir -p " .. q(d)))
end
assert(os.execute(("cp tests/soak/workflows/*.lua %s/"):format(q(DIRS.scripts))),
  "cannot copy tests/soak/workflows/*.lua")

-- Starts `echo $$; exec timeout ... CMD >OUT 2>ERR`: returns the
-- pipe (closing it waits for the process) and the pid of `timeout`.
local function spawn(cmd, out, err)
  local p = assert(io.popen(("echo $$; exec timeout -s KILL %d %s >%s 2>%s"):format(LIMIT, cmd, q(out), q(err)),
    "r"))
  return p, assert(tonumber(p:read("l")), "could not start " .. cmd)
end

-- the mock upstream
local mock = {}
do
  local out = TMP .. "/mock.out"
  mock.pipe, mock.pid = spawn(("%s --max-seconds %d"):format(MOCK, LIMIT), out, TMP .. "/mock.err")
  local line = wait_until(function() return (slurp(out) or ""):match("listening (127%.0%.0%.1:%d+)") end, 10)
  assert(line, "the mock upstream did not start: " .. (slurp(TMP .. "/mock.err") or ""))
  mock.url = "http://" .. line
end

local CONFIG = TMP .. "/soak.conf.lua"
spit(CONFIG, ([[
local M = %q
local R = { attempts = 3, backoff = "exponential", base = 0.05, cap = 0.2 }
return {
  access_log = false,
  outbox = { base = 0.05, cap = 1, poll = 0.02 },
  upstreams = {
    payments = { base_url = M .. "?idempotent=1&delay=20" },
    mailer = { base_url = M .. "?idempotent=1&delay=5" },
    mailer_reject = { base_url = M .. "?idempotent=1&status=422" },
    crm = { base_url = M .. "?idempotent=1&delay=10" },
    marketing = { base_url = M .. "?delay=150", timeout = 5, retry = R },
    marketing_down = { base_url = M .. "?delay=20&status=503", retry = R },
    marketing_reset = { base_url = M .. "?fault=reset", retry = R },
    marketing_hang = { base_url = M .. "?fault=hang", timeout = 0.3, retry = R },
    ledger = { base_url = M .. "?idempotent=1&delay=5" },
    ledger_reject = { base_url = M .. "?status=422" },
  },
}
]]):format(mock.url))

-- the server: one lifetime per start, each with its own stderr log
local srv = { lifetimes = {}, port = 0 }

local function chorus_pid(timeout_pid)
  return wait_until(function()
    local out = exec(("pgrep -P %d"):format(timeout_pid), 5)
    return tonumber(out:match("%d+"))
  end, 5)
end

local function start_server()
  for attempt = 1, 20 do
    local n = #srv.lifetimes + 1
    local out, err = ("%s/serve-%d.out"):format(DIRS.logs, n), ("%s/serve-%d.err"):format(DIRS.logs, n)
    local pipe, pid = spawn(("%s serve --config %s --scripts %s --data %s --listen 127.0.0.1:%d"):format(
      CHORUS, q(CONFIG), q(DIRS.scripts), q(DIRS.data), srv.port), out, err)
    local life = { pipe = pipe, pid = pid, out = out, err = err, started = now() }
    srv.lifetimes[n] = life
    local address = wait_until(function()
      return (slurp(out) or ""):match("listening on (http://127%.0%.0%.1:%d+)") or (not alive(pid) and "dead")
    end, 120)
    if address and address ~= "dead" then
      life.chorus = chorus_pid(pid)
      srv.url = address
      srv.port = tonumber(address:match(":(%d+)$"))
      srv.current = life
      return life
    end
    -- not listening (e.g. the port is still held): stop it and try again
    local child = alive(pid) and tonumber(exec(("pgrep -P %d"):format(pid), 5):match("%d+"))
    if child then
      os.execute(("kill -KILL %d 2>/dev/null"):format(child))
    end
    os.execute(("kill -KILL %d 2>/dev/null"):format(pid))
    local _, _, code = pipe:close()
    life.ended, life.code = "failed to start", code
    log("start %d failed (%s), retrying: %s", attempt, address or "no answer",
      ((slurp(err) or ""):match("[^\n]*\n?$") or ""))
    sleep(0.5)
  end
  error("chorus serve did not start")
end

local function kill_server()
  local life = srv.current
  if life.chorus then
    os.execute(("kill -KILL %d 2>/dev/null"):format(life.chorus))
    wait_until(function() return not alive(life.chorus) end, 10)
  end
  os.execute(("kill -KILL %d 2>/dev/null"):format(life.pid))
  local _, _, code = life.pipe:close()
  life.ended, life.code = "killed", code
  srv.current = nil
end

local function stop_server()
  local life = srv.current
  if not life then
    return
  end
  os.execute(("kill -TERM %d 2>/dev/null"):format(life.pid)) -- timeout forwards it to chorus
  if not wait_until(function() return not alive(life.chorus) end, 60, 0.1) then
    os.execute(("kill -KILL %d 2>/dev/null"):format(life.chorus or life.pid))
  end
  local _, _, code = life.pipe:close()
  life.ended, life.code = "stopped", code
  srv.current = nil
end

local clients = {}
local function start_clients(stop_file)
  for c = 1, CLIENTS do
    local out = ("%s/client-%d.jsonl"):format(DIRS.clients, c)
    local err = ("%s/client-%d.err"):format(DIRS.clients, c)
    local cmd = ("timeout -s KILL %d lua5.4 tests/soak/soak.lua --client %s %d %s %s %d >/dev/null 2>%s & echo $!")
      :format(LIMIT, q(srv.url), c, q(stop_file), q(out), math.random(1, 1 << 30), q(err))
    local pid = tonumber(exec(cmd, 10):match("%d+"))
    clients[c] = { pid = pid, out = out, err = err }
  end
end

local function cleanup()
  for _, c in ipairs(clients) do
    if c.pid then
      os.execute(("kill -TERM %d 2>/dev/null"):format(c.pid))
    end
  end
  if srv.current then
    pcall(stop_server)
  end
  if mock.pid then
    os.execute(("kill -TERM %d 2>/dev/null"):format(mock.pid))
    mock.pipe:close()
    mock.pid = nil
  end
  if os.getenv("SOAK_KEEP") then
    print("soak: kept " .. TMP)
  else
    os.execute("rm -rf " .. q(TMP))
  end
end

local function rss()
  local life = srv.current
  local status = life and life.chorus and slurp(("/proc/%d/status"):format(life.chorus))
  if not status then
    return nil
  end
  return tonumber(status:match("VmRSS:%s*(%d+)")), tonumber(status:match("RssAnon:%s*(%d+)"))
end

-- From /metrics: runs finished by the current lifetime (chorus_runs_total,
-- all labels) and the Lua heap (chorus_lua_memory_bytes).
local function server_metrics()
  local text = "\n" .. exec(("curl -s --max-time 5 %s"):format(q(srv.url .. "/metrics")), 10)
  local n
  for v in text:gmatch("\nchorus_runs_total{[^}]*} ([%d.e+]+)") do
    n = (n or 0) + tonumber(v)
  end
  return n, tonumber(text:match("\nchorus_lua_memory_bytes ([%d.e+]+)"))
end

local function cli(...)
  local args = { ... }
  for i, a in ipairs(args) do
    args[i] = q(a)
  end
  return exec(("%s %s --data %s"):format(CHORUS, table.concat(args, " "), q(DIRS.data)), 120)
end

local function lines(text)
  local out = {}
  for line in (text or ""):gmatch("[^\n]+") do
    out[#out + 1] = line
  end
  return out
end

local function http_get(path)
  local text = exec(("curl -s --max-time 30 %s"):format(q(path)), 40)
  return decode(text)
end

local function main()
  math.randomseed(os.time())
  log("build %s, %d s, %d kills, %d clients, temp %s", BUILD, SECONDS, KILLS, CLIENTS, TMP)
  start_server()
  log("chorus pid %d on %s, mock on %s", srv.current.chorus or -1, srv.url, mock.url)

  local stop_file = TMP .. "/stop"
  start_clients(stop_file)

  -- kills spread over the first 60% of the run, jittered within their slot,
  -- so that the last lifetime has time to warm up (see RECORDS) and be measured
  local t0 = now()
  local kill_at = {}
  for i = 1, KILLS do
    local slot = SECONDS * 0.6 / KILLS
    kill_at[i] = t0 + slot * (i - 1) + slot * (0.5 + (math.random() - 0.5) * 0.5)
  end
  local samples, next_sample, kills_done, unexpected = {}, t0, 0, {}
  local last_restart = t0
  while now() < t0 + SECONDS do
    local t = now()
    if not alive(srv.current.chorus) then -- died by itself: a finding (e.g. a sanitizer abort)
      local life = srv.current
      local _, _, code = life.pipe:close()
      life.ended, life.code = "died", code
      srv.current = nil
      unexpected[#unexpected + 1] = ("lifetime %d exited with %s"):format(#srv.lifetimes, tostring(code))
      log("chorus exited by itself (code %s), restarting", tostring(code))
      start_server()
      last_restart = now()
    elseif kill_at[kills_done + 1] and t >= kill_at[kills_done + 1] then
      kills_done = kills_done + 1
      kill_server()
      start_server()
      last_restart = now()
      log("kill -9 #%d done, restarted (chorus pid %d)", kills_done, srv.current.chorus or -1)
    elseif t >= next_sample then
      next_sample = t + 2
      local vm, anon = rss()
      if vm then
        local runs, lua_mem = server_metrics()
        samples[#samples + 1] = { t = t, rss = vm, anon = anon, life = #srv.lifetimes, runs = runs, lua = lua_mem }
      end
    end
    sleep(0.1)
  end
  local load_seconds = now() - t0
  local final_life = #srv.lifetimes

  -- stop the clients: each finishes its current key (bounded), then exits
  spit(stop_file, "")
  log("load done; stopping the clients")
  local finished = wait_until(function()
    for _, c in ipairs(clients) do
      if not exists(c.out .. ".done") then
        return false
      end
    end
    return true
  end, 90, 0.2)
  local stragglers = 0
  for _, c in ipairs(clients) do
    if not exists(c.out .. ".done") then
      stragglers = stragglers + 1
      os.execute(("kill -TERM %d 2>/dev/null"):format(c.pid))
    end
    c.pid = nil
  end
  if not finished then
    log("%d clients did not finish in time and were stopped", stragglers)
  end

  -- let the outbox drain and every run finish
  local settle_t0 = now()
  local settled = wait_until(function()
    local outbox = lines((cli("outbox", "list")))
    if #outbox > 0 then
      return false
    end
    local runs = cli("runs", "list", "--limit", "1000000")
    return not runs:find('"status":"running"', 1, true)
  end, 180, 0.5)
  log("outbox %s after %.1f s", settled and "drained" or "NOT drained", now() - settle_t0)
  sleep(0.5) -- the relay commits its last deliveries

  -- ---- collect ----
  local acks, by_key, run_owner = {}, {}, {}
  local pending, fails, dups, mals, wrong_status = {}, {}, {}, {}, {}
  local requests, retried_keys = 0, 0
  local violations = {}
  local function violation(fmt, ...)
    violations[#violations + 1] = fmt:format(...)
  end
  for _, c in ipairs(clients) do
    for _, line in ipairs(lines(slurp(c.out))) do
      local rec = decode(line)
      if not rec then
        violation("client %s wrote a bad line: %s", c.out, line)
      elseif rec.ev == "ack" then
        requests = requests + rec.tries
        if rec.tries > 1 then
          retried_keys = retried_keys + 1
        end
        if by_key[rec.key] then
          violation("key %s acknowledged twice", rec.key)
        end
        by_key[rec.key] = rec
        acks[#acks + 1] = rec
        if not rec.run or rec.run == "" then
          violation("key %s acknowledged without X-Run-Id", rec.key)
        elseif run_owner[rec.run] then
          violation("run %s answers two keys: %s and %s", rec.run, run_owner[rec.run], rec.key)
        else
          run_owner[rec.run] = rec.key
        end
        if rec.status ~= rec.expect then
          wrong_status[#wrong_status + 1] = rec
        end
      elseif rec.ev == "pending" then
        requests = requests + rec.tries
        pending[#pending + 1] = rec
      elseif rec.ev == "fail" then
        requests = requests + rec.tries
        fails[#fails + 1] = rec
      elseif rec.ev == "dup" then
        requests = requests + 1
        dups[#dups + 1] = rec
      elseif rec.ev == "mal" then
        requests = requests + 1
        mals[#mals + 1] = rec
      end
    end
  end

  -- runs, as the data folder has them
  local runs, run_count = {}, {}
  for _, line in ipairs(lines((cli("runs", "list", "--limit", "1000000")))) do
    local r = decode(line)
    if r and r.id then
      runs[r.id] = r
      local k = tostring(r.workflow) .. "/" .. tostring(r.status)
      run_count[k] = (run_count[k] or 0) + 1
    end
  end
  local outbox_left = #lines((cli("outbox", "list")))
  local dlq = {}
  for _, line in ipairs(lines((cli("dlq", "list", "--limit", "1000000")))) do
    dlq[#dlq + 1] = decode(line) or { raw = line }
  end

  -- lost: an acknowledged key whose run is not recorded as finished well:
  -- succeeded, or compensated (a saga rolled back, README) for the orders
  -- meant to fail; finished but with the other of the two is a wrong status
  local lost, wrong_run_status, count_by_wf = {}, {}, { donate = 0, fanout = 0, order = 0 }
  local function done_well(status) return status == "succeeded" or status == "compensated" end
  local function expected_status(a)
    return a.wf == "order" and a.meta.fail_at and "compensated" or "succeeded"
  end
  for _, a in ipairs(acks) do
    count_by_wf[a.wf] = count_by_wf[a.wf] + 1
    local r = a.run and runs[a.run]
    if not r or not done_well(r.status) then
      lost[#lost + 1] = ("%s (%s run %s: %s)"):format(a.key, a.wf, tostring(a.run), r and r.status or "missing")
    elseif r.status ~= expected_status(a) then
      wrong_run_status[#wrong_run_status + 1] = ("%s (%s run %s: %s, expected %s)"):format(a.key, a.wf, a.run,
        r.status, expected_status(a))
    end
  end
  -- and as GET /runs/ID has them, for a sample
  local api_checked, api_ok = 0, 0
  for _ = 1, math.min(50, #acks) do
    local a = acks[math.random(1, #acks)]
    if a.run then
      api_checked = api_checked + 1
      local r = http_get(srv.url .. "/runs/" .. a.run)
      if type(r) == "table" and r.status == expected_status(a) then
        api_ok = api_ok + 1
      else
        lost[#lost + 1] = ("%s (GET /runs/%s: %s)"):format(a.key, a.run, type(r) == "table" and r.status or "?")
      end
    end
  end
  -- runs of the client workflows that no acknowledged key owns: a key ran twice
  local extra_runs = {}
  for id, r in pairs(runs) do
    if ACK[r.workflow] and not run_owner[id] then
      extra_runs[#extra_runs + 1] = ("%s %s %s"):format(r.workflow, id, tostring(r.status))
    end
  end

  -- replays, asked again now that everything settled
  local replay_asked, replay_ok, replay_bad = 0, 0, {}
  for _ = 1, math.min(100, #acks) do
    local a = acks[math.random(1, #acks)]
    replay_asked = replay_asked + 1
    local status, run, replayed = curl("POST", srv.url .. "/workflows/" .. a.wf, a.key, a.body, 30)
    if status == a.status and replayed and run == a.run then
      replay_ok = replay_ok + 1
    else
      replay_bad[#replay_bad + 1] = ("%s: %d replayed=%s run %s (want %d, run %s)"):format(a.key, status,
        tostring(replayed), tostring(run), a.status, a.run)
    end
  end

  -- ---- effects at the mock ----
  local stats_file = TMP .. "/stats.json"
  exec(("curl -s --max-time 60 -o %s %s"):format(q(stats_file), q(mock.url .. "/__stats")), 70)
  local stats = decode(slurp(stats_file) or "") or { effects = {} }
  local effects = stats.effects or {}
  local eff = {} -- run id -> name -> count (exactly-once names only)
  local receipts_of = {} -- donation run -> { receipt keys }
  local marketing_keys, marketing_sends, other_keys = 0, 0, 0
  for k, count in pairs(effects) do
    local run, name = k:match("^([^:]+):(.+)$")
    if run and (name == "charge" or name == "crm" or name == "commit" or name:match("^entry %d+$")
        or name:match("^void %d+$")) then
      eff[run] = eff[run] or {}
      eff[run][name] = count
    elseif run and (name:match("^receipt:") or name:match("^rejected:")) then
      local kind, parent = name:match("^(%a+):(.+)$")
      receipts_of[parent] = receipts_of[parent] or {}
      table.insert(receipts_of[parent], { kind = kind, count = count, key = k })
    elseif run and name == "marketing" then
      marketing_keys, marketing_sends = marketing_keys + 1, marketing_sends + count
    else
      other_keys = other_keys + 1 -- refused ledger items (non-idempotent path)
    end
  end
  local missing, duplicates = {}, {}
  local effect_count, rejected_receipts = 0, 0
  local function want(a, name)
    local c = eff[a.run] and eff[a.run][name]
    if not c then
      missing[#missing + 1] = ("%s %s: no %s"):format(a.wf, a.key, name)
    elseif c ~= 1 then
      duplicates[#duplicates + 1] = ("%s %s: %s x%d"):format(a.wf, a.key, name, c)
    end
    if eff[a.run] then
      eff[a.run][name] = nil
    end
    effect_count = effect_count + (c or 0)
  end
  for _, a in ipairs(acks) do
    if a.wf == "donate" then
      want(a, "charge")
      local rs = receipts_of[a.run] or {}
      receipts_of[a.run] = nil
      local kind = a.meta.reject and "rejected" or "receipt"
      rejected_receipts = rejected_receipts + (a.meta.reject and 1 or 0)
      if #rs == 0 then
        missing[#missing + 1] = ("donate %s: no %s"):format(a.key, kind)
      elseif #rs > 1 or rs[1].count ~= 1 or rs[1].kind ~= kind then
        duplicates[#duplicates + 1] = ("donate %s: %d %s keys, first x%d"):format(a.key, #rs, rs[1].kind, rs[1].count)
      end
      effect_count = effect_count + #rs
    elseif a.wf == "fanout" then
      want(a, "crm")
    elseif a.wf == "order" then
      local logged = a.meta.fail_at and a.meta.fail_at - 1 or a.meta.items
      for i = 1, logged do
        want(a, "entry " .. i)
        if a.meta.fail_at then
          want(a, "void " .. i)
        end
      end
      if not a.meta.fail_at then
        want(a, "commit")
      end
    end
  end
  -- what is left was done for no acknowledged key: a duplicate effect (or a
  -- step an order should not have taken)
  for run, names in pairs(eff) do
    for name, count in pairs(names) do
      duplicates[#duplicates + 1] = ("%s:%s x%d (no acknowledged key made it)"):format(run, name, count)
    end
  end
  for parent, rs in pairs(receipts_of) do
    duplicates[#duplicates + 1] = ("%d receipt(s) for run %s, which no acknowledged key made"):format(#rs, parent)
  end

  -- ---- stop the server: its exit (and, with ASan, LeakSanitizer) counts ----
  stop_server()
  local final = srv.lifetimes[#srv.lifetimes]

  -- ---- sanitizer reports in every lifetime's stderr ----
  local sanitizer, sanitizer_lines = 0, {}
  for _, life in ipairs(srv.lifetimes) do
    for line in (slurp(life.err) or ""):gmatch("[^\n]+") do
      if line:find("AddressSanitizer", 1, true) or line:find("LeakSanitizer", 1, true)
          or line:find("runtime error:", 1, true) then
        sanitizer = sanitizer + 1
        if #sanitizer_lines < 10 then
          sanitizer_lines[#sanitizer_lines + 1] = line
        end
      end
    end
  end

  -- ---- RSS: baseline after a warm-up following the last restart ----
  -- Warm-up, all three: a share of the time left after the last restart;
  -- RECORDS runs finished since it (the server keeps the last 10,000 run
  -- records in memory, README: until that ring is full the heap grows by
  -- design); then one Lua collection cycle completed (the Lua heap, from
  -- /metrics, dropped by a fifth from its peak): the collector lets the heap
  -- grow to about twice the live data before it collects, so the first peak
  -- after the ring is full sets the process's high-water mark. Judged on
  -- RssAnon (the heap): VmRSS also counts the pages of LMDB's memory-mapped
  -- data file the process touched, which grow with the data folder (runs are
  -- kept for days) and are page cache, not a leak; it is printed alongside.
  local remaining = (t0 + SECONDS) - last_restart
  local warmup = math.max(0.2 * remaining, math.min(10, 0.5 * remaining))
  local rss_min, filled, baseline, last, warm_first, lua_peak
  local rss_log = {}
  for _, smp in ipairs(samples) do
    rss_log[#rss_log + 1] = ("%.1f\t%d\t%d\t%d\t%s\t%s"):format(smp.t - t0, smp.life, smp.rss, smp.anon or 0,
      tostring(smp.lua), tostring(smp.runs))
    if smp.life == final_life and smp.t >= last_restart then
      rss_min = math.min(rss_min or smp.rss, smp.rss)
      if not warm_first and smp.t >= last_restart + warmup then
        warm_first = smp
      end
      if not filled and smp.t >= last_restart + warmup and (smp.runs or 0) >= RECORDS then
        filled = smp
      end
      if filled and not baseline and smp.lua then
        if lua_peak and smp.lua < 0.8 * lua_peak then
          baseline = smp
        end
        lua_peak = math.max(lua_peak or 0, smp.lua)
      end
      last = smp
    end
  end
  spit(TMP .. "/rss.tsv", "t\tlifetime\tVmRSS_kB\tRssAnon_kB\tlua_bytes\truns\n" .. table.concat(rss_log, "\n") .. "\n")
  local growth = baseline and last and (last.anon - baseline.anon) / baseline.anon * 100
  local vm_growth = baseline and last and (last.rss - baseline.rss) / baseline.rss * 100
  local per_run = warm_first and last and last.runs and warm_first.runs and last.runs > warm_first.runs
    and (last.anon - warm_first.anon) / (last.runs - warm_first.runs)
  local rss_note
  if not last then
    rss_note = "no samples"
  elseif not filled then
    rss_note = ("not judged: %d runs finished since the last restart, fewer than the %d records kept in memory"
      .. " (warm-up); heap growth after %.0f s: %+.2f KiB/run"):format(last.runs or 0, RECORDS, warmup,
      per_run or 0)
  elseif not baseline then
    rss_note = ("not judged: no Lua collection cycle completed after the warm-up (%d runs at %.0f s)")
      :format(filled.runs, filled.t - t0)
  end

  -- ---- report ----
  local function kb(v) return v and ("%.1f MiB"):format(v / 1024) or "?" end
  local function list(name, items, max)
    if #items > 0 then
      print(("  %s (%d):"):format(name, #items))
      for i = 1, math.min(max or 10, #items) do
        print("    " .. (type(items[i]) == "table" and encode(items[i]) or tostring(items[i])))
      end
    end
  end
  local mal_ok, mal_by_kind = 0, {}
  local mal_bad = {}
  for _, m in ipairs(mals) do
    local k = mal_by_kind[m.kind] or { n = 0, ok = 0, got = {} }
    mal_by_kind[m.kind] = k
    k.n = k.n + 1
    k.got[m.got] = (k.got[m.got] or 0) + 1
    if m.got == m.expect then
      k.ok, mal_ok = k.ok + 1, mal_ok + 1
    else
      mal_bad[#mal_bad + 1] = m
    end
  end
  local dup_ok, dup_bad = 0, {}
  for _, d in ipairs(dups) do
    if d.ok then
      dup_ok = dup_ok + 1
    else
      dup_bad[#dup_bad + 1] = d
    end
  end
  local dlq_expected, dlq_other = 0, {}
  for _, e in ipairs(dlq) do
    -- `dlq list` shows id, kind, target, due, attempts and last_error (not the input)
    local why = type(e.last_error) == "table" and e.last_error.kind
    if e.kind == "workflow" and e.target == "receipt" and why == "rejected" then
      dlq_expected = dlq_expected + 1
    else
      dlq_other[#dlq_other + 1] = e
    end
  end
  local running = 0
  for _, r in pairs(runs) do
    if r.status == "running" then
      running = running + 1
    end
  end
  print("")
  print(("soak report (%s, %.0f s of load, %d clients, temp %s)"):format(BUILD, load_seconds, CLIENTS, TMP))
  print(("  server: %d lifetimes, %d kill -9 done of %d asked, %d unexpected exits; final exit code %s")
    :format(#srv.lifetimes, kills_done, KILLS, #unexpected, tostring(final.code)))
  print(("  keys acknowledged: %d (donate %d, fanout %d, order %d); %d requests by the clients, %d keys needed retries;"
    .. " %d pending at stop, %d failed")
    :format(#acks, count_by_wf.donate, count_by_wf.fanout, count_by_wf.order, requests, retried_keys,
      #pending, #fails))
  print(("  each key one run: %d key/run mismatches (a run answering two keys, a key acked twice, no X-Run-Id);"
    .. " %d extra runs of client workflows (no key owns them)")
    :format(#violations, #extra_runs))
  print(("  lost acknowledged runs: %d (runs list for all, GET /runs/ID for %d/%d sampled)")
    :format(#lost, api_ok, api_checked))
  print(("  answers other than expected (fanout mode / order outcome): %d; run status other than expected"
    .. " (succeeded, or compensated for a rolled-back order): %d"):format(#wrong_status, #wrong_run_status))
  print(("  duplicates sent during load: %d/%d replayed with the same run; after settling: %d/%d")
    :format(dup_ok, #dups, replay_ok, replay_asked))
  local kinds = {}
  for kind, k in pairs(mal_by_kind) do
    local got = {}
    for status, n in pairs(k.got) do
      got[#got + 1] = ("%s:%d"):format(status, n)
    end
    table.sort(got)
    kinds[#kinds + 1] = ("%s %d/%d [%s]"):format(kind, k.ok, k.n, table.concat(got, " "))
  end
  table.sort(kinds)
  print(("  malformed requests answered as documented: %d/%d (%s)"):format(mal_ok, #mals, table.concat(kinds, ", ")))
  print(("  mock: %d requests, %d exactly-once effects checked, %d missing, %d duplicate; %d replays absorbed"
    .. " by keys; marketing (non-idempotent, retried): %d keys, %d sends; other keys %d")
    :format(stats.requests or 0, effect_count, #missing, #duplicates, stats.replayed or 0, marketing_keys,
      marketing_sends, other_keys))
  print(("  outbox left %d (%s), dlq %d (expected %d: refused receipts; other %d), running %d")
    :format(outbox_left, settled and "drained" or "NOT drained", #dlq, rejected_receipts, #dlq_other, running))
  local rc = {}
  for k, n in pairs(run_count) do
    rc[#rc + 1] = k .. " " .. n
  end
  table.sort(rc)
  print("  runs: " .. table.concat(rc, ", "))
  if baseline then
    print(("  RSS of the final lifetime (from %.0f s): VmRSS min %s, baseline %s (at %.0f s, %d runs), last %s"
      .. " (at %.0f s, %d runs) %+.1f%%; RssAnon (judged) baseline %s, last %s %+.1f%%")
      :format(last_restart - t0, kb(rss_min), kb(baseline.rss), baseline.t - t0, baseline.runs, kb(last.rss),
        last.t - t0, last.runs or 0, vm_growth, kb(baseline.anon), kb(last.anon), growth))
  elseif last then
    print(("  RSS of the final lifetime (from %.0f s): VmRSS min %s, last %s; RssAnon last %s")
      :format(last_restart - t0, kb(rss_min), kb(last.rss), kb(last.anon)))
  end
  if rss_note then
    print("  RSS " .. rss_note)
  end
  local timeline, step = {}, math.max(1, #samples // 24)
  for i = 1, #samples, step do
    local smp = samples[i]
    timeline[#timeline + 1] = ("%.0f:%.1f/%.1f/%.1f%s"):format(smp.t - t0, smp.rss / 1024, (smp.anon or 0) / 1024,
      (smp.lua or 0) / 1048576, (i > 1 and samples[i - step].life ~= smp.life) and "*" or "")
  end
  print("  RSS timeline (s:VmRSS/RssAnon/Lua heap MiB, * after a restart): " .. table.concat(timeline, " "))
  print(("  sanitizer report lines: %d"):format(sanitizer))
  list("violations", violations)
  list("lost", lost)
  list("extra runs", extra_runs)
  list("missing effects", missing)
  list("duplicate effects", duplicates)
  list("failed keys", fails)
  list("pending keys", pending)
  list("wrong answers", wrong_status)
  list("wrong run status", wrong_run_status)
  list("bad duplicates", dup_bad)
  list("bad replays", replay_bad)
  list("bad malformed answers", mal_bad)
  list("other dlq entries", dlq_other)
  list("unexpected exits", unexpected)
  list("sanitizer", sanitizer_lines)

  -- ---- verdict ----
  local problems = {}
  local function check(ok, what)
    if not ok then
      problems[#problems + 1] = what
    end
  end
  check(#acks > 0, "no key was acknowledged")
  check(kills_done == KILLS, "not every kill happened")
  check(#unexpected == 0, "chorus exited by itself")
  check(final.code == 0, "chorus did not exit 0 on SIGTERM")
  check(#violations == 0, "keys and runs do not match one to one")
  check(#extra_runs == 0, "extra runs")
  check(#lost == 0, "lost acknowledged runs")
  check(#fails == 0, "keys answered with an unexpected status")
  check(#pending == 0, "keys never acknowledged")
  check(#wrong_status == 0, "wrong answers")
  check(#wrong_run_status == 0, "wrong run status")
  check(#dup_bad == 0 and replay_ok == replay_asked, "bad replays")
  check(mal_ok == #mals, "malformed requests not answered as documented")
  check(#missing == 0, "missing effects")
  check(#duplicates == 0, "duplicate effects")
  check(settled and outbox_left == 0, "outbox not drained")
  check(running == 0, "runs left running")
  check(#dlq_other == 0 and dlq_expected == rejected_receipts, "unexpected DLQ entries")
  check(last ~= nil, "no RSS samples")
  check(growth == nil or growth < 10, "RSS (heap) grew more than 10% after warm-up")
  check(sanitizer == 0, "sanitizer reports")
  check(stragglers == 0, "clients had to be stopped")
  print(("soak: %s %s, %.0f s, %d kills: %d acked keys (%d donate, %d fanout, %d order), %d requests, %d lost,"
    .. " %d duplicate effects, %d missing effects, %d extra runs, replays %d/%d, malformed %d/%d ok,"
    .. " outbox %d, dlq %d (expected %d), running %d, VmRSS min %s base %s last %s, RssAnon %s -> %s (%s),"
    .. " sanitizer %d%s")
    :format(#problems == 0 and "PASS" or "FAIL", BUILD, load_seconds, kills_done, #acks, count_by_wf.donate,
      count_by_wf.fanout, count_by_wf.order, requests, #lost, #duplicates, #missing, #extra_runs,
      dup_ok + replay_ok, #dups + replay_asked, mal_ok, #mals, outbox_left, #dlq, rejected_receipts, running,
      kb(rss_min), kb(baseline and baseline.rss), kb(last and last.rss), kb(baseline and baseline.anon),
      kb(last and last.anon), growth and ("%+.1f%%"):format(growth) or "not judged: warm-up not reached",
      sanitizer,
      #problems > 0 and (": " .. table.concat(problems, "; ")) or ""))
  return #problems == 0
end

local ok, res = xpcall(main, debug.traceback)
cleanup()
if not ok then
  io.stderr:write("soak: error: ", tostring(res), "\n")
  print("soak: FAIL (error: " .. tostring(res):match("[^\n]*") .. ")")
  os.exit(1)
end
os.exit(res and 0 or 1)
