-- tokenize_card — background half of the donation: store the card at the
-- vault. A 4xx from the vault is permanent (raised with permanent = true:
-- straight to the DLQ); anything else is retried by the outbox.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "tokenize_card",
  redact = { "card" }, -- never shown in records, listings or logs
  run = function(ctx, input)
    local r = http.upstream("vault"):post("/tokens", { json = input, idempotency_key = ctx.key "token" })
    if r.status >= 400 and r.status < 500 and r.status ~= 408 and r.status ~= 429 then
      error({ kind = "rejected", permanent = true,
        message = ("the vault refused the card (HTTP %d)"):format(r.status) })
    elseif r.status >= 300 then
      error({ kind = "unavailable", message = ("the vault answered HTTP %d"):format(r.status) })
    end
    return { token = r.json and r.json.token }
  end,
}
