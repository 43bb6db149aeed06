-- edge probe: the ledger-order pattern (ctx.lock + pcall + saga), a
-- ctx.call child, a chorus.all fan-out and a ctx.later, in one run.
local chorus = require "chorus"
local http = require "chorus.http"
local saga = require "chorus.saga"

return chorus.workflow {
  name = "saga",
  idempotency = { required = true },
  timeout = 120,
  run = function(ctx, order)
    local ledger = http.upstream "ledger"
    return ctx.lock("buyer:" .. order.buyer, function()
      local s = saga.new(ctx, { policy = { attempts = 8, base = 0.05, cap = 0.5 } })
      local ok, err = pcall(function()
        for i = 1, order.items do
          s:step("item " .. i, function()
            local up = (i == order.fail_at) and "ledger_reject" or "ledger"
            local r = http.upstream(up):post("/entries", { json = { n = order.n, item = i },
              idempotency_key = ctx.key("entry " .. i) })
            if r.status ~= 200 then
              error({ kind = "ledger_rejected", message = "HTTP " .. r.status })
            end
            return i
          end, function(id)
            return ledger:post("/void", { json = { n = order.n, item = id }, idempotency_key = ctx.key("void " .. id) })
          end)
        end
      end)
      if not ok then
        pcall(s.abort, s, err)
        return { status = 424, json = { voided = #s.compensated } }
      end
      local a, b = chorus.all(function()
        return ledger:post("/fan/a", { json = { n = order.n }, idempotency_key = ctx.key "fan a" }).status
      end, function()
        return ledger:post("/fan/b", { json = { n = order.n }, idempotency_key = ctx.key "fan b" }).status
      end)
      local child = ctx.call("child", { n = order.n })
      ctx.later("later", { n = order.n })
      s:commit("commit", function()
        return ledger:post("/commit", { json = { n = order.n }, idempotency_key = ctx.key "commit" })
      end)
      if order.fail_end then
        local r = http.upstream("down"):post("/down", { json = { n = order.n }, idempotency_key = ctx.key "down" })
        error({ kind = "down", message = "HTTP " .. r.status })
      end
      return { status = 201, json = { a = a, b = b, child = child } }
    end)
  end,
}
