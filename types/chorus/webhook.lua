---@meta chorus.webhook
-- LuaLS annotations of `require "chorus.webhook"` (README "Lua API").

---@class chorus.webhook
---@field HEADER string  the header chorus signs its own webhooks in
local webhook = {}

---"sha256=HEX": the HMAC-SHA256 of body.
---@param secret string
---@param body string
---@return string
function webhook.sign(secret, body) end

---Whether header is body's signature (constant time).
---@param secret string
---@param body string
---@param header string?
---@return boolean
function webhook.verify(secret, body, header) end

---Constant-time string comparison.
---@param a string
---@param b string
---@return boolean
function webhook.equal(a, b) end

return webhook
