-- send_receipt — background half of the donation: e-mail the receipt.
-- Failures are retried by the outbox; the mailer dedupes on the key.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "send_receipt",
  run = function(ctx, input)
    local r = http.upstream("mailer"):post("/messages", {
      json = { to = input.email, template = "donation_receipt",
        vars = { amount = input.amount, transaction_id = input.transaction_id } },
      idempotency_key = ctx.key "receipt",
    })
    if r.status >= 300 then
      error({ kind = "unavailable", message = ("the mailer answered HTTP %d"):format(r.status) })
    end
    return { sent = true }
  end,
}
