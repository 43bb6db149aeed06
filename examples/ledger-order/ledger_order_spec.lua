-- Specs of the ledger story: every failure leaves no pending entry that was
-- not voided; success commits every entry; keys make retries safe.
local testing = require "chorus.testing"

local SCRIPT = testing.here "ledger_order.lua"

-- A fake ledger: entries by id with their state; fail_at makes the Nth
-- POST /entries fail with `failure` (a status or a fault).
local function fake_ledger(opts)
  opts = opts or {}
  local ledger = { entries = {}, posts = 0, keys = {} }
  ledger.handler = function(req)
    local key = req.idempotency_key
    if key and ledger.keys[key] then
      return ledger.keys[key] -- an idempotent replay
    end
    local res
    if req.method == "POST" and req.path == "/entries" then
      ledger.posts = ledger.posts + 1
      if ledger.posts == opts.fail_at then
        return type(opts.failure) == "string" and { fault = opts.failure } or { status = opts.failure or 422 }
      end
      local id = "e" .. ledger.posts
      ledger.entries[id] = "pending"
      res = { status = 201, json = { id = id } }
    elseif req.method == "POST" and req.path:match("^/entries/.+/void$") then
      if opts.void_fails and opts.void_fails > 0 then
        opts.void_fails = opts.void_fails - 1
        return { status = 503 }
      end
      ledger.entries[req.path:match("^/entries/(.+)/void$")] = "void"
      res = { status = 200 }
    elseif req.method == "POST" and req.path == "/commits" then
      for _, id in ipairs(req.json.entries) do ledger.entries[id] = "committed" end
      res = { status = 200 }
    else
      res = { status = 404 }
    end
    if key then ledger.keys[key] = res end
    return res
  end
  return ledger
end

local ORDER = { buyer = "b-42", items = {
  { sku = "book", amount = 1200 }, { sku = "pen", amount = 300 }, { sku = "lamp", amount = 4500 },
} }

local function states(ledger)
  local count = {}
  for _, st in pairs(ledger.entries) do count[st] = (count[st] or 0) + 1 end
  return count
end

describe("ledger-order", function()
  before_each(testing.reset)

  it("logs every item as pending, then commits them all", function()
    local ledger = fake_ledger()
    testing.mock("ledger", ledger.handler)
    local r = testing.run(SCRIPT, ORDER, { deliver = true }) -- the commit goes through the outbox
    assert.are.equal(201, r.value.status)
    assert.are.same({ "e1", "e2", "e3" }, r.value.json.entries)
    assert.are.same({ committed = 3 }, states(ledger))
  end)

  for fail_at = 1, #ORDER.items do
    for _, failure in ipairs({ 422, "connect" }) do
      it(("leaves no pending entry when item %d fails (%s)"):format(fail_at, failure), function()
        local ledger = fake_ledger({ fail_at = fail_at, failure = failure })
        testing.mock("ledger", ledger.handler)
        local r = testing.run(SCRIPT, ORDER, { deliver = true }) -- the voids go through the outbox
        assert.are.equal(409, r.value.status)
        assert.is_nil(states(ledger).pending)
        assert.are.equal(fail_at - 1, states(ledger).void or 0)
        assert.are.equal(0, #testing.calls_to(r, "ledger", "POST", "/commits"))
      end)
    end
  end

  it("retries a void the ledger cannot take yet", function()
    local ledger = fake_ledger({ fail_at = 3, void_fails = 2 })
    testing.mock("ledger", ledger.handler)
    local r = testing.run(SCRIPT, ORDER, { deliver = true })
    assert.are.equal(409, r.value.status)
    assert.is_nil(states(ledger).pending)
    assert.are.equal(0, #r.value.json.not_voided)
    assert.are.equal("delivered", r.outbox[1].delivery)
    assert.are.equal(2, r.outbox[1].attempts) -- two failed deliveries before the voids went through
  end)

  -- The README's pattern (ctx.lock + pcall + saga) under a crash after
  -- every one of the run's effects (lock, 3 entries, the commit's outbox
  -- entry, unlock): the replay finishes the order, committed once.
  for crash_after = 1, 6 do
    it(("commits exactly once after a crash after effect %d"):format(crash_after), function()
      local ledger = fake_ledger()
      testing.mock("ledger", ledger.handler)
      local r = testing.run(SCRIPT, ORDER, { deliver = true, crash_after = crash_after })
      assert.is_true(r.crashed)
      assert.is_true(r.ok, r.error and r.error.message)
      assert.are.equal(201, r.value.status)
      assert.are.same({ committed = 3 }, states(ledger))
      assert.are.equal(1, #r.outbox)
      assert.are.equal(1, #testing.calls_to(r, "ledger", "POST", "/commits"))
      assert.are.equal(3, ledger.posts) -- no entry logged twice
    end)
  end

  -- The same when item 2 is refused (lock, 2 entries, the voids' outbox
  -- entry, unlock): one compensation, voiding item 1 once.
  for crash_after = 1, 5 do
    it(("compensates exactly once after a crash after effect %d"):format(crash_after), function()
      local ledger = fake_ledger({ fail_at = 2, failure = 422 })
      testing.mock("ledger", ledger.handler)
      local r = testing.run(SCRIPT, ORDER, { deliver = true, crash_after = crash_after })
      assert.is_true(r.crashed)
      assert.is_true(r.ok, r.error and r.error.message)
      assert.are.equal(409, r.value.status)
      assert.are.same({ void = 1 }, states(ledger))
      assert.are.equal(1, #r.outbox)
      assert.are.equal(1, #testing.calls_to(r, "ledger", "POST", "/entries/e1/void"))
      assert.are.equal(0, #testing.calls_to(r, "ledger", "POST", "/commits"))
    end)
  end

  it("sends one stable idempotency key per ledger effect", function()
    local ledger = fake_ledger()
    testing.mock("ledger", ledger.handler)
    local r = testing.run(SCRIPT, ORDER, { deliver = true })
    local keys = {}
    for _, c in ipairs(r.calls) do
      assert.is_nil(keys[c.idempotency_key], "key sent twice: " .. tostring(c.idempotency_key))
      keys[c.idempotency_key] = true
      assert.truthy(c.idempotency_key:find("^" .. r.run_id:gsub("%-", "%%-") .. ":"))
    end
  end)

  it("rejects an order without items, calling nobody", function()
    local r = testing.run(SCRIPT, { buyer = "b-1", items = {} })
    assert.are.equal(400, r.value.status)
    assert.are.equal(0, #r.calls)
  end)
end)
