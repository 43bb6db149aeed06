-- The idempotency fingerprint: canonical JSON bodies, and keys stored with
-- the byte fingerprint (before bodies were canonical) still replaying.
local core = require "chorus.core"
local idempotency = require "chorus.idempotency"

local function req(body, ct)
  return { method = "POST", path = "/workflows/w", query = {}, headers = { ["content-type"] = ct }, body = body }
end

-- A data folder holding one key record.
local function folder(rec)
  return { get_idempotency = function() return rec end }
end

describe("idempotency.fingerprint", function()
  it("is the same for reordered keys and whitespace with a JSON content type", function()
    local a = idempotency.fingerprint(req('{"a":1,"b":{"c":[1,2],"d":"x"}}', "application/json"))
    local b = idempotency.fingerprint(req(' {"b": {"d":"x","c":[1, 2]},\n"a":1}', "Application/JSON; charset=utf-8"))
    assert.are.equal(a, b)
    assert.are_not.equal(a, idempotency.fingerprint(req('{"a":1,"b":{"c":[2,1],"d":"x"}}', "application/json")))
    assert.are.equal(a, idempotency.fingerprint(req('{"b":{"c":[1,2],"d":"x"},"a":1}', "application/merge-patch+json")))
  end)

  it("compares bytes for other content types and bodies that do not parse", function()
    assert.are_not.equal(idempotency.fingerprint(req('{"a":1,"b":2}', "text/plain")),
      idempotency.fingerprint(req('{"b":2,"a":1}', "text/plain")))
    assert.are_not.equal(idempotency.fingerprint(req('{"a":1,', "application/json")),
      idempotency.fingerprint(req('{"a":1, ', "application/json")))
  end)

  it("replays a key stored with the byte fingerprint of the same bytes", function()
    local r = req('{"b":2, "a":1}', "application/json")
    local fp, legacy = idempotency.fingerprint(r)
    local old = core.sha256("POST /workflows/w\n" .. r.body)
    assert.are.equal(old, legacy)
    local st = folder({ fp = old, state = "done", response = { status = 200 } })
    assert.are.equal("replay", (idempotency.check(st, "w", "k", fp, legacy)))
    -- other bytes, even the same JSON, are another request for an old key
    local fp2, legacy2 = idempotency.fingerprint(req('{"a":1,"b":2}', "application/json"))
    assert.are.equal("mismatch", (idempotency.check(st, "w", "k", fp2, legacy2)))
  end)
end)
