-- donation — the donation story: charge the card now (the caller waits for
-- it), then tokenize the card and e-mail a receipt in the background through
-- the outbox: durable, retried with backoff, dead-lettered at the end.
-- Requests must carry an Idempotency-Key, and the charge carries one of its
-- own (ctx.key), so neither a client retry nor a crash charges twice.
-- Upstream "cards" comes from the config file or CHORUS_UPSTREAM_CARDS.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "donation",
  redact = { "card" }, -- the card number: masked in records, outbox/DLQ listings and logs
  idempotency = { required = true, ttl = 24 * 3600 },
  timeout = 30,
  run = function(ctx, input)
    if type(input) ~= "table" or math.type(input.amount) ~= "integer" or input.amount <= 0
        or type(input.card) ~= "string" or type(input.email) ~= "string" then
      return { status = 400, json = { error = "a donation needs an integer amount > 0, a card and an email" } }
    end
    local cards = http.upstream "cards"
    local charge = cards:post("/charges", { json = { amount = input.amount, card = input.card },
      idempotency_key = ctx.key "charge" })
    if charge.status ~= 201 then
      return { status = 402, json = { error = "the card was declined", detail = charge.json } }
    end
    ctx.later("tokenize_card", { transaction_id = charge.json.id, card = input.card })
    ctx.later("send_receipt", { email = input.email, amount = input.amount, transaction_id = charge.json.id })
    ctx.log.info("donation charged", { transaction_id = charge.json.id, amount = input.amount })
    return { status = 201, json = { id = charge.json.id } }
  end,
}
