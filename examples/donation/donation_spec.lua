-- Specs of the donation story: charge now, tokenize and send the receipt
-- later through the outbox; retries, the DLQ and a crash after the charge.
local testing = require "chorus.testing"

local SCRIPT = testing.here "donation.lua"
local WORKFLOWS = {
  tokenize_card = testing.here "tokenize_card.lua",
  send_receipt = testing.here "send_receipt.lua",
}
local INPUT = { amount = 500, card = "tok_visa", email = "ada@example.com" }

local function by_workflow(entries)
  local out = {}
  for _, e in ipairs(entries) do
    out[e.workflow] = e
  end
  return out
end

describe("donation", function()
  before_each(function()
    testing.reset()
    testing.mock("cards", { status = 201, json = { id = "ch_1" } })
    testing.mock("vault", { status = 201, json = { token = "card_tok_1" } })
    testing.mock("mailer", { status = 202 })
  end)

  it("charges once with its own idempotency key and answers 201", function()
    local r = testing.run(SCRIPT, INPUT)
    assert.is_true(r.ok)
    assert.are.same({ status = 201, json = { id = "ch_1" } }, r.value)
    local charges = testing.calls_to(r, "cards", "POST", "/charges")
    assert.are.equal(1, #charges)
    assert.are.equal(r.run_id .. ":charge", charges[1].idempotency_key)
    assert.are.same({ amount = 500, card = "tok_visa" }, charges[1].json)
  end)

  it("leaves tokenizing and the receipt to the outbox, not to the caller", function()
    local r = testing.run(SCRIPT, INPUT)
    assert.are.equal(2, #r.outbox)
    local later = by_workflow(r.outbox)
    assert.are.same({ transaction_id = "ch_1", card = "tok_visa" }, later.tokenize_card.input)
    assert.are.same({ email = "ada@example.com", amount = 500, transaction_id = "ch_1" },
      later.send_receipt.input)
    -- nothing was sent to the vault or the mailer during the run
    assert.are.equal(0, #testing.calls_to(r, "vault"))
    assert.are.equal(0, #testing.calls_to(r, "mailer"))
  end)

  it("delivers both background workflows, each with its own key", function()
    local r = testing.run(SCRIPT, INPUT, { deliver = true, workflows = WORKFLOWS })
    local later = by_workflow(r.outbox)
    assert.are.equal("delivered", later.tokenize_card.delivery)
    assert.are.equal("delivered", later.send_receipt.delivery)
    local mail = testing.calls_to(r, "mailer", "POST", "/messages")[1]
    assert.are.equal(later.send_receipt.id .. ":receipt", mail.idempotency_key)
    assert.are.equal("ada@example.com", mail.json.to)
  end)

  it("retries the receipt with backoff until the mailer recovers", function()
    testing.mock("mailer", { { status = 503 }, { status = 503 }, { status = 202 } })
    local r = testing.run(SCRIPT, INPUT, { deliver = true, workflows = WORKFLOWS })
    local later = by_workflow(r.outbox)
    assert.are.equal("delivered", later.send_receipt.delivery)
    assert.are.equal(2, later.send_receipt.attempts) -- two failed attempts before the success
    local mails = testing.calls_to(r, "mailer")
    assert.are.equal(3, #mails)
    -- every attempt is the same run id, so the same idempotency key
    assert.are.equal(mails[1].idempotency_key, mails[3].idempotency_key)
  end)

  it("dead-letters a card the vault refuses, without retrying it", function()
    testing.mock("vault", { status = 422, json = { error = "expired card" } })
    local r = testing.run(SCRIPT, INPUT, { deliver = true, workflows = WORKFLOWS })
    local later = by_workflow(r.outbox)
    assert.are.equal("dead", later.tokenize_card.delivery)
    assert.are.equal(1, later.tokenize_card.attempts)
    assert.matches("HTTP 422", later.tokenize_card.last_error.message)
    assert.are.equal("delivered", later.send_receipt.delivery)
  end)

  it("after a crash right after the charge, replays it from the journal instead of charging again", function()
    local r = testing.run(SCRIPT, INPUT, { crash_after = 1 })
    assert.is_true(r.crashed)
    assert.is_true(r.ok)
    assert.are.equal(1, r.replayed)
    assert.are.equal(1, #testing.calls_to(r, "cards"))
    assert.are.equal(2, #r.outbox) -- enqueued once, by the replay
  end)

  it("answers 402 when the card is declined, and enqueues nothing", function()
    testing.mock("cards", { status = 402, json = { code = "card_declined" } })
    local r = testing.run(SCRIPT, INPUT)
    assert.are.equal(402, r.value.status)
    assert.are.same({ code = "card_declined" }, r.value.json.detail)
    assert.are.equal(0, #r.outbox)
  end)

  it("rejects an input without an amount, a card or an email with 400", function()
    for _, bad in ipairs({ {}, { amount = 0, card = "c", email = "e" }, { amount = 5, email = "e" },
        { amount = 5, card = "c" }, { amount = 1.5, card = "c", email = "e" } }) do
      local r = testing.run(SCRIPT, bad)
      assert.are.equal(400, r.value.status)
      assert.are.equal(0, #testing.calls_to(r, "cards"))
    end
  end)
end)
