/* fuzz_request.c — libFuzzer target for the request-to-run path: what
 * lua/chorus/server.lua does with an inbound HTTP request.
 *
 * runtime/lua_server.c turns each request into a Lua table { method, path,
 * headers = { lowercase name = value }, query, body } and runs
 * server.dispatch(req) as a run; everything in it is untrusted. This target
 * reads the input as a small HTTP/1.1 request:
 *
 *   METHOD SP TARGET [SP ...] LF        TARGET = path [? k=v&k=v ...]
 *   Name: value LF                      any number of header lines
 *   LF                                  then the body, raw bytes
 *
 * with MHD's conventions (percent-decoding of path and query, C strings cut
 * at a NUL byte, header names lowercased as lua_server.c's set_kv does, the
 * last of repeated headers winning), then calls, each in protected mode:
 *   - the pure parsers start_workflow uses: chorus.idempotency.parse on the
 *     Idempotency-Key header, .fingerprint on the request and
 *     chorus.core.json.decode on the body;
 *   - server.dispatch itself, as a run on the chorus core (core.run, on the
 *     virtual clock, with no network: the outbound transport always fails),
 *     against a few in-memory workflows: echo (returns its input, so the
 *     body also shapes the response: {status=, headers=, json=|body=}),
 *     fail (raises its input), strict (requires an idempotency key), effects
 *     (now, uuid, random, step, log, lock, an HTTP call, a webhook) and slow
 *     (times out after sleeping what the input says). The admin endpoints
 *     have a token ("Authorization: Bearer fuzz-admin-token") and there is
 *     no data folder.
 * A Lua error is fine; these are bugs ("INVARIANT", then abort()):
 *   - parse returns a key that is empty, longer than 255 bytes or not
 *     printable ASCII, or fails without saying why;
 *   - the fingerprint is not 64 lowercase hex digits or not deterministic;
 *   - dispatch raises, stalls, or returns something that is not a response
 *     as lua_server.c documents a handler's (a table with an integer status,
 *     a headers table, a string body);
 *   - once every run has ended, the request's idempotency key is still in
 *     flight (every later request with it would get 409), or the run's
 *     record was not finished as JSON text with a valid trace id.
 *
 * Found with it (inputs in tests/fuzz/crashes/fuzz_request/, fixed in
 * e9b22df, now regression seeds): a workflow error errors.normalize could
 * not make JSON-safe (an array, NaN or infinity) made finish_record raise,
 * so run_end never ran: the record stayed a table, the key stayed in flight.
 */
#include <ctype.h>
#include <stdint.h>

#include "fuzz_lua.h"

#define TARGET "fuzz_request"
#define FRESH_STATE_EVERY 2000 /* metrics labels and records grow otherwise */

static lua_State *L;
static unsigned long inputs;

