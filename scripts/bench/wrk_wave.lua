-- wrk script: POST {} like wrk_post.lua, but each thread stops once it has
-- WRK_STOP_AFTER responses. With that set to connections / threads, a run
-- measures one wave of concurrent requests (bench_serve.sh's 5,000 case)
-- rather than a fixed duration: wrk then reports how many answered, how
-- long the wave took, and any errors; done() adds "2xx: N", the answers
-- with a 2xx status over all threads.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"

local stop_after = tonumber(os.getenv("WRK_STOP_AFTER") or "0")
local answered = 0
ok_2xx = 0 -- a global: done() reads it from each thread (thread:get)
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function response(status)
  answered = answered + 1
  if status >= 200 and status < 300 then
    ok_2xx = ok_2xx + 1
  end
  if stop_after > 0 and answered >= stop_after then
    wrk.thread:stop()
  end
end

function done()
  local n = 0
  for _, t in ipairs(threads) do
    n = n + (t:get("ok_2xx") or 0)
  end
  io.write(("2xx: %d\n"):format(n))
end
