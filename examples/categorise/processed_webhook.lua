-- processed_webhook — the categoriser's webhook: POST
-- /workflows/categoriser-webhook with { delivery_id, task_id, status }.
-- The config's auth["categoriser-webhook"] = { hmac_secret = ... } checks
-- the categoriser's signature (X-Chorus-Signature) before this runs; the
-- workflow picks the task id out of the payload and emits "processed"
-- keyed by it, which wakes the run of categorise.lua waiting on that task.
-- The categoriser's delivery id is the event id: its redeliveries are
-- absorbed (answered "duplicate"), and a late call, after the run gave
-- up on the task, is kept until events.ttl and then dropped.
local chorus = require "chorus"

return chorus.workflow {
  name = "categoriser-webhook",
  run = function(_, hook)
    if type(hook) ~= "table" or type(hook.task_id) ~= "string" or hook.task_id == ""
        or type(hook.delivery_id) ~= "string" or hook.delivery_id == "" then
      return { status = 400, json = { error = "send { delivery_id, task_id, status }" } }
    end
    local outcome = chorus.emit("processed", hook.task_id, { id = hook.delivery_id, status = hook.status })
    return { status = 200, json = { received = outcome } }
  end,
}
