-- categorise — the events story: send a batch of transactions to an
-- external categoriser (with an idempotency key, so a retried request
-- makes one task), get a task id back, wait for the categoriser's
-- "processed" event keyed by that task id (it calls our webhook,
-- processed_webhook.lua, which emits it), then fetch the result by task
-- id. The categoriser promises an answer within 14 days: when none comes,
-- the task is sent once more (a new task); when that one stays silent
-- too, an alert goes out and the run fails with kind
-- "categoriser_silent".
--
-- The wait is durable: a server restarted (even after SIGKILL) while the
-- run waits resumes it, and an event that came meanwhile, or before the
-- wait started, is kept for it. Events keyed by another caller's task id
-- never reach this run.
--
-- Upstreams "categoriser" and "alerts" come from the config file (or
-- CHORUS_UPSTREAM_CATEGORISER, CHORUS_UPSTREAM_ALERTS).
local chorus = require "chorus"
local http = require "chorus.http"

local DAY = 86400
local ANSWER_WITHIN = 14 * DAY -- the categoriser's promise (a domain deadline)

local function invalid(message)
  return { status = 400, json = { error = message } }
end

local function check(input)
  if type(input) ~= "table" or type(input.transactions) ~= "table" or #input.transactions == 0 then
    return "send { transactions = [ { id, amount, description }, ... ] }"
  end
  return nil
end

-- Sends the transactions as task number `attempt`; returns the task id.
local function send_task(ctx, categoriser, transactions, attempt)
  local res = categoriser:post("/tasks", { json = { transactions = transactions },
    idempotency_key = ctx.key("task " .. attempt) })
  if res.status ~= 201 and res.status ~= 200 or type(res.json) ~= "table" or type(res.json.task_id) ~= "string" then
    error({ kind = "categoriser_refused", status = res.status,
      message = ("the categoriser did not take the task (HTTP %d)"):format(res.status) })
  end
  return res.json.task_id
end

return chorus.workflow {
  name = "categorise",
  timeout = 2 * ANSWER_WITHIN + DAY, -- both waits fit, and the alert
  idempotency = { required = true, ttl = 30 * DAY },
  run = function(ctx, input)
    local problem = check(input)
    if problem then
      return invalid(problem)
    end
    local categoriser = http.upstream("categoriser")
    local tasks = {}
    for attempt = 1, 2 do
      local task_id = send_task(ctx, categoriser, input.transactions, attempt)
      tasks[attempt] = task_id
      local ok, err = pcall(ctx.event, "processed", { key = task_id, timeout = ANSWER_WITHIN })
      if ok then
        local res = categoriser:get("/tasks/" .. task_id .. "/result")
        if res.status ~= 200 then
          error({ kind = "categoriser_refused", status = res.status,
            message = ("the categoriser has no result for task %s (HTTP %d)"):format(task_id, res.status) })
        end
        return { status = 200, json = { task_id = task_id, attempts = attempt, categories = res.json.categories } }
      end
      if type(err) ~= "table" or err.kind ~= "timeout" then
        error(err, 0) -- not ours to handle (e.g. the run's deadline)
      end
      ctx.log.warn("the categoriser stayed silent", { task_id = task_id, attempt = attempt })
    end
    http.upstream("alerts"):post("/alerts", { json = { severity = "high", run_id = ctx.run_id,
      message = "the categoriser answered none of the tasks within 14 days", tasks = tasks },
      idempotency_key = ctx.key("alert") })
    error({ kind = "categoriser_silent", tasks = tasks,
      message = "the categoriser answered neither task within 14 days; an alert was raised" })
  end,
}
