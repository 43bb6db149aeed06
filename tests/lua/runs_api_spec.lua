-- chorus.runs_api over the runs' index of a real data folder (and of
-- store.memory(), which must agree): filters, paging without duplicates or
-- gaps, a status change moving the run, deleted runs leaving the index,
-- the index built for a folder written without it, and bad filters.
local core = require "chorus.core"
local store = require "chorus.store"
local runs_api = require "chorus.runs_api"

local WORKFLOWS = { "pay", "ship", "mail" }
local STATUSES = { "running", "succeeded", "failed", "cancelled" }

-- n runs, several sharing a start time (paging must keep them apart).
local function records(n)
  local out = {}
  for i = 1, n do
    out[i] = { id = ("run-%04d"):format(i), workflow = WORKFLOWS[i % 3 + 1], status = STATUSES[i % 4 + 1],
      started = 1700000000 + (i // 3) + 0.25, key = i % 5 == 0 and ("key-" .. (i % 15)) or nil,
      script_hash = "h" .. (i % 2), error = i % 4 == 2 and { kind = "upstream" } or nil }
  end
  return out
end

local function in_task(fn)
  local ok, err = core.run(nil, fn)
  assert(ok, err)
end

local function fill(st, recs)
  in_task(function()
    for _, rec in ipairs(recs) do
      st:put_run(rec)
    end
    st:commit()
  end)
end

-- What a scan and a sort would answer: the expected ids, newest first.
local function expected(recs, f)
  local out = {}
  for _, r in ipairs(recs) do
    local t = math.floor(r.started * 1e6 + 0.5)
    if (not f.workflow or r.workflow == f.workflow) and (not f.status or r.status == f.status)
        and (not f.key or r.key == f.key) and (not f.since or t >= f.since)
        and (not f["until"] or t < f["until"]) then
      out[#out + 1] = r
    end
  end
  table.sort(out, function(a, b)
    if a.started ~= b.started then
      return a.started > b.started
    end
    return a.id > b.id
  end)
  for i, r in ipairs(out) do
    out[i] = r.id
  end
  return out
end

-- Every id f finds, page after page of page_size.
local function all_pages(st, f, page_size)
  local ids, cursor, pages = {}, nil, 0
  repeat
    local q = {}
    for k, v in pairs(f) do
      q[k] = v
    end
    q.limit, q.cursor = page_size, cursor
    local body = runs_api.list(st, q)
    pages = pages + 1
    assert.is_true(#body.runs <= page_size)
    for _, r in ipairs(body.runs) do
      ids[#ids + 1] = r.id
    end
    cursor = not core.json.is_null(body.next_cursor) and runs_api.parse({ cursor = body.next_cursor }).cursor
  until not cursor
  return ids, pages
end

local FILTERS = {
  {},
  { status = "failed" },
  { workflow = "ship" },
  { workflow = "pay", status = "running" },
  { key = "key-5" },
  { key = "key-10", workflow = "ship" },
  { key = "key-0", status = "cancelled" },
  { since = (1700000000 + 20) * 1e6, ["until"] = (1700000000 + 50) * 1e6 },
  { status = "succeeded", since = (1700000000 + 60) * 1e6 },
}

for _, kind in ipairs({ "data folder", "store.memory()" }) do
  describe("the runs' index of a " .. kind, function()
    local dir, st
    local recs = records(301)

    before_each(function()
      if kind == "data folder" then
        dir = os.tmpname()
        os.remove(dir)
        st = assert(store.open(dir, { sync = false }))
      else
        st = store.memory()
      end
      fill(st, recs)
    end)

    after_each(function()
      st:close()
      if dir then
        os.execute("rm -rf " .. dir)
      end
    end)

    it("lists what each filter finds, newest first, as a sort of every run would", function()
      for _, f in ipairs(FILTERS) do
        local want = expected(recs, f)
        local got = all_pages(st, f, 1000)
        assert.are.same(want, got, core.json.encode(f))
      end
    end)

    it("pages through a filter without duplicates or gaps, whatever the page size", function()
      for _, size in ipairs({ 1, 7, 50 }) do
        for _, f in ipairs({ {}, { status = "failed" }, { workflow = "mail" } }) do
          local got, pages = all_pages(st, f, size)
          local want = expected(recs, f)
          assert.are.same(want, got)
          assert.are.equal(math.max(1, math.ceil(#want / size)), pages)
        end
      end
    end)

    it("shows each run's summary, with null for what it lacks", function()
      local body = runs_api.list(st, { key = "key-5", limit = 1 })
      local r = body.runs[1]
      assert.are.same({ "error_kind", "finished_at", "id", "key", "started_at", "status", "version", "workflow" },
        (function()
          local names = {}
          for k in pairs(r) do
            names[#names + 1] = k
          end
          table.sort(names)
          return names
        end)())
      assert.are.equal("key-5", r.key)
      assert.is_true(core.json.is_null(r.finished_at))
      local failed = runs_api.list(st, { status = "failed", limit = 1 }).runs[1]
      assert.are.equal("upstream", failed.error_kind)
    end)

    it("moves a run whose status changes, also when both writes land in one commit", function()
      local function ids(f)
        return all_pages(st, f, 1000)
      end
      local rec = { id = "run-new", workflow = "pay", status = "running", started = 1800000000, key = "k-new" }
      in_task(function()
        st:put_run(rec)
        st:commit()
      end)
      assert.are.equal("run-new", ids({ status = "running" })[1])
      -- running → failed (its own commit), then → running → succeeded in one
      in_task(function()
        rec.status = "failed"
        st:put_run(rec)
        st:commit()
      end)
      assert.are.equal("run-new", ids({ status = "failed" })[1])
      assert.are_not.equal("run-new", ids({ status = "running" })[1])
      in_task(function()
        rec.status = "running"
        st:put_run(rec)
        rec.status, rec.finished = "succeeded", 1800000001
        st:put_run_text(rec.id, core.json.encode(rec))
        st:commit()
      end)
      assert.are.equal("run-new", ids({ status = "succeeded" })[1])
      assert.are.equal("run-new", ids({ workflow = "pay", status = "succeeded" })[1])
      for _, status in ipairs({ "running", "failed" }) do
        for _, id in ipairs(ids({ status = status })) do
          assert.are_not.equal("run-new", id)
        end
      end
      assert.are.same({ "run-new" }, ids({ key = "k-new" }))
      assert.are.equal(1800000001, runs_api.list(st, { key = "k-new" }).runs[1].finished_at)
    end)

    it("drops a deleted run from every key", function()
      in_task(function()
        st:del_run("run-0301")
        st:commit()
      end)
      for _, f in ipairs(FILTERS) do
        for _, id in ipairs(all_pages(st, f, 1000)) do
          assert.are_not.equal("run-0301", id)
        end
      end
    end)

    it("lists nothing before the epoch and from an unknown key", function()
      assert.are.same({}, all_pages(st, { ["until"] = 0 }, 10))
      assert.are.same({}, all_pages(st, { key = "no-such-key" }, 10))
      assert.are.same({}, all_pages(st, { since = 1900000000 * 1e6 }, 10))
    end)
  end)
end

describe("the runs' index of a folder an older chorus wrote", function()
  it("is built on open, and listing then agrees with a scan", function()
    local dir = os.tmpname()
    os.remove(dir)
    local recs = records(120)
    local raw = assert(core.store_open(dir))
    in_task(function()
      for _, rec in ipairs(recs) do -- records alone, as chorus 2 wrote them
        raw:put("runs", rec.id, core.json.encode(rec))
      end
      raw:put("meta", "schema_version", "2")
      raw:commit()
    end)
    raw:close()
    local st = assert(store.open(dir))
    assert.are.same({}, all_pages(st, {}, 1000)) -- not built yet
    assert.are.equal(120, st:ensure_run_index())
    assert.are.equal(0, st:ensure_run_index()) -- once
    assert.are.equal("1", st.st:get("meta", "run_index"))
    for _, f in ipairs(FILTERS) do
      assert.are.same(expected(recs, f), all_pages(st, f, 1000))
    end
    assert.are.same({}, st:verify().bad)
    st:close()
    os.execute("rm -rf " .. dir)
  end)
end)

describe("runs_api.parse", function()
  it("takes every filter, times as unix seconds or RFC 3339", function()
    local f = assert(runs_api.parse({ workflow = "pay", status = "failed", since = "1700000000",
      ["until"] = "2024-01-02T03:04:05.5+01:00", key = "k", limit = "20" }))
    assert.are.equal(1700000000 * 1000000, f.since)
    assert.are.equal(1704161045500000, f["until"])
    assert.are.equal(20, f.limit)
    assert.are.equal(1704153600000000, runs_api.parse({ since = "2024-01-02T00:00:00Z" }).since)
    assert.are.equal(1500000, runs_api.parse({ since = 1.5 }).since)
  end)

  it("refuses a bad value naming the parameter", function()
    for _, case in ipairs({
      { { status = "done" }, "status" }, { { status = "" }, "status" },
      { { since = "yesterday" }, "since" }, { { since = "-5" }, "since" },
      { { ["until"] = "2024-13-01T00:00:00Z" }, "until" }, { { ["until"] = "2024-01-01T00:00:00" }, "until" },
      { { limit = "0" }, "limit" }, { { limit = "1001" }, "limit" }, { { limit = "ten" }, "limit" },
      { { limit = "1.5" }, "limit" }, { { cursor = "xyz" }, "cursor" }, { { cursor = "00" }, "cursor" },
      { { key = ("k"):rep(256) }, "key" }, { { workflow = "" }, "workflow" },
      { { stauts = "failed" }, "stauts" }, { { dry_run = "true" }, "dry_run" },
    }) do
      local f, name, why = runs_api.parse(case[1])
      assert.is_nil(f)
      assert.are.equal(case[2], name)
      assert.is_string(why)
    end
    local f, name = runs_api.parse({ dry_run = "maybe" }, runs_api.BULK_FILTERS)
    assert.is_nil(f)
    assert.are.equal("dry_run", name)
    assert.is_true(runs_api.parse({ dry_run = "true" }, runs_api.BULK_FILTERS).dry_run)
    assert.are.equal("status", select(2, runs_api.parse({ status = "failed" }, runs_api.DLQ_FILTERS)))
  end)
end)
