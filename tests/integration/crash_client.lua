-- One client of the crash test: sends donations with fresh keys until the
-- stop file appears, retrying each key until it gets its 201 (through
-- refused connections, resets and 409s while the server restarts).
-- Writes "key run_id tries" per key to the out file.
-- usage: lua5.4 crash_client.lua URL CLIENT_ID STOP_FILE OUT_FILE
local url, id, stop_file, out_file = arg[1], arg[2], arg[3], arg[4]
local out = assert(io.open(out_file, "w"))

local function exists(path)
  local f = io.open(path)
  if f then
    f:close()
  end
  return f ~= nil
end

local function post(key, body)
  local p = io.popen(("curl -s -D - --max-time 5 -X POST -H 'Idempotency-Key: %s' "
    .. "--data-binary '%s' %s/workflows/donate"):format(key, body, url))
  local text = p:read("a")
  p:close()
  local status = tonumber(text:match("^HTTP/[%d.]+ (%d+)")) or 0
  local run_id = text:match("\n[Xx]%-[Rr]un%-[Ii]d: ([%x%-]+)")
  local detail = text:match('"detail":"([^"]*)"') or text:match("\r\n\r\n(.*)$") or ""
  return status, run_id, detail:sub(1, 120):gsub("%s", "_")
end

local i = 0
while not exists(stop_file) do
  i = i + 1
  local key = ("c%s-%d"):format(id, i)
  local body = ('{"n":"%s"}'):format(key)
  local tries, others = 0, ""
  while true do
    tries = tries + 1
    local status, run_id, detail = post(key, body)
    if status == 201 then
      out:write(("%s %s %d%s\n"):format(key, run_id or "?", tries, others))
      out:flush()
      break
    elseif status ~= 0 and status ~= 409 and status ~= 503 then
      others = others .. " " .. status .. "(" .. detail .. ")" -- anything else is a defect: reported
    end
    os.execute("sleep 0.05")
  end
end
out:close()
io.open(out_file .. ".done", "w"):close()