static const char driver[] =
    "local core = require 'chorus.core'\n"
    "local json = core.json\n"
    "local context = require 'chorus.context'\n"
    "local http = require 'chorus.http'\n"
    "local idempotency = require 'chorus.idempotency'\n"
    "local outbox = require 'chorus.outbox'\n"
    "local runner = require 'chorus.runner'\n"
    "local server = require 'chorus.server'\n"
    "local T0 = 1767225600\n"
    "\n"
    "core.write_log = function() end -- quiet: server.lua logs every request\n"
    "context.log_sink = function() end\n"
    "outbox.log_sink = function() end\n"
    "http.set_transport(function() return nil, 'connect', 'fuzz: no network', 0.001 end)\n"
    "core.set_limits({ instructions = 5000000 })\n"
    "core.set_clock('virtual', T0)\n"
    "-- Lua line coverage inside runs too (fuzz_lua.h)\n"
    "local execute = runner.execute\n"
    "runner.execute = function(...) fuzz_cover(); return execute(...) end\n"
    "local function dispatch(req) fuzz_cover(); return server.dispatch(req) end\n"
    "\n"
    "local function invariant(ok, what, ...)\n"
    "  if not ok then error('INVARIANT: ' .. what:format(...), 0) end\n"
    "end\n"
    "\n"
    "local function entry(name, run, extra)\n"
    "  local wf = { name = name, run = run }\n"
    "  for k, v in pairs(extra or {}) do wf[k] = v end\n"
    "  return { workflow = wf, path = name .. '.lua', hash = name }\n"
    "end\n"
    "local workflows = {\n"
    "  echo = entry('echo', function(_, input) return input end),\n"
    "  fail = entry('fail', function(_, input) error(input, 0) end),\n"
    "  strict = entry('strict', function() return { status = 201, json = { ok = true } } end,\n"
    "    { idempotency = { required = true, ttl = 60 } }),\n"
    "  effects = entry('effects', function(ctx, input)\n"
    "    local out = { now = ctx.now(), id = ctx.uuid(), n = ctx.random(1, 6) }\n"
    "    ctx.step('check', function() return ctx.key('a') end)\n"
    "    ctx.log.info('input', type(input) == 'table' and input or { input = input })\n"
    "    ctx.lock('account', function() out.locked = true end)\n"
    "    out.call = pcall(http.post, 'http://upstream.test/pay', { json = input })\n"
    "    return out\n"
    "  end),\n"
    "  slow = entry('slow', function(ctx, input)\n"
    "    if type(input) == 'table' and type(input.sleep) == 'number' then ctx.sleep(input.sleep) "
    "end\n"
    "    return { slept = true }\n"
    "  end, { timeout = 5, on_timeout = function(ctx) ctx.log.warn('timed out') end }),\n"
    "}\n"
    "\n"
    "local function check_key(value)\n"
    "  local key, err = idempotency.parse(value)\n"
    "  if key ~= nil then\n"
    "    invariant(type(key) == 'string' and #key >= 1 and #key <= idempotency.MAX_LENGTH\n"
    "      and not key:find('[^\\33-\\126 ]') and err == nil, 'idempotency.parse(%q) gave %q',\n"
    "      value, tostring(key))\n"
    "  elseif value ~= nil then\n"
    "    invariant(type(err) == 'string', 'idempotency.parse(%q) failed without a reason', value)\n"
    "  end\n"
    "  return key\n"
    "end\n"
    "\n"
    "local function check_response(resp)\n"
    "  invariant(type(resp) == 'table', 'dispatch returned a %s', type(resp))\n"
    "  invariant(math.type(resp.status) == 'integer', 'response status %s is not an integer',\n"
    "    tostring(resp.status))\n"
    "  invariant(type(resp.headers) == 'table', 'response headers are a %s', type(resp.headers))\n"
    "  invariant(type(resp.body) == 'string', 'response body is a %s', type(resp.body))\n"
    "end\n"
    "\n"
    "function fuzz_request(req)\n"
    "  -- a clean server: no records, outbox or clock left by earlier inputs\n"
    "  local state = server.state\n"
    "  state.config = { admin_token = 'fuzz-admin-token', webhook_secret = 'fuzz-secret',\n"
    "    scripts = '/nonexistent/chorus-fuzz-scripts' }\n"
    "  state.workflows, state.backend = workflows, outbox.memory()\n"
    "  state.runs = server.service(nil, state.backend, 16)\n"
    "  pcall(core.set_clock, 'virtual', T0)\n"
    "\n"
    "  local key = check_key(req.headers['idempotency-key'])\n"
    "  local fp = idempotency.fingerprint(req)\n"
    "  invariant(type(fp) == 'string' and #fp == 64 and not fp:find('[^0-9a-f]'),\n"
    "    'fingerprint %s is not 64 lowercase hex digits', tostring(fp))\n"
    "  local copy = { method = req.method, path = req.path, body = req.body, query = {},\n"
    "    headers = { ['callback-url'] = req.headers['callback-url'],\n"
    "      ['content-type'] = req.headers['content-type'] } }\n"
    "  for k, v in pairs(req.query) do copy.query[k] = v end\n"
    "  invariant(fp == idempotency.fingerprint(copy), 'fingerprint is not deterministic')\n"
    "  pcall(json.decode, req.body)\n"
    "\n"
    "  local rok, ok, resp = pcall(core.run, nil, dispatch, req)\n"
    "  invariant(rok, 'core.run(server.dispatch) raised: %s', tostring(ok))\n"
    "  invariant(ok, 'server.dispatch raised: %s', tostring(resp))\n"
    "  check_response(resp)\n"
    "  core.loop() -- let an async (Prefer: respond-async) run finish too\n"
    "\n"
    "  local name = req.path:match('^/workflows/([^/]+)$')\n"
    "  if not (name and workflows[name] and req.method == 'POST') then return end\n"
    "  if key then\n"
    "    invariant(idempotency.check(nil, name, key, fp) ~= 'conflict',\n"
    "      'idempotency key %q still in flight after its run ended', key)\n"
    "  end\n"
    "  -- the run of this request has ended: its record is final JSON text\n"
    "  local id = next(state.runs.running)\n"
    "  invariant(id == nil, 'run %s ended but its record is still a running one', tostring(id))\n"
    "  id = resp.headers['X-Run-Id']\n"
    "  local text = id and state.runs.finished:get(id)\n"
    "  invariant(id == nil or text, 'X-Run-Id %s names no record', tostring(id))\n"
    "  if text then\n"
    "    local rec = json.decode(text)\n"
    "    local st = rec.status\n"
    "    invariant(st == 'succeeded' or st == 'failed' or st == 'timed_out' or\n"
    "      st == 'compensated', 'finished record has status %s', tostring(st))\n"
    "    invariant(type(rec.trace_id) == 'string' and #rec.trace_id == 32 and\n"
    "      not rec.trace_id:find('[^0-9a-f]') and rec.trace_id ~= ('0'):rep(32),\n"
    "      'record has trace id %s', tostring(rec.trace_id))\n"
    "  end\n"
    "end\n";

