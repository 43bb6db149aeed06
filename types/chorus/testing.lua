---@meta chorus.testing
-- LuaLS annotations of `require "chorus.testing"`, for specs (README
-- "Testing workflows").

---@class chorus.testing.Response
---@field status? integer
---@field json? any
---@field body? string
---@field headers? table<string, string>
---@field delay? number                    virtual seconds before the answer
---@field fault? "connect"|"timeout"|"reset"

---@alias chorus.testing.Mock chorus.testing.Response|chorus.testing.Response[]|fun(req: chorus.testing.Call): chorus.testing.Response

---@class chorus.testing.Call
---@field method string
---@field url string
---@field upstream? string
---@field path string
---@field query table<string, string>
---@field headers table<string, string>
---@field body? string
---@field json? any
---@field idempotency_key? string

---@class chorus.testing.RunOptions
---@field deliver? boolean                      deliver the outbox entries through the mocks
---@field workflows? table<string, chorus.Workflow|string>  workflows the outbox may start
---@field crash_after? integer|integer[]        crash after the n-th journaled effect, then recover

---@class chorus.testing.Result
---@field ok boolean
---@field value any
---@field error any
---@field calls chorus.testing.Call[]
---@field timeline table[]
---@field logs table[]
---@field elapsed number   virtual seconds
---@field run_id string
---@field outbox table[]
---@field crashed? boolean
---@field replayed? integer

local testing = {}

---A path next to the calling spec.
---@param name string
---@return string
function testing.here(name) end

---Forgets mocks, calls and the virtual clock (before_each).
function testing.reset() end

---Mocks an upstream by name or base URL.
---@param target string
---@param spec chorus.testing.Mock
function testing.mock(target, spec) end

---Runs a workflow (or the script at a path) on the mocks and the virtual clock.
---@param workflow chorus.Workflow|string
---@param input any
---@param opts? chorus.testing.RunOptions
---@return chorus.testing.Result
function testing.run(workflow, input, opts) end

---An event for the next testing.run: before the run starts, or opts.at seconds after it
---(virtual time); opts.id is its event id (default payload.id).
---@param name string
---@param key string
---@param payload any
---@param opts? { at?: number, id?: string }
function testing.emit(name, key, payload, opts) end

---@class chorus.testing.ScheduleOptions
---@field from number            seconds since the epoch: slots after it
---@field to number              ... up to and including it
---@field down? number[]         { t1, t2 }: the server is down meanwhile (catch_up at t2)
---@field max_runs? integer      more runs raise (default 1000)

---@class chorus.testing.ScheduleResult
---@field slots integer[]                       the slots started, in order
---@field runs chorus.testing.Result[]          their runs (each with .slot)
---@field skipped { through: integer, count?: integer, reason: "overlap"|"catch_up" }[]

---Fires a workflow's schedule on the virtual clock, each slot a testing.run.
---@param workflow chorus.Workflow|string
---@param opts chorus.testing.ScheduleOptions
---@return chorus.testing.ScheduleResult
function testing.schedule(workflow, opts) end

---The calls of result to upstream (name or base URL), optionally of method and path.
---@param result chorus.testing.Result
---@param target string
---@param method? string
---@param path? string
---@return chorus.testing.Call[]
function testing.calls_to(result, target, method, path) end

return testing
