-- chorus.server — `chorus serve`: its lifecycle. Opens the data folder,
-- loads the scripts, listens, starts the background runs (the outbox relay,
-- recovery of unfinished runs, the sweep, the schedules), reloads on SIGHUP or a file
-- change, and drains on SIGTERM. Under systemd it says when it is ready and
-- when it stops, and pings the watchdog (chorus.systemd).
--
-- The server is made of one module per concern: its state
-- (chorus.server_state), the paths it answers (chorus.routes), the workflow
-- requests (chorus.workflow_requests), the HTTP answers (chorus.responses),
-- the scripts folder (chorus.script_set), the run service (chorus.runs), the
-- sweep (chorus.sweep) and the admin endpoints (chorus.admin).
--
-- Every request is a run of routes.dispatch (lua_server.c). A workflow runs
-- as a separate run started with core.execute, so a workflow that fails or
-- hits a limit never takes the request handler down: the handler always
-- answers, with the workflow's response or a problem+json error.
local core = require "chorus.core"
local log = require("chorus.log").event
local otlp = require "chorus.otlp"
local outbox = require "chorus.outbox"
local responses = require "chorus.responses"
local routes = require "chorus.routes"
local runs = require "chorus.runs"
local scheduler = require "chorus.scheduler"
local script_set = require "chorus.script_set"
local state = require "chorus.server_state"
local store = require "chorus.store"
local sweep = require "chorus.sweep"
local systemd = require "chorus.systemd"
local workflow_requests = require "chorus.workflow_requests"

local server = {}

server.state = state
server.log = log
server.problem = responses.problem
server.json_response = responses.json
server.bearer = responses.bearer
server.dispatch = routes.dispatch
local EMPTY = {}

--- Reloads the scripts folder (chorus.script_set); the running set stays
--- when any script fails.
function server.reload(reason)
  return script_set.reload(state, reason)
end

-- The run service over the server's store and outbox: it starts, records,
-- resumes and finishes every run (chorus.runs). max_records: how many
-- finished records it keeps in memory (10000).
function server.service(st, backend, max_records)
  return runs.service({
    store = st, backend = backend, config = state.config, log = log, max_records = max_records,
    respond = responses.run, telemetry = state.telemetry,
    workflow = function(name) return state.workflows[name] end,
  })
end

--- POST /admin/runs/ID/redrive.
function server.redrive(id)
  return (workflow_requests.redrive(id, "admin", false))
end

--- `chorus runs redrive ID`: the redrive in this process, on the data
--- folder st (whose lock the caller holds: no server uses it), to its end.
--- Returns the run's response, its record's text, and whether it was refused.
function server.redrive_local(config, st, id)
  state.config, state.store = config, st
  state.backend = outbox.durable(st)
  state.runs = server.service(st, state.backend)
  return workflow_requests.redrive(id, "cli", true)
end

-- Opens the data folder, or with storage.durable = false keeps the
-- outbox in memory (nothing survives a restart: for benchmarks and
-- throwaway setups).
local function start_durable()
  local conf = state.config
  local storage = conf.storage or {}
  if storage.durable == false then
    state.backend = outbox.memory()
  else
    local st, err = store.open(conf.data, { sync = storage.sync ~= false, map_size_mb = storage.map_size_mb,
      max_size_mb = storage.max_size_mb })
    if not st then
      return nil, err
    end
    local lok, lerr = st:lock(5)
    if not lok then
      st:close()
      return nil, lerr
    end
    -- A corrupt record recovery or the relay would act on refuses the
    -- start; a finished run's is named when it is read (chorus.store,
    -- verify_for_start: reading every kept run made a big folder's start
    -- last seconds before /healthz answered).
    local vok, report = pcall(st.verify_for_start, st)
    local bad = vok and report.bad or { { message = tostring(report) } }
    if #bad > 0 then
      st:close()
      return nil, ("the data folder %s has %d corrupt record%s (first: %s); `chorus data verify --data %s` "
        .. "lists them; restore the folder from a backup, or move it away to start with an empty one")
        :format(conf.data, #bad, #bad == 1 and "" or "s", bad[1].message, conf.data)
    end
    -- a folder an older chorus wrote gets the runs' index now (chorus.store)
    local iok, indexed = pcall(st.ensure_run_index, st)
    if not iok then
      st:close()
      return nil, ("cannot build the runs' index of %s: %s"):format(conf.data, tostring(indexed))
    elseif indexed > 0 then
      log("info", "built the runs' index", { runs = indexed })
    end
    -- each workflow's pending outbox entries (limits.outbox_pending_per_workflow),
    -- counted before a run or a delivery can change them
    local cok, cerr = pcall(st.count_lanes, st)
    if not cok then
      st:close()
      return nil, ("cannot count the outbox entries of %s: %s"):format(conf.data, tostring(cerr))
    end
    -- one workflow's share of the folder (storage.workflow_share_mb)
    st.share = store.share_bytes(conf.storage)
    state.store = st
    state.backend = outbox.durable(st)
  end
  local oc = conf.outbox or {}
  for k in pairs(outbox.defaults) do
    if oc[k] ~= nil then
      outbox.defaults[k] = oc[k]
    end
  end
  -- events are kept in the data folder, else in memory (storage.durable = false)
  require("chorus.events").configure({ store = state.store or store.memory(), ttl = (conf.events or {}).ttl })
  -- telemetry.otlp_endpoint: the spans of runs and outbox deliveries go there
  state.telemetry = conf.telemetry and otlp.new(conf.telemetry, { log = log }) or nil
  state.runs = server.service(state.store, state.backend)
  state.relay = state.runs:relay({ alerts = conf.alerts })
  return true
end

-- ready() runs once the server listens and every run unfinished at start
-- has started again (as /readyz turns 200).
local function start_background(ready)
  core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, function() state.relay:run() end)
  if state.telemetry then
    core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, function() state.telemetry:run() end)
  end
  if state.store then
    local storage = state.config.storage or EMPTY
    state.runs:recover({ background = true, batch = storage.recovery_batch,
      -- test-only: a pause between batches, so a spec sees recovery under way
      pause = tonumber(core.env("CHORUS_TEST_RECOVERY_PAUSE") or ""),
      stopping = function() return state.draining end,
      done = function()
        if not state.draining then
          ready()
        end
      end })
    core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, sweep.loop)
    core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, sweep.counts_loop)
    -- the runs a `chorus run --data` leaves unfinished as it dies
    core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, function()
      state.runs:watch_guests(nil, function() return state.draining end)
    end)
  else
    ready()
  end
  core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, scheduler.loop)
