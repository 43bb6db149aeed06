-- The recovery benchmark's workflow: one upstream call that the mock holds
-- open (its base_url asks for a long delay), so every run is parked on it
-- when the server is killed, and a resumed run sends it again.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "bench_park",
  run = function()
    local r = http.upstream("a"):get("/park")
    return { status = r.status }
  end,
}
