-- chorus.ui — the web console at /ui: its files (ui/ in the repository) are
-- compiled into the binary (core.ui_file) and served as they are, with no
-- token: the shell holds no data. Every piece of data the console shows it
-- fetches from the admin API with the admin token the operator signs in
-- with, so the same 401 protects the API and the console.
--
-- The Content-Security-Policy lets the page load scripts, styles and data
-- from this server only: no remote source, no inline script, no frames.
local core = require "chorus.core"
local responses = require "chorus.responses"

local ui = {}

ui.CSP = table.concat({
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
}, "; ")

local TYPES = {
  html = "text/html; charset=utf-8",
  css = "text/css; charset=utf-8",
  js = "text/javascript; charset=utf-8",
  svg = "image/svg+xml",
  ico = "image/x-icon",
}

local function headers(content_type)
  return {
    ["Content-Type"] = content_type,
    ["Content-Security-Policy"] = ui.CSP,
    ["X-Content-Type-Options"] = "nosniff",
    ["Referrer-Policy"] = "no-referrer",
    ["X-Frame-Options"] = "DENY",
    ["Cache-Control"] = "no-cache",
  }
end

--- The file a /ui path names ("index.html" for /ui and /ui/), or nil.
function ui.file_of(path)
  if path == "/ui" or path == "/ui/" then
    return "index.html"
  end
  -- one plain file name: no folders, no dot files, nothing to resolve
  return path:match("^/ui/([%w_%-]+%.%w+)$")
end

--- The response to a request under /ui (routes.lua sends those here).
function ui.handle(req)
  if req.method ~= "GET" and req.method ~= "HEAD" then
    local r = responses.problem(405, "Method Not Allowed", "the console's files are read with GET")
    r.headers.Allow = "GET, HEAD"
    return r
  end
  local name = ui.file_of(req.path)
  local body = name and core.ui_file(name)
  local ext = name and name:match("%.(%w+)$")
  if not body or not TYPES[ext] then
    return responses.problem(404, "Not Found", ("the console has no file at %s"):format(req.path))
  end
  return { status = 200, headers = headers(TYPES[ext]), body = body }
end

return ui
