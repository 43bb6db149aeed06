-- edge probe: started by saga through the outbox (ctx.later).
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "later",
  run = function(ctx, input)
    local r = http.upstream("ledger"):post("/later", { json = { n = input.n }, idempotency_key = ctx.key "later" })
    if r.status ~= 200 then error("later: HTTP " .. r.status) end
    return { sent = true }
  end,
}
