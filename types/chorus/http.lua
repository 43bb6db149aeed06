---@meta chorus.http
-- LuaLS annotations of `require "chorus.http"` (README "Lua API").

---@class chorus.http.Options
---@field headers? table<string, string>
---@field json? any                        a body sent as JSON
---@field body? string
---@field timeout? number                  seconds (default 30)
---@field connect_timeout? number          seconds (default 10)
---@field idempotency_key? string          sent as Idempotency-Key
---@field max_response_bytes? integer      default 16 MiB
---@field follow_redirects? boolean
---@field later? boolean|chorus.LaterOpts  queue the call in the outbox instead of sending it

---@class chorus.http.Request: chorus.http.Options
---@field method? string  default GET
---@field url string

---@class chorus.http.Response
---@field status integer
---@field headers table<string, string>  lower-case names
---@field body string
---@field json? any                      when the response is JSON
---@field queued? boolean                a `later` call: in the outbox (status 202)
---@field outbox_id? string

---What a transport failure raises.
---@class chorus.http.Error
---@field kind "timeout"|"connect"|"tls"|"reset"|"protocol"|"too_large"|"cancelled"|"unknown_upstream"|"forbidden_host"|"breaker_open"|"bulkhead_full"|"rate_limited"|string
---@field message string
---@field upstream? string
---@field attempts? integer
---@field method? string
---@field url? string

---An upstream from the config's `upstreams.NAME` (or CHORUS_UPSTREAM_NAME): paths are joined to its base_url.
---@class chorus.http.Upstream
local Upstream = {}

---@param req { method?: string, path?: string } | chorus.http.Options
---@return chorus.http.Response
function Upstream:request(req) end

---@param path string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function Upstream:get(path, opts) end

---@param path string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function Upstream:post(path, opts) end

---@param path string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function Upstream:put(path, opts) end

---@param path string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function Upstream:delete(path, opts) end

---@param path string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function Upstream:patch(path, opts) end

---@param path string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function Upstream:head(path, opts) end

local http = {}

---Sends a request; a response is returned whatever its status, a transport failure raises chorus.http.Error.
---@param req chorus.http.Request
---@return chorus.http.Response
function http.request(req) end

---@param url string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function http.get(url, opts) end

---@param url string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function http.post(url, opts) end

---@param url string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function http.put(url, opts) end

---@param url string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function http.delete(url, opts) end

---@param url string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function http.patch(url, opts) end

---@param url string
---@param opts? chorus.http.Options
---@return chorus.http.Response
function http.head(url, opts) end

---The upstream name; raises {kind="unknown_upstream"} when neither the config nor the environment names it.
---@param name string
---@return chorus.http.Upstream
function http.upstream(name) end

return http
