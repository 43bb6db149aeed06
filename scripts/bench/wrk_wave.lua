-- wrk script: one wave of concurrent POST {} requests (bench_serve.sh's
-- 5,000 case). Each thread sends WRK_STOP_AFTER of them (connections /
-- threads: one per connection) and stops once all have been answered. A
-- connection answered early waits (delay()) rather than send again, so the
-- slowest requests of the wave are always among those measured (wrk's
-- latency maximum is the last answer) and nothing else loads the server
-- (a run of less than 10 minutes never sends its GET /healthz). done()
-- prints "wave: N answered, M 2xx" over all threads.
local stop_after = tonumber(os.getenv("WRK_STOP_AFTER") or "0")
local wave_req, after_req
local sent, answered = 0, 0
wave_2xx, wave_answered = 0, 0 -- globals: done() reads them from each thread (thread:get)
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init()
  wave_req = wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, "{}")
  after_req = wrk.format("GET", "/healthz")
end

function request()
  sent = sent + 1
  if stop_after == 0 or sent <= stop_after then
    return wave_req
  end
  return after_req
end

-- wrk calls delay() once before each request (and request() when the delay
-- is over): the first stop_after go at once, any later one waits 10 minutes
local granted = 0
function delay()
  if stop_after > 0 and granted >= stop_after then
    return 600000
  end
  granted = granted + 1
  return 0
end

function response(status)
  answered = answered + 1
  wave_answered = answered
  if status >= 200 and status < 300 then
    wave_2xx = wave_2xx + 1
  end
  if stop_after > 0 and answered >= stop_after then
    wrk.thread:stop()
  end
end

function done()
  local n, ok = 0, 0
  for _, t in ipairs(threads) do
    n = n + (t:get("wave_answered") or 0)
    ok = ok + (t:get("wave_2xx") or 0)
  end
  io.write(("wave: %d answered, %d 2xx\n"):format(n, ok))
end
