-- chorus.webhook — HMAC-SHA256 signatures of webhook bodies, the scheme
-- chorus signs its run-end webhooks with and accepts on POST /workflows
-- when a workflow requires it (config auth.NAME.hmac_secret):
--
--   X-Chorus-Signature: sha256=<hex HMAC-SHA256 of the raw body under the secret>
--
--   local webhook = require "chorus.webhook"
--   if not webhook.verify(chorus.secret("stripe"), body, signature) then ... end
local core = require "chorus.core"

local webhook = { HEADER = "X-Chorus-Signature" }

--- true when a and b are equal strings; takes the same time wherever they
--- differ, so a caller cannot guess a token byte by byte.
function webhook.equal(a, b)
  if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then
    return false
  end
  local diff = 0
  for i = 1, #a do
    diff = diff | (a:byte(i) ~ b:byte(i))
  end
  return diff == 0
end

--- The signature header value of body under secret.
function webhook.sign(secret, body)
  if type(secret) ~= "string" or secret == "" or type(body) ~= "string" then
    error("webhook.sign(secret, body): secret and body must be strings, the secret not empty", 2)
  end
  return "sha256=" .. core.hmac_sha256(secret, body)
end

--- true when signature (a header value "sha256=HEX", hex in any case) is
--- body's signature under secret.
function webhook.verify(secret, body, signature)
  if type(secret) ~= "string" or secret == "" or type(body) ~= "string" or type(signature) ~= "string" then
    return false
  end
  return webhook.equal(webhook.sign(secret, body), signature:lower())
end

return webhook
