-- wrk script: POST {} like wrk_post.lua, but each thread stops once it has
-- WRK_STOP_AFTER responses. With that set to connections / threads, a run
-- measures one wave of concurrent requests (bench_serve.sh's 5,000 case)
-- rather than a fixed duration: wrk then reports how many answered, how
-- long the wave took, and any errors.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"

local stop_after = tonumber(os.getenv("WRK_STOP_AFTER") or "0")
local answered = 0

function response()
  answered = answered + 1
  if stop_after > 0 and answered >= stop_after then
    wrk.thread:stop()
  end
end
