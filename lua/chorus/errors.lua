-- chorus.errors — one shape for every error a caller sees.
--
-- Workflows raise strings, structured tables ({ kind =, message = }) or
-- anything else; callers (the CLI, the HTTP server, run records) get a plain
-- table { kind =, message =, ... } that JSON can carry.
local errors = {}

local function plain(value, depth)
  local t = type(value)
  if t == "string" or t == "number" or t == "boolean" then
    return value
  end
  if t == "table" and depth < 4 then
    local out = {}
    for k, v in pairs(value) do
      if type(k) == "string" or type(k) == "number" then
        out[k] = plain(v, depth + 1)
      end
    end
    return out
  end
  return nil
end

--- Returns a JSON-safe table { kind, message, ... } describing err.
function errors.normalize(err)
  if type(err) == "table" then
    local out = plain(err, 0)
    out.kind = type(err.kind) == "string" and err.kind or "error"
    out.message = err.message ~= nil and tostring(err.message) or tostring(err)
    return out
  end
  if err == nil then
    return { kind = "error", message = "error with no message (nil)" }
  end
  return { kind = "error", message = tostring(err) }
end

return errors
