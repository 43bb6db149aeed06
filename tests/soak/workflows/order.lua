-- soak: a saga. Every item is logged at the ledger (idempotent, keyed); an
-- order with fail_at has that item refused (HTTP 422), and the items logged
-- before it are voided by compensations delivered through the outbox. A
-- good order is committed through the outbox. Answers 201, or 424 when rolled
-- back (not 409: that one means "in flight" to an idempotent client).
local chorus = require "chorus"
local http = require "chorus.http"
local saga = require "chorus.saga"

local POLICY = { attempts = 8, base = 0.05, cap = 1 }

return chorus.workflow {
  name = "order",
  idempotency = { required = true },
  timeout = 60,
  run = function(ctx, order)
    if type(order) ~= "table" or type(order.n) ~= "string" or type(order.items) ~= "table" then
      return { status = 400, json = { error = "an order needs n and items" } }
    end
    local ledger = http.upstream "ledger"
    local s = saga.new(ctx, { policy = POLICY })
    local ok, err = pcall(function()
      for i = 1, #order.items do
        s:step("item " .. i, function()
          if i == order.fail_at then
            local r = http.upstream("ledger_reject"):post("/entries", { json = { n = order.n, item = i },
              idempotency_key = ctx.key("rejected " .. i) })
            error({ kind = "ledger_rejected", message = "the ledger refused item " .. i .. ": HTTP " .. r.status })
          end
          local r = ledger:post("/entries", { json = { n = order.n, item = i, sku = order.items[i] },
            idempotency_key = ctx.key("entry " .. i) })
          if r.status ~= 200 then
            error({ kind = "ledger_error", message = "the ledger answered HTTP " .. r.status })
          end
          return i
        end, function(id)
          return ledger:post("/void", { json = { n = order.n, item = id }, idempotency_key = ctx.key("void " .. id) })
        end)
      end
    end)
    if not ok then
      pcall(s.abort, s, err)
      return { status = 424, json = { error = type(err) == "table" and err.message or tostring(err),
        voided = #s.compensated } }
    end
    s:commit("commit", function()
      return ledger:post("/commit", { json = { n = order.n, items = #order.items },
        idempotency_key = ctx.key "commit" })
    end)
    return { status = 201, json = { items = #order.items } }
  end,
}
