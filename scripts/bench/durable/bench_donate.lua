-- The durability benchmark's workflow: one upstream call (a journal
-- entry), one outbox entry; every request carries its own Idempotency-Key.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "bench_donate",
  run = function(ctx, input)
    local r = http.upstream("a"):post("/charge", { json = input, idempotency_key = ctx.key "charge" })
    ctx.later("bench_receipt", { status = r.status })
    return { status = 201, json = { ok = true } }
  end,
}
