-- chorus.server_state — what `chorus serve` holds while it runs, shared by
-- the modules that make up the server (server.lua's lifecycle, routes,
-- workflow_requests, admin). One table, made once per process.
--
-- Invariant: `workflows` is replaced as a whole by a successful reload and
-- never modified in place, so a run keeps the workflow object it started
-- with while new requests see the new set.
return {
  config = nil,    -- the config file's table
  workflows = {},  -- name → { workflow, path, hash } of the scripts folder
  draining = false, reload_pending = false,
  srv = nil,       -- core.serve's server
  store = nil,     -- chorus.store of the data folder
  backend = nil,   -- its outbox
  relay = nil,     -- the outbox relay
  telemetry = nil, -- the OTLP exporter (chorus.otlp) when the config has telemetry
  runs = nil,      -- the run service (chorus.runs): records, runs in flight, versions
}
