local chorus = require "chorus"

return chorus.workflow {
  name = "bench_receipt",
  run = function() return true end,
}
