-- chorus.systemd — `chorus serve` under a systemd unit of Type=notify
-- (contrib/chorus.service): READY=1 once it listens and every run
-- unfinished at start has started again, STOPPING=1 when it starts to
-- drain, and WATCHDOG=1 every half of WatchdogSec= while the loop turns (a
-- stuck loop misses them and systemd restarts the service). Sent by
-- libsystemd's sd_notify (core.sd_notify); without NOTIFY_SOCKET nothing is
-- sent, so the server runs the same under any other supervisor.
local core = require "chorus.core"
local log = require("chorus.log").event

local systemd = {}

local LIMITS = { instructions = 0, cpu_ms = 0, memory = 0 }

-- A failed send is said once: a wrong NOTIFY_SOCKET must not fill the log
-- with a line per watchdog ping, nor stop the server.
local warned = false

--- Sends state (sd_notify's newline-separated assignments); returns whether
--- it was sent.
function systemd.notify(state)
  local ok, err = core.sd_notify(state)
  if ok == nil and not warned then
    warned = true
    log("warn", "cannot notify systemd; serving on without it", { error = err,
      notify_socket = core.env("NOTIFY_SOCKET") })
  end
  return ok == true
end

function systemd.ready(address)
  return systemd.notify("READY=1\nSTATUS=serving on " .. address)
end

function systemd.stopping()
  return systemd.notify("STOPPING=1\nSTATUS=draining")
end

--- Starts the watchdog pings when systemd asks for them (WATCHDOG_USEC);
--- they go on until the loop stops. running() says whether to go on.
function systemd.watchdog(running)
  local interval, err = core.sd_watchdog_interval()
  if interval == nil then
    log("warn", "no watchdog pings: " .. err, { watchdog_usec = core.env("WATCHDOG_USEC") })
    return false
  end
  if not interval then
    return false
  end
  core.start(LIMITS, function()
    while running() do
      systemd.notify("WATCHDOG=1")
      core.sleep(interval)
    end
  end)
  return interval
end

return systemd
