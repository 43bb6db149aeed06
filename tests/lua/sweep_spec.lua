-- chorus.sweep's loop on a real LMDB folder: a minute's step is taken a few
-- hundred records at a time, with a turn of the loop between them (decoded
-- at once, 5,000 run records held every request for about 60 ms).
local core = require "chorus.core"
local store = require "chorus.store"
local state = require "chorus.server_state"
local sweep = require "chorus.sweep"

describe("chorus.sweep", function()
  local dir, st, saved, real_sleep

  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    st = assert(store.open(dir))
    saved = { store = state.store, config = state.config, draining = state.draining }
    real_sleep = core.sleep
  end)

  after_each(function()
    core.sleep = real_sleep
    state.store, state.config, state.draining = saved.store, saved.config, saved.draining
    st:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("deletes the expired records a few hundred at a time, letting the loop turn between", function()
    local ok, err = core.run(nil, function()
      for i = 1, 600 do
        st:put_run({ id = ("r%04d"):format(i), workflow = "w", status = "succeeded", started = 1, finished = 1 })
      end
      st:put_run({ id = "live", workflow = "w", status = "running", started = 2 })
      st:commit()
    end)
    assert(ok, tostring(err))
    state.store, state.config, state.draining = st, { storage = { runs_retention = 1 } }, false
    local sleeps = {}
    core.sleep = function(seconds) -- a minute passes at once; the second one ends the loop
      sleeps[#sleeps + 1] = seconds
      if seconds ~= 0 and #sleeps > 1 then
        state.draining = true
      end
      return real_sleep(0)
    end
    ok, err = core.run(nil, sweep.loop)
    assert(ok, tostring(err))
    local yields = 0
    for _, s in ipairs(sleeps) do
      yields = yields + (s == 0 and 1 or 0)
    end
    assert.are.equal(2, yields) -- 601 records: steps of 250, 250 and 101
    local left = st:find_runs(store.ALL_RUNS, { limit = 1000 })
    assert.are.equal(1, #left) -- the running one stays
    assert.are.equal("live", left[1].id)
  end)
end)
