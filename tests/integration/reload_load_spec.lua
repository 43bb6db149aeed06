-- Hot reload under load: wrk drives a workflow while its script is changed
-- and reloaded 10 times (one version broken). No request may fail, and runs
-- started after each good reload see the new version.
local H = require "tests.integration.helpers"

local function version_script(v)
  return ('local chorus = require "chorus"\n'
    .. 'return chorus.workflow { name = "version", run = function() return { version = %d } end }\n'):format(v)
end

describe("hot reload under load", function()
  it("drops no request across 10 reloads, one of them broken", function()
    local dir = H.temp_dir({ ["version.lua"] = version_script(1) })
    local conf = H.write_temp('return { admin_token = "t" }')
    local srv = H.start_server({ "--config", conf, "--scripts", dir })
    local wrk_out = os.tmpname()
    os.execute(("wrk -t2 -c16 -d6s --timeout 5s -s scripts/bench/wrk_post.lua %s/workflows/version > %s 2>&1 &")
      :format(srv.url, wrk_out))
    os.execute("sleep 0.5")
    local auth = { Authorization = "Bearer t" }
    local good, broken = 0, 0
    for v = 2, 11 do
      local f = assert(io.open(dir .. "/version.lua", "wb"))
      f:write(v == 6 and "return chorus.workflow {" or version_script(v))
      f:close()
      local r = H.request(srv.url .. "/admin/reload", { method = "POST", headers = auth })
      if v == 6 then
        assert.are.equal(422, r.status)
        broken = broken + 1
      else
        assert.are.equal(200, r.status, r.body)
        local seen = H.request(srv.url .. "/workflows/version", { method = "POST", body = "{}" }).json
        assert.are.equal(v, seen.version)
        good = good + 1
      end
      os.execute("sleep 0.3")
    end
    -- wait for wrk to finish its 6 seconds
    local out
    for _ = 1, 100 do
      out = H.read(wrk_out)
      if out:find("Requests/sec", 1, true) then break end
      os.execute("sleep 0.1")
    end
    srv.stop()
    os.execute("rm -rf " .. H.quote(dir))
    os.remove(wrk_out)
    assert.are.equal(9, good)
    assert.are.equal(1, broken)
    local requests = tonumber(out:match("(%d+) requests in"))
    print(("\n    wrk: %d requests during 10 reloads"):format(requests or -1))
    assert.is_true((requests or 0) > 100, out)
    assert.is_nil(out:find("Non-2xx", 1, true), out)
    assert.is_nil(out:find("Socket errors", 1, true), out)
  end)
end)
