-- edge probe: the child of saga (ctx.call).
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "child",
  run = function(ctx, input)
    local r = http.upstream("ledger"):post("/child", { json = { n = input.n }, idempotency_key = ctx.key "child" })
    return { status = r.status }
  end,
}
