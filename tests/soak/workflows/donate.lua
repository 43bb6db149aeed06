-- soak: a donation-like charge. The charge is exactly-once: it carries its
-- own idempotency key (ctx.key) and goes to a mock path with idempotent=1.
-- The receipt goes through the outbox (ctx.later); with input.reject the
-- receipt is refused permanently (a deliberate DLQ entry).
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "donate",
  idempotency = { required = true },
  timeout = 60,
  run = function(ctx, input)
    if type(input) ~= "table" or type(input.n) ~= "string" or math.type(input.amount) ~= "integer" then
      return { status = 400, json = { error = "a donation needs n and an integer amount" } }
    end
    local r = http.upstream("payments"):post("/charge", { json = { n = input.n, amount = input.amount },
      idempotency_key = ctx.key "charge" })
    if r.status ~= 200 then
      error("charge failed: HTTP " .. r.status)
    end
    ctx.later("receipt", { parent = ctx.run_id, n = input.n, reject = input.reject == true })
    return { status = 201, json = { ok = true } }
  end,
}
