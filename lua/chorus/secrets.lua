-- chorus.secrets — where chorus.secret(name) finds a value, and the
-- redaction of every value it has handed out.
--
-- A secret comes from the environment (CHORUS_SECRET_<NAME>, then NAME) or
-- from a file named NAME in the secrets folder (config `secrets_dir`, or
-- CHORUS_SECRETS_DIR; one trailing newline is dropped). Every value read
-- (4 characters or more) is remembered, and redact() replaces it, raw and
-- as JSON escapes it, with "[REDACTED]" in log lines, run records (with
-- their timeline and errors), journal targets and CLI error output.
local core = require "chorus.core"

local secrets = { dir = nil, MIN_LENGTH = 4, MASK = "[REDACTED]" }

local known = {} -- list of strings to mask
local seen = {}

local function remember(text)
  if #text >= secrets.MIN_LENGTH and not seen[text] then
    seen[text] = true
    known[#known + 1] = text
  end
end

--- Remembers value as a secret to redact.
function secrets.remember(value)
  remember(value)
  -- the same value inside JSON text (quotes, backslashes, control bytes)
  local ok, encoded = pcall(core.json.encode, value)
  if ok then
    remember(encoded:sub(2, -2))
  end
end

local server_values = {} -- values the config file read: the server's own

--- Marks value (a secret the config file read) as the server's: workflow
--- scripts can no longer read it with chorus.secret or chorus.env.
function secrets.reserve(value)
  if type(value) == "string" and value ~= "" then
    server_values[value] = true
  end
end

--- True when value is one of the server's own secrets.
function secrets.reserved(value)
  return type(value) == "string" and server_values[value] == true
end

--- The value of secret name, or nil.
function secrets.get(name)
  local value = core.env("CHORUS_SECRET_" .. name:upper():gsub("[^%w]", "_")) or core.env(name)
  local dir = secrets.dir or core.env("CHORUS_SECRETS_DIR")
  if value == nil and dir and name:match("^[%w_%-%.]+$") then
    value = require("chorus.script").read_file(dir .. "/" .. name, "secret")
    value = value and value:gsub("\r?\n$", "")
  end
  if value ~= nil then
    secrets.remember(value)
  end
  return value
end

-- Replaces every plain occurrence of needle in text.
local function replace_plain(text, needle, mask)
  local out, i = {}, 1
  while true do
    local s, e = text:find(needle, i, true)
    if not s then
      break
    end
    out[#out + 1] = text:sub(i, s - 1)
    out[#out + 1] = mask
    i = e + 1
  end
  if i == 1 then
    return text
  end
  out[#out + 1] = text:sub(i)
  return table.concat(out)
end

--- Whether any secret is known (redact changes nothing while none is).
function secrets.any()
  return known[1] ~= nil
end

--- text with every known secret replaced by [REDACTED].
function secrets.redact(text)
  if known[1] == nil or type(text) ~= "string" then
    return text
  end
  for _, s in ipairs(known) do
    text = replace_plain(text, s, secrets.MASK)
  end
  return text
end

--- core.write_log, redacted.
function secrets.write_log(text)
  core.write_log(secrets.redact(text))
end

return secrets
