---@meta chorus
-- LuaLS annotations of `require "chorus"` as workflow scripts see it
-- (README "Lua API"). Meta only: never loaded, never embedded in ./chorus.

---@class chorus.IdempotencySpec
---@field required? boolean  POST /workflows/NAME without an Idempotency-Key is refused
---@field ttl? number         seconds a key's answer is kept
---@field on_failure? "replay"|"redrive"  a failed run's key: replay its 500 (default) or redrive the run

---@class chorus.ScheduleSpec
---@field cron? string                    "MIN HOUR DOM MON DOW" or an @alias, UTC (exactly one of cron and every)
---@field every? integer                  seconds: the slots are its multiples since the epoch
---@field catch_up? "skip"|"latest"|"all" slots missed while the server was down (default "latest")
---@field overlap? "skip"|"allow"         a slot due while a run of the schedule is in flight (default "skip")

---@class chorus.WorkflowSpec
---@field name string                                  the workflow's name: POST /workflows/NAME
---@field run fun(ctx: chorus.Ctx, input: any): any    the run; what it returns is the result ({status=, json=} for HTTP)
---@field description? string
---@field timeout? number                              the run's overall deadline, seconds
---@field on_timeout? fun(ctx: chorus.Ctx): any        runs after the deadline, with 10 s of its own
---@field on_cancel? fun(ctx: chorus.Ctx): any         runs after a cancel (DELETE /runs/ID), with 10 s of its own
---@field idempotency? chorus.IdempotencySpec
---@field allow_hosts? string[]                        the only hosts the run may call
---@field redact? string[]                             fields masked in records and logs, e.g. "card.number"
---@field schedule? chorus.ScheduleSpec                  chorus serve starts a run at each slot, input { slot =, slot_time = }

---@class chorus.Workflow
---@field name string
---@field description? string

---@class chorus.Settled
---@field ok boolean
---@field value any   the task's value when ok
---@field err any     its error when not

---@class chorus.json
---@field null lightuserdata  JSON null (decode gives it; encode writes null)
local json = {}

---Encodes v as JSON; an error names the path of what cannot be encoded.
---@param v any
---@return string
function json.encode(v) end

---Decodes strict RFC 8259 JSON; an error names the byte offset of the first fault.
---@param s string
---@return any
function json.decode(s) end

---Marks t as a JSON array (an empty one encodes as []).
---@generic T: table
---@param t T
---@return T
function json.array(t) end

---Whether v is JSON null.
---@param v any
---@return boolean
function json.is_null(v) end

---@class chorus
---@field json chorus.json
---@field version string
local chorus = {}

---Declares the workflow: a script ends with `return chorus.workflow { ... }`.
---@param spec chorus.WorkflowSpec
---@return chorus.Workflow
function chorus.workflow(spec) end

---Runs the functions concurrently; their results in argument order. The
---first error cancels the rest and is raised.
---@param ... fun(): any
---@return any ...
function chorus.all(...) end

---Runs the functions concurrently and waits for all of them.
---@param ... fun(): any
---@return chorus.Settled[]
function chorus.all_settled(...) end

---The first function to settle: its value and its position.
---@param ... fun(): any
---@return any value
---@return integer position
function chorus.race(...) end

---The first success; raises {kind="all_failed", errors=} when none succeeds.
---@param ... fun(): any
---@return any
function chorus.any(...) end

---An environment variable (never CHORUS_SECRET_* nor the server's own).
---@param name string
---@param default? string
---@return string?
function chorus.env(name, default) end

---Delivers an event to the run waiting on it with ctx.event (kept until one waits). Its id is
---payload.id when there is one (a redelivery is absorbed); journaled (a replay does not emit
---again). Returns "kept" or "duplicate".
---@param name string
---@param key string|integer
---@param payload any
---@return string
function chorus.emit(name, key, payload) end

---A secret: CHORUS_SECRET_<NAME>, then NAME, then the file NAME in the
---secrets folder; redacted from logs and records.
---@param name string
---@return string?
function chorus.secret(name) end

return chorus