end

-- ---- lifecycle --------------------------------------------------------------

-- A reload waits until the scripts folder has been quiet this long: an
-- editor's save can be several writes (truncate, write, write), and a half
-- written file must not count as a failed reload.
local RELOAD_QUIET = 0.5

-- Clears state.reload_pending however the waiting run ends: an error or a
-- cancel that left it set made every later change return early, and the
-- server never reloaded a file change again.
local PENDING_DONE = { __close = function() state.reload_pending = false end }

--- Watches the scripts folders: a change reloads once the folders have been
--- quiet for RELOAD_QUIET. Each fs event is a detached run (core.watch); the
--- first one waits and reloads, those meanwhile only push the reload back.
function server.watch_scripts(dirs)
  local last_change = 0
  for _, dir in ipairs(dirs or {}) do
    core.watch(dir, function()
      last_change = core.monotime()
      if state.reload_pending then
        return
      end
      state.reload_pending = true
      do
        local _ <close> = setmetatable({}, PENDING_DONE)
        -- One clock reading per turn: the check and the next sleep read it
        -- apart, so the sleep's length could come out negative (a timer
        -- wakes a little early on a stale loop time, then the last
        -- sub-millisecond sleeps spin) and core.sleep raised.
        local wait = RELOAD_QUIET
        repeat -- every change meanwhile pushes the reload back
          core.sleep(wait)
          wait = RELOAD_QUIET - (core.monotime() - last_change)
        until wait <= 0
      end
      server.reload("file change")
    end)
  end
end

local function drain(signal)
  if state.draining then
    return
  end
  state.draining = true
  systemd.stopping()
  -- Whatever happens while waiting, the loop stops: an error here must not
  -- leave a server that has stopped accepting but never exits.
  local ok, err = pcall(function()
    log("info", "draining", { signal = signal, pending = state.srv:pending(), inflight = state.runs.inflight })
    state.srv:quiesce()
    state.relay:stop()
    local deadline = core.monotime() + (state.config.drain_timeout or 10)
    while (state.srv:pending() > 0 or state.runs.inflight > 0 or state.relay.n_inflight > 0)
        and core.monotime() < deadline do
      core.sleep(0.05)
    end
    local tel = state.telemetry
    if tel then -- the spans of the runs that ended: sent, within the same deadline
      tel:stop()
      while not tel.done and core.monotime() < deadline do
        core.sleep(0.05)
      end
    end
    log("info", "stopped", { pending = state.srv:pending(), inflight = state.runs.inflight })
  end)
  core.stop()
  if not ok then
    pcall(log, "error", "drain failed; stopping now", { error = tostring(err) })
  end
end

--- Starts serving: loads scripts, listens, runs the loop until drained.
--- Returns the exit status.
function server.serve(config, on_listening)
  state.config = config
  local dok, derr = start_durable()
  if not dok then
    return nil, derr
  end
  local ok, result, dirs = server.reload("start")
  if not ok then
    return nil, "cannot load scripts: " .. table.concat(result, "; ")
  end
  local limits = config.limits or {}
  local host, port = config.listen:match("^(.+):(%d+)$")
  local sok, srv = pcall(core.serve, {
    host = host, port = tonumber(port), max_body = limits.max_body_bytes,
    max_header = limits.max_header_bytes, max_connections = limits.max_connections,
    idle_timeout = limits.client_timeout, client_timeout = limits.client_timeout,
  }, routes.dispatch)
  if not sok then
    return nil, tostring(srv)
  end
  state.srv = srv
  state.config.drain_timeout = limits.drain_timeout
  -- callbacks never reach this server itself, whatever egress.allow says
  core.egress({ allow = (config.egress or EMPTY).allow, self = ("%s:%d"):format(host, srv:port()) })
  core.on_signal("SIGHUP", function() server.reload("SIGHUP") end)
  core.on_signal("SIGTERM", drain)
  core.on_signal("SIGINT", drain)
  server.watch_scripts(dirs)
  local address = ("%s:%d"):format(host, srv:port())
  systemd.watchdog(function() return true end) -- until the loop stops, drain included
  start_background(function() systemd.ready(address) end)
  log("info", "listening", { address = address, scripts = config.scripts })
  if on_listening then
    on_listening(address)
  end
  core.loop()
  srv:close()
  if state.store then
    state.store:close()
  end
  return true
end

return server
