-- soak: the receipt of a donation, started through the outbox. Its key
-- names the donation's run, so the soak can match every receipt to its
-- charge. A rejected receipt (HTTP 422) is a permanent failure: the outbox
-- entry goes to the DLQ at once.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "receipt",
  run = function(ctx, input)
    local upstream = input.reject and "mailer_reject" or "mailer"
    local name = (input.reject and "rejected:" or "receipt:") .. input.parent
    local r = http.upstream(upstream):post("/receipt", { json = { n = input.n },
      idempotency_key = ctx.key(name) })
    if r.status >= 400 and r.status < 500 then
      error({ kind = "rejected", permanent = true, message = "receipt refused: HTTP " .. r.status })
    elseif r.status ~= 200 then
      error("receipt failed: HTTP " .. r.status)
    end
    return { sent = true }
  end,
}