static int hexval(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Pushes s[0..n) percent-decoded and cut at the first NUL, as MHD hands
 * the path and query arguments over. */
static void push_decoded(const char *s, size_t n) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            c = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
            i += 2;
        }
        if (c == '\0')
            break;
        luaL_addchar(&b, (char)c);
    }
    luaL_pushresult(&b);
}

/* Pushes s[0..n) cut at the first NUL: headers reach Lua as C strings. */
static void push_cstring(const char *s, size_t n) { lua_pushlstring(L, s, strnlen(s, n)); }

/* The next line of [*p, end) without its LF (and CR); advances *p. */
static size_t next_line(const char **p, const char *end, const char **line) {
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    const char *stop = nl ? nl : end;
    *line = *p;
    *p = nl ? nl + 1 : end;
    if (stop > *line && stop[-1] == '\r')
        stop--;
    return (size_t)(stop - *line);
}

/* query k=v&k=v into the table at the top */
static void push_query(const char *q, size_t n) {
    const char *end = q + n;
    lua_newtable(L);
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q)), *stop = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        if (stop > q) {
            push_decoded(q, (size_t)((eq ? eq : stop) - q));
            if (eq)
                push_decoded(eq + 1, (size_t)(stop - eq - 1));
            else
                lua_pushliteral(L, "");
            if (lua_rawlen(L, -2) > 0)
                lua_rawset(L, -3);
            else
                lua_pop(L, 2);
        }
        q = amp ? amp + 1 : end;
    }
}

static void push_headers(const char **p, const char *end) {
    lua_newtable(L);
    for (;;) {
        const char *line, *colon, *v, *ve;
        size_t n;
        char name[256];
        if (*p >= end)
            return;
        n = next_line(p, end, &line);
        if (n == 0)
            return; /* the blank line: the body follows */
        colon = memchr(line, ':', n);
        if (colon == NULL || colon == line || (size_t)(colon - line) >= sizeof name)
            continue; /* MHD would refuse the request; skip the line */
        for (size_t i = 0; i < (size_t)(colon - line); i++)
            name[i] = (char)tolower((unsigned char)line[i]);
        name[colon - line] = '\0';
        if (strlen(name) == 0)
            continue;
        v = colon + 1;
        ve = line + n;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        push_cstring(v, (size_t)(ve - v));
        lua_setfield(L, -2, name);
    }
}

static void push_request(const uint8_t *data, size_t size) {
    const char *p = (const char *)data, *end = p + size, *line, *sp, *target, *tend, *qm;
    size_t n = next_line(&p, end, &line);
    lua_createtable(L, 0, 5);
    sp = memchr(line, ' ', n);
    push_cstring(line, sp ? (size_t)(sp - line) : n);
    lua_setfield(L, -2, "method");
    target = sp ? sp + 1 : line + n;
    tend = memchr(target, ' ', (size_t)(line + n - target));
    if (tend == NULL)
        tend = line + n;
    qm = memchr(target, '?', (size_t)(tend - target));
    push_decoded(target, (size_t)((qm ? qm : tend) - target));
    lua_setfield(L, -2, "path");
    if (qm)
        push_query(qm + 1, (size_t)(tend - qm - 1));
    else
        lua_newtable(L);
    lua_setfield(L, -2, "query");
    push_headers(&p, end);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, p, (size_t)(end - p));
    lua_setfield(L, -2, "body");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (L == NULL || inputs % FRESH_STATE_EVERY == 0) {
        if (L != NULL)
            lua_close(L);
        L = fuzz_chorus_state();
        fuzz_lua_coverage(L);
        fuzz_setup(L, TARGET, driver);
    }
    inputs++;
    push_request(data, size);
    fuzz_pcall(L, TARGET, "fuzz_request", 1);
    return 0;
}
