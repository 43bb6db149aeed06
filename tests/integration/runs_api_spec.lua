-- GET /admin/runs and the bulk actions by filter on a real server: filters
-- and paging, the admin token, bad filters answered 400 naming the
-- parameter, and each bulk action's dry run before the real one.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/runs_api/"
local ADMIN = { Authorization = "Bearer s3cret" }

describe("the runs API", function()
  local dir, conf, data, srv
  local failed, succeeded, parked = {}, {}, {}

  local function post(path, body, headers)
    return H.post_json(srv.url .. path, body, headers)
  end

  local function admin_get(path)
    return H.request(srv.url .. path, { headers = ADMIN })
  end

  local function admin_post(path, body)
    return H.request(srv.url .. path, { method = "POST", body = body, headers = ADMIN })
  end

  -- Every id of a listing, page after page (limit per page).
  local function all_ids(query, limit)
    local ids, cursor, pages = {}, nil, 0
    repeat
      local r = admin_get(("/admin/runs?limit=%d%s%s"):format(limit, query, cursor and ("&cursor=" .. cursor) or ""))
      assert.are.equal(200, r.status, r.body)
      pages = pages + 1
      for _, run in ipairs(r.json.runs) do
        ids[#ids + 1] = run.id
      end
      cursor = r.json.next_cursor
    until cursor == nil
    return ids, pages
  end

  setup(function()
    dir = H.temp_dir({ ["quick.lua"] = H.read(FIX .. "quick.lua"), ["parked.lua"] = H.read(FIX .. "parked.lua") })
    conf = H.write_temp([[return { admin_token = "s3cret" }]])
    data = H.temp_dir()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
    for i = 1, 6 do
      local r = post("/workflows/quick", '{"fail":true}', { ["Idempotency-Key"] = "fail-" .. i })
      assert.are.equal(500, r.status, r.body)
      failed[#failed + 1] = r.json.run_id
    end
    for _ = 1, 5 do
      local r = post("/workflows/quick", "{}")
      assert.are.equal(200, r.status, r.body)
      succeeded[#succeeded + 1] = r.headers["x-run-id"]
    end
    for _ = 1, 3 do
      local r = post("/workflows/parked", "{}", { Prefer = "respond-async" })
      assert.are.equal(202, r.status, r.body)
      parked[#parked + 1] = r.json.run_id
    end
  end)

  teardown(function()
    H.clean(srv, dir, data, conf)
  end)

  it("needs the admin token", function()
    assert.are.equal(401, H.request(srv.url .. "/admin/runs").status)
    assert.are.equal(401, H.request(srv.url .. "/admin/runs", { headers = { Authorization = "Bearer nope" } }).status)
    assert.are.equal(401, H.request(srv.url .. "/admin/runs/redrive", { method = "POST", body = "{}" }).status)
    assert.are.equal(401, H.request(srv.url .. "/admin/dlq/drop", { method = "POST", body = "{}" }).status)
  end)

  it("lists runs newest first with the summary fields, by status, workflow and key", function()
    local r = admin_get("/admin/runs")
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(14, #r.json.runs)
    assert.is_nil(r.json.next_cursor)
    assert.matches('"next_cursor":null', r.body, 1, true)
    local first = r.json.runs[1]
    assert.are.equal(parked[3], first.id)
    local fields = { "id", "workflow", "status", "started_at", "finished_at", "key", "version", "error_kind" }
    for _, name in ipairs(fields) do
      assert.truthy(r.body:find('"' .. name .. '":', 1, true), name)
    end
    for i = 2, #r.json.runs do
      assert.is_true(r.json.runs[i - 1].started_at >= r.json.runs[i].started_at)
    end
    local f = admin_get("/admin/runs?status=failed").json.runs
    assert.are.equal(6, #f)
    assert.are.equal(failed[6], f[1].id)
    assert.are.equal("upstream", f[1].error_kind)
    assert.are.equal("fail-6", f[1].key)
    assert.is_string(f[1].version)
    assert.is_number(f[1].finished_at)
    assert.are.equal(3, #admin_get("/admin/runs?workflow=parked&status=running").json.runs)
    assert.are.equal(0, #admin_get("/admin/runs?workflow=parked&status=failed").json.runs)
    local k = admin_get("/admin/runs?key=fail-2").json.runs
    assert.are.same({ failed[2] }, { k[1].id, k[2] })
    assert.are.equal(1, #admin_get("/admin/runs?key=fail-2&workflow=quick&status=failed").json.runs)
    assert.are.equal(0, #admin_get("/admin/runs?key=fail-2&status=succeeded").json.runs)
  end)

  it("gives chorus runs list the same filters and paging", function()
    local function cli(...)
      local r = H.chorus_run({ "runs", "list", "--data", data, ... })
      local ids = {}
      for line in r.stdout:gmatch("[^\n]+") do
        ids[#ids + 1] = H.decode(line).id
      end
      return r, ids
    end
    local r, ids = cli("--status", "failed")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ failed[6], failed[5], failed[4], failed[3], failed[2], failed[1] }, ids)
    r, ids = cli("--status", "failed", "--limit", "4")
    assert.are.equal(4, #ids)
    local cursor = r.stderr:match("%-%-cursor (%x+)")
    assert.truthy(cursor, r.stderr)
    local _, rest = cli("--status", "failed", "--cursor", cursor)
    assert.are.same({ failed[2], failed[1] }, rest)
    _, ids = cli("--key", "fail-3", "--workflow", "quick")
    assert.are.same({ failed[3] }, ids)
    r = cli("--status", "done")
    assert.are.equal(2, r.code)
    assert.matches("--status must be one of", r.stderr, 1, true)
    r = cli("--since", "last week")
    assert.are.equal(2, r.code)
    assert.matches("--since", r.stderr, 1, true)
    -- bulk actions by filter on the CLI refuse a folder a server holds
    r = H.chorus_run({ "runs", "cancel", "--status", "running", "--dry-run", "--data", data })
    assert.are.equal(1, r.code)
    assert.matches("another chorus serve", r.stderr, 1, true)
  end)

  it("filters by start time in unix seconds and RFC 3339", function()
    local all = admin_get("/admin/runs").json.runs
    local t = all[4].started_at -- the 4th newest
    local newer = admin_get(("/admin/runs?since=%.6f"):format(t)).json.runs
    assert.are.equal(4, #newer)
    local older = admin_get(("/admin/runs?until=%.6f"):format(t)).json.runs
    assert.are.equal(#all - 4, #older)
    assert.are.equal(14, #admin_get("/admin/runs?since=2000-01-01T00:00:00Z").json.runs)
    assert.are.equal(0, #admin_get("/admin/runs?until=2000-01-01T00:00:00%2B02:00").json.runs)
  end)

  it("pages through every run without duplicates or gaps", function()
    local whole = all_ids("", 1000)
    for _, size in ipairs({ 1, 3, 5 }) do
      local ids, pages = all_ids("", size)
      assert.are.same(whole, ids)
      assert.are.equal(math.ceil(14 / size), pages)
    end
    assert.are.same(all_ids("&status=failed", 1000), (all_ids("&status=failed", 4)))
  end)

  it("answers 400 problem+json naming the bad parameter", function()
    for _, case in ipairs({ { "status=done", "status" }, { "since=yesterday", "since" },
      { "until=2024-02-30Z", "until" }, { "limit=0", "limit" }, { "limit=1001", "limit" },
      { "limit=abc", "limit" }, { "cursor=not-hex", "cursor" }, { "colour=red", "colour" } }) do
      local r = admin_get("/admin/runs?" .. case[1])
      assert.are.equal(400, r.status, case[1])
      assert.are.equal("application/problem+json", r.headers["content-type"])
      assert.are.equal(case[2], r.json.parameter)
      assert.matches(case[2], r.json.detail, 1, true)
    end
    local r = admin_post("/admin/runs/cancel", '{"status":"bogus"}')
    assert.are.equal(400, r.status)
    assert.are.equal("status", r.json.parameter)
    r = admin_post("/admin/runs/cancel", "[1,2")
    assert.are.equal(400, r.status)
    r = admin_post("/admin/dlq/replay", '{"status":"failed"}')
    assert.are.equal(400, r.status)
    assert.are.equal("status", r.json.parameter)
    r = H.request(srv.url .. "/admin/runs/cancel", { headers = ADMIN })
    assert.are.equal(405, r.status)
    assert.are.equal("POST", r.headers.allow) -- a 405 names the method (README: wrong method)
    r = H.request(srv.url .. "/admin/runs", { method = "POST", body = "{}", headers = ADMIN })
    assert.are.equal(405, r.status)
    assert.are.equal("GET", r.headers.allow)
    for path, allow in pairs({ ["/admin/outbox"] = "GET", ["/admin/dlq"] = "GET", ["/admin/reload"] = "POST",
      ["/admin/dlq/x/replay"] = "POST", ["/admin/runs/x/redrive"] = "POST" }) do
      r = H.request(srv.url .. path, { method = "PUT", body = "{}", headers = ADMIN })
      assert.are.equal(405, r.status, path)
      assert.are.equal(allow, r.headers.allow, path)
    end
    r = H.request(srv.url .. "/admin/dlq/x", { headers = ADMIN })
    assert.are.equal(405, r.status)
    assert.are.equal("DELETE", r.headers.allow)
    r = H.request(srv.url .. "/runs/x", { method = "POST", body = "{}", headers = ADMIN })
    assert.are.equal(405, r.status)
    assert.are.equal("GET, HEAD, DELETE", r.headers.allow)
  end)

  it("redrives failed runs by filter: the dry run counts, the real one acts", function()
    local r = admin_post("/admin/runs/redrive", '{"workflow":"quick","dry_run":true}')
    assert.are.equal(200, r.status, r.body)
    assert.are.same({ count = 6, more = false }, r.json)
    r = admin_post("/admin/runs/redrive?dry_run=true&limit=2", "")
    assert.are.same({ count = 2, more = true }, r.json)
    -- nothing moved
    assert.are.equal(6, #admin_get("/admin/runs?status=failed").json.runs)
    r = admin_post("/admin/runs/redrive", ('{"key":"fail-1"}'))
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(1, r.json.done)
    assert.are.equal(0, r.json.skipped)
    local rec = H.finished(srv, failed[1], ADMIN, 15)
    assert.are.equal("admin", rec.redrives[1].via)
    -- an explicit status the redrive refuses: skipped, with the reason
    r = admin_post("/admin/runs/redrive", '{"status":"succeeded","limit":2}')
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(0, r.json.done)
    assert.are.equal(2, r.json.skipped)
    assert.matches("only a failed run is redriven", r.json.skipped_runs[1].reason, 1, true)
    assert.are.equal(2, r.json.reasons[r.json.skipped_runs[1].reason])
    assert.is_string(r.json.next_cursor)
  end)

  it("cancels running runs by filter: the dry run counts, the real one acts", function()
    local r = admin_post("/admin/runs/cancel", '{"workflow":"parked","dry_run":true}')
    assert.are.same({ count = 3, more = false }, r.json)
    assert.are.equal(3, #admin_get("/admin/runs?status=running&workflow=parked").json.runs)
    r = admin_post("/admin/runs/cancel", '{"workflow":"parked"}')
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(3, r.json.done)
    for _, id in ipairs(parked) do
      assert.are.equal("cancelled", H.finished(srv, id, ADMIN, 15).status)
    end
    assert.truthy(H.eventually(function()
      return #admin_get("/admin/runs?status=cancelled").json.runs == 3
    end, 10))
    assert.are.equal(0, #admin_get("/admin/runs?status=running&workflow=parked").json.runs)
    r = admin_post("/admin/runs/cancel", '{"workflow":"parked","dry_run":true}')
    assert.are.same({ count = 0, more = false }, r.json)
  end)

  it("replays and drops DLQ entries by filter, dry run first", function()
    for _ = 1, 3 do
      assert.are.equal(200, post("/workflows/parked", '{"dead_letter":true}').status)
    end
    assert.truthy(H.eventually(function()
      return (admin_get("/admin/dlq").json or {}).depth == 3
    end, 15))
    local r = admin_post("/admin/dlq/replay", '{"workflow":"nowhere","dry_run":true}')
    assert.are.same({ count = 3, more = false }, r.json)
    r = admin_post("/admin/dlq/drop", '{"workflow":"other","dry_run":true}')
    assert.are.same({ count = 0, more = false }, r.json)
    r = admin_post("/admin/dlq/replay", '{"workflow":"nowhere","limit":1}')
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(1, r.json.done)
    -- the replayed entry dies again (still no such workflow): three in the DLQ
    assert.truthy(H.eventually(function()
      local d = admin_get("/admin/dlq").json
      local replayed = 0
      for _, e in ipairs(d.entries) do
        replayed = replayed + (e.replayed or 0)
      end
      return d.depth == 3 and replayed == 1
    end, 15))
    r = admin_post("/admin/dlq/drop", "{}")
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(3, r.json.done)
    assert.are.equal(0, admin_get("/admin/dlq").json.depth)
  end)

  -- last: it stops the server, so that the CLI may hold the folder
  it("redrives and cancels by filter from the CLI on a folder no server holds", function()
    assert.are.equal(202, post("/workflows/parked", "{}", { Prefer = "respond-async" }).status)
    -- the drain with runs parked exits 0 (it freed a parked run twice: exit 139)
    srv.kill("TERM")
    local code = srv.wait()
    assert.are.equal(0, code, H.read(srv.log))
    assert.is_nil(H.read(srv.log):find("AddressSanitizer", 1, true))
    local function cli(...)
      local args = { "runs", ... }
      args[#args + 1], args[#args + 2] = "--data", data
      local r = H.chorus_run(args)
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
      return H.decode(r.stdout)
    end
    assert.are.same({ count = 1, more = false }, cli("cancel", "--status", "running", "--dry-run"))
    local out = cli("cancel", "--workflow", "parked")
    assert.are.equal(1, out.done) -- marked: the next start cancels it after its replay
    -- the six failed runs (fail-1's redrive above failed again, on the same input)
    assert.are.same({ count = 6, more = false }, cli("redrive", "--workflow", "quick", "--dry-run"))
    out = cli("redrive", "--key", "fail-2")
    assert.are.equal(1, out.done + out.skipped)
  end)
end)
