-- bench_fanout — the serve benchmark's workflow: two concurrent calls to
-- the upstreams "a" and "b", answered with both statuses.
local chorus = require "chorus"
local http = require "chorus.http"

return chorus.workflow {
  name = "bench_fanout",
  run = function()
    local a, b = chorus.all(
      function() return http.upstream("a"):get("/a").status end,
      function() return http.upstream("b"):get("/b").status end)
    return { a = a, b = b }
  end,
}
