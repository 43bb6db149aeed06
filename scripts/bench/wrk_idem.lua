-- wrk: POSTs a small JSON body, each request with its own Idempotency-Key.
-- thread_id is a global each thread gets from setup (thread:set).
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

wrk.method = "POST"
wrk.body = '{"amount":100}'
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = ("t%d-%d"):format(thread_id, counter)
  return wrk.format()
end
