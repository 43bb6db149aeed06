-- The web console at /ui (chorus.ui): its files come from the binary with
-- their content types and a Content-Security-Policy that allows nothing but
-- this server; the shell loads without a token, and every piece of data the
-- console reads needs the admin token.
local H = require "tests.integration.helpers"

local NOOP = [[
local chorus = require "chorus"
return chorus.workflow { name = "noop", run = function() return { ok = true } end }
]]

describe("the web console at /ui", function()
  local dir, conf, srv

  setup(function()
    dir = H.temp_dir({ ["noop.lua"] = NOOP })
    conf = H.write_temp('return { admin_token = "s3cret" }')
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, dir, conf) end)

  local function get(path, opts)
    return H.request(srv.url .. path, opts)
  end

  -- The directives of a CSP header, by name.
  local function directives(csp)
    local out = {}
    for part in (csp or ""):gmatch("[^;]+") do
      local name, rest = part:match("^%s*(%S+)%s*(.-)%s*$")
      out[name] = rest
    end
    return out
  end

  it("serves the shell at /ui and /ui/ without a token, as HTML with the CSP", function()
    for _, path in ipairs({ "/ui", "/ui/", "/ui/index.html" }) do
      local r = get(path)
      assert.are.equal(200, r.status, path)
      assert.are.equal("text/html; charset=utf-8", r.headers["content-type"], path)
      assert.matches("<title>chorus console</title>", r.body, 1, true)
      assert.are.equal("nosniff", r.headers["x-content-type-options"])
      assert.are.equal("no-referrer", r.headers["referrer-policy"])
      assert.is_truthy(r.headers["content-security-policy"], path)
    end
  end)

  it("serves each asset with its content type", function()
    local want = { ["/ui/app.js"] = "text/javascript; charset=utf-8", ["/ui/app.css"] = "text/css; charset=utf-8",
      ["/ui/favicon.svg"] = "image/svg+xml" }
    for path, ctype in pairs(want) do
      local r = get(path)
      assert.are.equal(200, r.status, path)
      assert.are.equal(ctype, r.headers["content-type"], path)
      assert.is_true(#r.body > 0, path)
      assert.is_truthy(r.headers["content-security-policy"], path)
    end
    -- the bytes served are the files of ui/, unchanged
    assert.are.equal(H.read("ui/app.js"), get("/ui/app.js").body)
    assert.are.equal(H.read("ui/index.html"), get("/ui/").body)
  end)

  it("sends a CSP that allows only this server: no remote source, no inline script, no frames", function()
    local d = directives(get("/ui/").headers["content-security-policy"])
    assert.are.equal("'none'", d["default-src"])
    for _, name in ipairs({ "script-src", "style-src", "connect-src" }) do
      assert.are.equal("'self'", d[name], name)
    end
    assert.are.equal("'none'", d["frame-ancestors"])
    assert.are.equal("'none'", d["base-uri"])
    for name, value in pairs(d) do
      assert.is_nil(value:find("https?:"), name .. " names a remote source: " .. value)
      assert.is_nil(value:find("*", 1, true), name .. " allows any source: " .. value)
      assert.is_nil(value:find("unsafe", 1, true), name .. " allows unsafe code: " .. value)
    end
  end)

  it("names no outside address in its files", function()
    for _, name in ipairs({ "index.html", "app.js", "app.css" }) do
      local body = get("/ui/" .. name).body
      -- the only absolute URL allowed is the SVG namespace, which is never fetched
      local rest = body:gsub("http://www%.w3%.org/2000/svg", "")
      assert.is_nil(rest:find("https?://"), name .. " refers to an outside address")
      assert.is_nil(rest:find("//[%w%-]+%.[%w%-]+/"), name .. " refers to a protocol-relative address")
    end
  end)

  it("answers 404 for a file the console does not have, and never resolves paths", function()
    for _, path in ipairs({ "/ui/nope.js", "/ui/%2e%2e/admin/dlq", "/ui/sub/app.js",
      "/ui/.hidden.js", "/ui/app", "/uiapp.js" }) do
      local r = get(path)
      assert.are.equal(404, r.status, path)
      assert.is_nil(r.body:find("<html", 1, true), path)
    end
  end)

  it("answers 405 to a method other than GET or HEAD", function()
    local r = get("/ui/app.js", { method = "POST", body = "x" })
    assert.are.equal(405, r.status)
    assert.are.equal("GET, HEAD", r.headers.allow)
    assert.are.equal(200, get("/ui/", { method = "HEAD" }).status)
  end)

  it("lets the shell load without a token but every data fetch the console makes needs it", function()
    local run = H.request(srv.url .. "/workflows/noop", { method = "POST", body = "{}" })
    assert.are.equal(200, run.status, run.body)
    local id = run.headers["x-run-id"]
    -- every path app.js reads from
    local reads = { "/admin/runs?status=failed&limit=50", "/admin/dlq", "/admin/outbox", "/admin/breakers",
      "/admin/schedules" }
    local js = get("/ui/app.js").body
    for _, path in ipairs(reads) do
      local base = path:match("^[^?]+")
      assert.is_truthy(js:find('"' .. base, 1, true), "app.js no longer reads " .. base)
      local anon = get(path)
      assert.are.equal(401, anon.status, path)
      assert.are.equal("Bearer", anon.headers["www-authenticate"], path)
      assert.are.equal(401, get(path, { headers = { Authorization = "Bearer wrong" } }).status, path)
      local ok = get(path, { headers = { Authorization = "Bearer s3cret" } })
      assert.are.equal(200, ok.status, path .. ": " .. ok.body)
      assert.are.equal("application/json", ok.headers["content-type"], path)
    end
    -- the run's record (noop has no auth of its own: its id is the capability; the
    -- console sends the admin token anyway)
    assert.are.equal(200, get("/runs/" .. id, { headers = { Authorization = "Bearer s3cret" } }).status)
    -- actions: refused without the token
    assert.are.equal(401, get("/admin/dlq/x/replay", { method = "POST" }).status)
    assert.are.equal(401, get("/admin/dlq/x", { method = "DELETE" }).status)
  end)
end)
