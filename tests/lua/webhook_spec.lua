-- chorus.webhook: HMAC-SHA256 signatures (RFC 4231 vectors) and their
-- constant-time verification.
local webhook = require "chorus.webhook"

describe("chorus.webhook", function()
  it("signs with HMAC-SHA256 as RFC 4231 test case 2 says", function()
    assert.are.equal("sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      webhook.sign("Jefe", "what do ya want for nothing?"))
  end)

  it("verifies a good signature, in either hex case", function()
    local sig = webhook.sign("s3cret", '{"run_id":"x"}')
    assert.is_true(webhook.verify("s3cret", '{"run_id":"x"}', sig))
    assert.is_true(webhook.verify("s3cret", '{"run_id":"x"}', sig:upper():gsub("^SHA256", "sha256")))
  end)

  it("refuses a changed body, another secret, a truncated or missing signature", function()
    local sig = webhook.sign("s3cret", "body")
    assert.is_false(webhook.verify("s3cret", "body!", sig))
    assert.is_false(webhook.verify("other", "body", sig))
    assert.is_false(webhook.verify("s3cret", "body", sig:sub(1, -2)))
    assert.is_false(webhook.verify("s3cret", "body", nil))
    assert.is_false(webhook.verify("", "body", sig))
  end)

  it("compares strings of different lengths or types as unequal", function()
    assert.is_true(webhook.equal("abc", "abc"))
    assert.is_false(webhook.equal("abc", "abd"))
    assert.is_false(webhook.equal("abc", "abcd"))
    assert.is_false(webhook.equal("abc", nil))
  end)

  it("refuses to sign with an empty secret", function()
    assert.has_error(function() webhook.sign("", "x") end,
      "webhook.sign(secret, body): secret and body must be strings, the secret not empty")
  end)
end)
