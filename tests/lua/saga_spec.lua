-- chorus.saga on mocks and the virtual clock: the ledger pattern — log each
-- item as pending, compensate the logged ones on failure, else commit; the
-- compensations and the commit go through the outbox.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"
local saga = require "chorus.saga"

local order = chorus.workflow {
  name = "order",
  run = function(ctx, input)
    local ledger = http.upstream("ledger")
    local s = saga.new(ctx, { policy = { attempts = 3, base = 1 } })
    local ok, err = pcall(function()
      for i, item in ipairs(input.items) do
        s:step("item " .. i, function()
          local res = ledger:post("/entries", { json = item, idempotency_key = ctx.key("item " .. i) })
          if res.status ~= 201 then
            error({ kind = "ledger_rejected", message = "item " .. i .. " got " .. res.status })
          end
          return res.json.id
        end, function(id)
          return ledger:delete("/entries/" .. id)
        end)
      end
    end)
    if not ok then
      local aok = pcall(s.abort, s, err)
      assert(not aok)
      return { status = 409, json = { compensated = s.compensated, failed = s.failed } }
    end
    s:commit("commit", function() return ledger:post("/commit", { json = { run = ctx.run_id } }) end)
    return { status = 201, json = { committed = s.committed } }
  end,
}

local function ledger(fail_at, delete_status)
  local n = 0
  return function(req)
    if req.method == "POST" and req.path == "/entries" then
      n = n + 1
      if n == fail_at then return { status = 422 } end
      return { status = 201, json = { id = "e" .. n } }
    elseif req.method == "DELETE" then
      return { status = delete_status or 204 }
    end
    return { status = 200 }
  end
end

local ITEMS = { { sku = "a" }, { sku = "b" }, { sku = "c" } }

describe("chorus.saga", function()
  before_each(testing.reset)

  it("commits when every step succeeds, through the outbox", function()
    testing.mock("ledger", ledger(nil))
    local r = testing.run(order, { items = ITEMS })
    assert.are.equal(201, r.value.status)
    assert.are.same({ "commit" }, r.value.json.committed)
    -- not sent during the run: one chain entry in the outbox
    assert.are.equal(0, #testing.calls_to(r, "ledger", "POST", "/commit"))
    assert.are.equal(1, #r.outbox)
    assert.are.equal("chain", r.outbox[1].kind)
    r = testing.run(order, { items = ITEMS }, { deliver = true })
    assert.called_upstream(r, "ledger", "POST", "/commit")
    assert.are.equal("delivered", r.outbox[1].delivery)
  end)

  for fail_at = 1, 3 do
    it(("compensates every logged item, newest first, when item %d fails"):format(fail_at), function()
      testing.mock("ledger", ledger(fail_at))
      local r = testing.run(order, { items = ITEMS }, { deliver = true })
      assert.are.equal(409, r.value.status)
      local deleted = {}
      for _, c in ipairs(testing.calls_to(r, "ledger", "DELETE")) do
        deleted[#deleted + 1] = c.path
      end
      local expected = {}
      for i = fail_at - 1, 1, -1 do expected[#expected + 1] = "/entries/e" .. i end
      assert.are.same(expected, deleted)
      assert.are.equal(fail_at - 1, #r.value.json.compensated)
      assert.are.equal(0, #testing.calls_to(r, "ledger", "POST", "/commit"))
    end)
  end

  it("retries a failing compensation, then dead-letters it with the last error", function()
    testing.mock("ledger", ledger(3, 503))
    local r = testing.run(order, { items = ITEMS }, { deliver = true })
    assert.are.equal(409, r.value.status)
    assert.are.equal(2, #r.value.json.compensated) -- both enqueued
    local chain = r.outbox[1]
    assert.are.equal("dead", chain.delivery)
    assert.are.equal(3, chain.attempts) -- the saga's policy
    assert.are.equal(503, chain.last_error.status)
    -- the chain stops at its first failing call: 3 attempts of the newest
    assert.are.equal(3, #testing.calls_to(r, "ledger", "DELETE"))
  end)

  it("delivers the compensations in order once the ledger recovers", function()
    local calls = 0
    testing.mock("ledger", function(req)
      if req.method == "POST" and req.path == "/entries" then
        calls = calls + 1
        return calls == 3 and { status = 422 } or { status = 201, json = { id = "e" .. calls } }
      end
      calls = calls + 1
      return { status = calls <= 4 and 503 or 204 } -- the first delete fails once
    end)
    local r = testing.run(order, { items = ITEMS }, { deliver = true })
    assert.are.equal("delivered", r.outbox[1].delivery)
    local deleted = {}
    for _, c in ipairs(testing.calls_to(r, "ledger", "DELETE")) do
      deleted[#deleted + 1] = c.path
    end
    assert.are.same({ "/entries/e2", "/entries/e2", "/entries/e1" }, deleted)
  end)
end)

describe("chorus.saga's policy", function()
  before_each(testing.reset)

  -- The outbox relay reads the policy after the run, outside it: a table's
  -- __lt ran there (a loop held the server), a string failed every delivery
  -- of the entry for good.
  it("is refused unless it is numbers, attempts a positive integer", function()
    local cases = {
      { attempts = setmetatable({}, { __lt = function() return false end }) },
      { attempts = "3" }, { attempts = 0 }, { attempts = 1.5 }, { base = -1 }, { cap = 0 / 0 }, { base = {} },
    }
    for i, policy in ipairs(cases) do
      local wf = chorus.workflow { name = "p" .. i, run = function(ctx)
        return saga.new(ctx, { policy = policy }) ~= nil
      end }
      local r = testing.run(wf, {})
      assert.is_false(r.ok, "case " .. i)
      local message = type(r.error) == "table" and r.error.message or r.error
      assert.matches("saga.new: policy", tostring(message), 1, true)
    end
    -- checked again when the saga enqueues: the script may replace it after saga.new
    testing.mock("ledger", function() return { status = 204 } end)
    local swapped = testing.run(chorus.workflow { name = "swap", run = function(ctx)
      local s = saga.new(ctx)
      s.later = { attempts = setmetatable({}, { __lt = function() return false end }) }
      return s:commit("commit", function() http.upstream("ledger"):post("/commit") end)
    end }, {})
    assert.is_false(swapped.ok)
    local message = type(swapped.error) == "table" and swapped.error.message or swapped.error
    assert.matches("saga: option 'attempts' must be a positive integer", tostring(message), 1, true)
    assert.are.same({}, swapped.outbox)
    local ok = testing.run(chorus.workflow { name = "fine", run = function(ctx)
      return saga.new(ctx, { policy = { attempts = 2, base = 0, cap = 1.5 } }) ~= nil
    end }, {})
    assert.is_true(ok.ok)
  end)
end)
