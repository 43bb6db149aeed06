---@meta
-- LuaLS annotations of the ctx a workflow's run receives (README "Lua API").

---@alias chorus.LogFn fun(msg: string, fields?: table)

---@class chorus.Logger
---@overload fun(msg: string, fields?: table)
---@field info chorus.LogFn
---@field warn chorus.LogFn
---@field error chorus.LogFn
---@field debug chorus.LogFn

---@class chorus.InboundRequest
---@field method string
---@field path string
---@field query table<string, string>
---@field headers table<string, string>  only those the config's request_headers lists, lower-case names
---@field idempotency_key? string        the inbound Idempotency-Key

---@class chorus.LaterOpts
---@field delay? number     seconds before the first delivery
---@field attempts? integer
---@field base? number      backoff base, seconds
---@field cap? number       backoff cap, seconds

---@class chorus.PollOpts
---@field every? number                          seconds between polls (a fixed delay); or backoff
---@field backoff? chorus.retry.Policy|chorus.retry.PolicyOptions  waits as the policy says; its attempts caps the polls
---@field timeout? number                        seconds from the first poll; then an error of kind timeout

---@class chorus.Ctx
---@field run_id string
---@field input any
---@field workflow string
---@field trace_id string
---@field request? chorus.InboundRequest  nil for outbox and `chorus run` runs
---@field log chorus.Logger               JSON lines on stderr with the run id and trace id
local ctx = {}

---The deterministic idempotency key `run_id:name`.
---@param name string
---@return string
function ctx.key(name) end

---The time, journaled (a replay sees the same value).
---@return number seconds since the epoch
function ctx.now() end

---A random number, journaled: [0,1) without bounds, else an integer in [1,m] or [m,n].
---@param m? integer
---@param n? integer
---@return number
function ctx.random(m, n) end

---A random UUID, journaled.
---@return string
function ctx.uuid() end

---A durable sleep: after a restart the run sleeps only what is left.
---@param seconds number
function ctx.sleep(seconds) end

---Calls fn(n) (n: the poll's number) until it returns a non-nil value; returns that value and
---the polls it took. The waits are journaled (a replay does not wait again), bounded by the
---run's deadline; raises {kind="timeout", polls=} when timeout or the policy's attempts run out.
---@generic T
---@param fn fun(n: integer): T?
---@param opts chorus.PollOpts
---@return T value
---@return integer polls
function ctx.poll(fn, opts) end

---Parks the run until an event of this name and key arrives (POST /events/NAME/KEY or
---chorus.emit) and returns its payload; an event that came first is kept (events.ttl) and
---returned at once. Each event goes to one wait, once, across restarts. Raises
---{kind="timeout"} after opts.timeout seconds (counted from the first wait); the run's
---deadline still applies.
---@param name string
---@param opts { key: string|integer, timeout?: number }
---@return any payload
function ctx.event(name, opts) end

---Starts workflow with input through the outbox, after the run; returns the entry id.
---@param workflow string
---@param input any
---@param opts? chorus.LaterOpts
---@return string
function ctx.later(workflow, input, opts) end

---Runs workflow with input as a durable child run and waits for it: returns its result, or
---raises its error (with child_run_id). Journaled: a replay never starts it twice.
---@param workflow string
---@param input? table
---@param opts? table
---@return any
function ctx.call(workflow, input, opts) end

---Runs fn(...) as a named entry of the run's timeline; returns its values, re-raises its error.
---@generic R
---@param name string
---@param fn fun(...): R
---@param ... any
---@return R
function ctx.step(name, fn, ...) end

---Runs fn holding the lock name (FIFO across the server's runs; released on error).
---@generic R
---@param name string
---@param fn fun(): R
---@return R
function ctx.lock(name, fn) end
