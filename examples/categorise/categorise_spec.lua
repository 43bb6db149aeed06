-- Specs of the categorise story, in virtual time (14 days pass in
-- milliseconds): the categoriser's webhook may come before the wait, late,
-- twice, or carrying another caller's task id; a silent categoriser gets
-- the task once more, then an alert; a crash while waiting loses nothing;
-- a cancel while waiting ends the run there.
local testing = require "chorus.testing"

local SCRIPT = testing.here "categorise.lua"
local WEBHOOK = testing.here "processed_webhook.lua"
local DAY = 86400
local INPUT = { transactions = { { id = "tx-1", amount = 1250, description = "GROCER 42" } } }

-- A fake categoriser: each new Idempotency-Key makes a task (task-1,
-- task-2, ...); the same key again gets the same task back.
local function fake_categoriser()
  local c = { tasks = {}, by_key = {}, posts = 0, results = {} }
  testing.mock("categoriser", function(req)
    if req.method == "POST" and req.path == "/tasks" then
      local id = c.by_key[req.idempotency_key]
      if not id then
        c.posts = c.posts + 1
        id = "task-" .. c.posts
        c.by_key[req.idempotency_key] = id
        c.tasks[id] = req.json.transactions
      end
      return { status = 201, json = { task_id = id } }
    end
    local id = req.path:match("^/tasks/(.+)/result$")
    if req.method == "GET" and id and c.tasks[id] then
      c.results[#c.results + 1] = id
      return { status = 200, json = { categories = { ["tx-1"] = "groceries" } } }
    end
    return { status = 404 }
  end)
  testing.mock("alerts", { status = 202 })
  return c
end

-- The categoriser calling our webhook: a run of processed_webhook.lua.
local function webhook(task_id, delivery_id)
  local r = testing.run(WEBHOOK, { task_id = task_id, delivery_id = delivery_id, status = "done" })
  assert.is_true(r.ok, r.error and r.error.message)
  return r.value.json.received
end

describe("categorise", function()
  before_each(testing.reset)

  it("waits for the processed event of its task, then fetches the result", function()
    local c = fake_categoriser()
    testing.emit("processed", "task-1", { id = "d-1", status = "done" }, { at = 3 * DAY })
    local r = testing.run(SCRIPT, INPUT)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ task_id = "task-1", attempts = 1, categories = { ["tx-1"] = "groceries" } }, r.value.json)
    assert.equal(3 * DAY, r.elapsed)
    assert.same({ "task-1" }, c.results)
  end)

  it("takes an event that came before the wait at once", function()
    fake_categoriser()
    assert.equal("kept", webhook("task-1", "d-1")) -- the categoriser was quicker than our wait
    local r = testing.run(SCRIPT, INPUT)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.equal("task-1", r.value.json.task_id)
    assert.equal(0, r.elapsed)
  end)

  it("absorbs the categoriser's duplicate webhook", function()
    local c = fake_categoriser()
    assert.equal("kept", webhook("task-1", "d-1"))
    assert.equal("duplicate", webhook("task-1", "d-1")) -- redelivered: absorbed
    local r = testing.run(SCRIPT, INPUT)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ "task-1" }, c.results)
    -- a redelivery after the run took the event is absorbed too: nothing
    -- is kept for a later wait on that task
    assert.equal("duplicate", webhook("task-1", "d-1"))
  end)

  it("ignores a webhook with another caller's task id", function()
    local c = fake_categoriser()
    testing.emit("processed", "task-99", { id = "d-9" }, { at = DAY })
    testing.emit("processed", "task-1", { id = "d-1" }, { at = 2 * DAY })
    local r = testing.run(SCRIPT, INPUT)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.equal("task-1", r.value.json.task_id)
    assert.equal(2 * DAY, r.elapsed)
    assert.same({ "task-1" }, c.results)
  end)

  it("sends the task once more after 14 silent days, and ignores the first task's late webhook", function()
    local c = fake_categoriser()
    testing.emit("processed", "task-1", { id = "d-1" }, { at = 20 * DAY }) -- late: we gave up on task-1
    testing.emit("processed", "task-2", { id = "d-2" }, { at = 21 * DAY })
    local r = testing.run(SCRIPT, INPUT)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ task_id = "task-2", attempts = 2, categories = { ["tx-1"] = "groceries" } }, r.value.json)
    assert.equal(21 * DAY, r.elapsed)
    assert.equal(2, c.posts)
    local keys = {}
    for _, call in ipairs(testing.calls_to(r, "categoriser", "POST", "/tasks")) do
      keys[#keys + 1] = call.idempotency_key
    end
    assert.same({ r.run_id .. ":task 1", r.run_id .. ":task 2" }, keys)
    assert.not_called_upstream(r, "alerts")
  end)

  it("raises an alert when the retried task stays silent too", function()
    fake_categoriser()
    local r = testing.run(SCRIPT, INPUT)
    assert.is_false(r.ok)
    assert.equal("categoriser_silent", r.error.kind)
    assert.same({ "task-1", "task-2" }, r.error.tasks)
    assert.equal(28 * DAY, r.elapsed)
    assert.called_upstream(r, "alerts", "POST", "/alerts")
    assert.equal(r.run_id .. ":alert", testing.calls_to(r, "alerts")[1].idempotency_key)
  end)

  it("gets its event after a crash while waiting, without sending the task again", function()
    local c = fake_categoriser()
    testing.emit("processed", "task-1", { id = "d-1" }, { at = 3 * DAY })
    -- effect 1: POST /tasks; effect 2: the wait's expiry; the process dies there
    local r = testing.run(SCRIPT, INPUT, { crash_after = 2 })
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.equal("task-1", r.value.json.task_id)
    assert.equal(3 * DAY, r.elapsed)
    assert.equal(1, c.posts)
    assert.equal(1, #testing.calls_to(r, "categoriser", "POST", "/tasks"))
  end)

  it("is cancelled while it waits: no result fetched, no alert, the task not sent again", function()
    local c = fake_categoriser()
    local r = testing.run(SCRIPT, INPUT, { cancel_at = 2 * DAY })
    assert.is_false(r.ok)
    assert.equal("cancelled", r.status)
    assert.equal("cancelled", r.error.kind)
    assert.equal(2 * DAY, r.elapsed)
    assert.equal(1, c.posts)
    assert.same({}, c.results)
    assert.not_called_upstream(r, "alerts")
  end)

  it("answers 400 to input without transactions", function()
    local r = testing.run(SCRIPT, { transactions = {} })
    assert.equal(400, r.value.status)
  end)
end)
