-- ledger-order — the ledger story: log every line item of an order as
-- pending at an external ledger; if any fails, void the logged ones
-- (compensations, newest first, retried); otherwise commit them. Orders of
-- the same buyer never interleave (ctx.lock), and every ledger call carries a
-- deterministic idempotency key, so a retried call never logs twice.
-- Upstream "ledger" comes from the config file or CHORUS_UPSTREAM_LEDGER.
local chorus = require "chorus"
local http = require "chorus.http"
local saga = require "chorus.saga"

local function invalid(message)
  return { status = 400, json = { error = message } }
end

local function check(order)
  if type(order) ~= "table" or type(order.buyer) ~= "string" or order.buyer == "" then
    return "an order needs a buyer"
  end
  if type(order.items) ~= "table" or #order.items == 0 then
    return "an order needs at least one item"
  end
  for i, item in ipairs(order.items) do
    if type(item.sku) ~= "string" or math.type(item.amount) ~= "integer" or item.amount <= 0 then
      return ("item %d needs a sku and a positive integer amount"):format(i)
    end
  end
  return nil
end

local function log_items(ctx, ledger, s, order)
  local ids = {}
  for i, item in ipairs(order.items) do
    ids[i] = s:step("item " .. i, function()
      local res = ledger:post("/entries", {
        json = { buyer = order.buyer, sku = item.sku, amount = item.amount, state = "pending" },
        idempotency_key = ctx.key("entry " .. i),
      })
      if res.status ~= 201 then
        error({ kind = "ledger_rejected", status = res.status,
          message = ("the ledger refused item %d (HTTP %d)"):format(i, res.status) })
      end
      return res.json.id
    end, function(id)
      return ledger:post("/entries/" .. id .. "/void", { idempotency_key = ctx.key("void " .. id) })
    end)
  end
  return ids
end

return chorus.workflow {
  name = "ledger-order",
  timeout = 60,
  run = function(ctx, order)
    local problem = check(order)
    if problem then
      return invalid(problem)
    end
    return ctx.lock("buyer:" .. order.buyer, function()
      local ledger = http.upstream("ledger")
      local s = saga.new(ctx)
      local ok, ids = pcall(log_items, ctx, ledger, s, order)
      if not ok then
        local err = ids
        pcall(s.abort, s, err) -- voids what was logged, then re-raises
        ctx.log.warn("order rolled back", { buyer = order.buyer, voided = #s.compensated })
        return { status = 409, json = {
          error = type(err) == "table" and err.message or tostring(err),
          voided = s.compensated, not_voided = s.failed,
        } }
      end
      s:commit("commit", function()
        return ledger:post("/commits", { json = { entries = ids }, idempotency_key = ctx.key("commit") })
      end)
      return { status = 201, json = { entries = ids } }
    end)
  end,
}
