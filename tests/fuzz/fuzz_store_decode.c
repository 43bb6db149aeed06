/* fuzz_store_decode.c — libFuzzer target for what chorus does with the
 * values it reads back from its LMDB data folder.
 *
 * lua/chorus/store.lua keeps run records, journal entries, idempotency
 * records and outbox/DLQ entries as JSON and decodes them with
 * chorus.core.json.decode; recovery (server.lua) and replay
 * (lua/chorus/journal.lua) then trust their shape. A data folder written by
 * an older or newer chorus, a torn or hand-edited record must not crash the
 * process. The input is one stored value; the target decodes it and feeds it,
 * each step in protected mode, through the code that consumes decoded
 * records:
 *   1. chorus.store's readers over a fake LMDB handle that answers every
 *      get and scan with the input (get_run, unfinished, find_runs and
 *      runs_api.list with the input as a run's summary, journal,
 *      the sweep with server.lua's predicates, due_outbox, list_outbox,
 *      list_dlq, replay_dlq);
 *   2. server.dispatch of a POST with an Idempotency-Key whose stored
 *      record is the value (its fingerprint patched in so that it matches),
 *      the server's store being the fake one: the verdict, the replay of
 *      the stored response, or a durable run when the key is new;
 *   3. outbox.deliver on it as a due outbox entry, in a run, as the relay
 *      does (the outbound transport answers with the response recorded in
 *      the value, if any, else 503 with a Retry-After);
 *   4. as a run's journal (a JSON array is the list of entries, anything
 *      else one entry): context.held_locks and reserve_lock as recovery
 *      does, then a run replaying against it with journal.attach — a
 *      workflow making the effects real ones make (now, uuid, random, sleep
 *      on the virtual clock, an HTTP call whose recorded response is
 *      restored, a lock, ctx.later) and one generic journal.effect per
 *      entry — then drop_reservations as the run's end does.
 * A Lua error is fine; these are bugs ("INVARIANT", then abort()): a run
 * that raises out of core.run or stalls (waits forever), server.dispatch
 * raising or answering something that is not a response (a table with an
 * integer status, headers, a string body), held_locks listing a name twice
 * or one no entry locks, a lock still held once its run ended (a new run
 * cannot take it), and a step whose record matches not getting the
 * recorded value back.
 *
 * Found with it (input in tests/fuzz/crashes/fuzz_store_decode/, fixed in
 * e9b22df, now a regression seed): an idempotency record whose stored
 * response had a non-integer status ("oops") was replayed as is, and
 * respond_with (runtime/lua_server.c) raised on it outside any protected
 * call: the error unwound through the event loop and `chorus serve` exited
 * ("chorus: bad argument #-1 (number expected, got string)").
 */
#include <stdint.h>

#include "fuzz_lua.h"

#define TARGET "fuzz_store_decode"
#define FRESH_STATE_EVERY 5000

static lua_State *L;
static unsigned long inputs;

static const char driver[] =
    "local core = require 'chorus.core'\n"
    "local json = core.json\n"
    "local context = require 'chorus.context'\n"
    "local http = require 'chorus.http'\n"
    "local idempotency = require 'chorus.idempotency'\n"
    "local journal = require 'chorus.journal'\n"
    "local outbox = require 'chorus.outbox'\n"
    "local runner = require 'chorus.runner'\n"
    "local server = require 'chorus.server'\n"
    "local store = require 'chorus.store'\n"
    "local T0 = 1767225600\n"
    "local RID = '00000000-0000-4000-8000-0000000f0220' -- 36 characters, like a uuid\n"
    "\n"
    "core.write_log = function() end\n"
    "context.log_sink = function() end\n"
    "outbox.log_sink = function() end\n"
    "core.set_limits({ instructions = 5000000 })\n"
    "core.set_clock('virtual', T0)\n"
    "-- Lua line coverage inside runs too (fuzz_lua.h)\n"
    "local function covered(fn) return function(...) fuzz_cover(); return fn(...) end end\n"
    "local deliver, execute = covered(outbox.deliver), covered(runner.execute)\n"
    "local dispatch = covered(server.dispatch)\n"
    "local execute_in_server = runner.execute -- server.lua calls runner.execute\n"
    "runner.execute = covered(execute_in_server)\n"
    "\n"
    "-- the server, with one workflow, for idempotency records (step 2)\n"
    "server.state.config = { scripts = '/nonexistent/chorus-fuzz-scripts' }\n"
    "local WORKFLOWS = { echo = { workflow = { name = 'echo', run = function(_, input) return "
    "input end },\n"
    "  path = 'echo.lua', hash = 'echo' } }\n"
    "local function keyed_request()\n"
    "  return { method = 'POST', path = '/workflows/echo', headers = { ['idempotency-key'] = "
    "'key-1' },\n"
    "    query = {}, body = '{}' }\n"
    "end\n"
    "local function invariant(ok, what, ...)\n"
    "  if not ok then error('INVARIANT: ' .. what:format(...), 0) end\n"
    "end\n"
    "\n"
    "-- The LMDB handle under chorus.store (runtime/lua_store.c), faked: every\n"
    "-- read answers with the input's bytes, writes go nowhere.\n"
    "local Fake = {}\n"
    "Fake.__index = Fake\n"
    "function Fake:get(db)\n"
    "  return db == 'idempotency' and self.idempotency or self.value\n"
    "end\n"
    "function Fake:scan(db, opts)\n"
    "  local key = RID\n"
    "  if db == 'journal' then\n"
    "    key = ((opts and opts.prefix) or RID) .. string.pack('>I4', 1)\n"
    "  elseif db == 'outbox' then\n"
    "    key = string.pack('>I8', T0 * 1000) .. 'entry-1'\n"
    "  end\n"
    "  return { { key, self.value } }\n"
    "end\n"
    "function Fake:count() return 1 end\n"
    "function Fake:stats() return { commits = 0, failures = 0 } end\n"
    "function Fake.put() end\n"
    "function Fake.del() end\n"
    "function Fake.del_prefix() end\n"
    "function Fake.index() end\n"
    "function Fake:index_list() return { { RID, math.floor(T0 * 1e6), self.value } } end\n"
    "function Fake.commit() end\n"
    "function Fake.close() end\n"
    "\n"
    "local function open_store(value)\n"
    "  local real = core.store_open\n"
    "  core.store_open = function() return setmetatable({ value = value }, Fake) end\n"
    "  local st = store.open('/nonexistent/chorus-fuzz-data')\n"
    "  core.store_open = real\n"
    "  return st\n"
    "end\n"
    "\n"
    "-- The response the outbound transport gives: the recorded one in the\n"
    "-- value if it has one (made into what curl can return), else a 503.\n"
    "local response\n"
    "http.set_transport(function()\n"
    "  return response.status, response.headers, response.body, 0.001\n"
    "end)\n"
    "local function response_of(v)\n"
    "  local r = type(v) == 'table' and (type(v.value) == 'table' and v.value or v.response) or "
    "nil\n"
    "  local out = { status = 503, headers = { ['retry-after'] = '120' }, body = 'busy' }\n"
    "  if type(r) == 'table' then\n"
    "    if math.type(r.status) == 'integer' and r.status >= 100 and r.status <= 599 then\n"
    "      out.status = r.status\n"
    "    end\n"
    "    if type(r.headers) == 'table' then\n"
    "      out.headers = {}\n"
    "      for k, h in pairs(r.headers) do\n"
    "        if type(k) == 'string' and type(h) == 'string' then out.headers[k:lower()] = h end\n"
    "      end\n"
    "    end\n"
    "    if type(r.body) == 'string' then out.body = r.body end\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "\n"
    "-- f(...) in protected mode; a broken invariant still escapes\n"
    "local function try(f, ...)\n"
    "  local ok, v = pcall(f, ...)\n"
    "  if not ok and type(v) == 'string' and v:find('^INVARIANT: ') then error(v, 0) end\n"
    "  if not ok then pcall(tostring, v) end -- error objects have __tostring\n"
    "  return ok and v or nil\n"
    "end\n"
    "\n"
    "-- A workflow that makes the effects real workflows make, in the order of\n"
    "-- the seed journals (r#1 now, r#2 uuid, r#3 random, r#4 sleep, r#5 http,\n"
    "-- r#6 lock, r#7 unlock, r#8 later), then one generic effect per entry.\n"
    "local observed\n"
    "local entries_of_run\n"
    "local replay = { name = 'replay', run = function(ctx)\n"
    "  local out = {}\n"
    "  observed = out\n"
    "  out.now = try(ctx.now)\n"
    "  out.uuid = try(ctx.uuid)\n"
    "  out.n = try(ctx.random, 1, 100)\n"
    "  try(ctx.sleep, 1)\n"
    "  local resp = try(http.post, 'http://upstream.test/pay', { json = { amount = 1 } })\n"
    "  if type(resp) == 'table' then\n"
    "    out.status = resp.status\n"
    "    out.json = try(function() return resp.json end)\n"
    "  end\n"
    "  try(ctx.lock, 'account', function() out.locked = true end)\n"
    "  try(ctx.later, 'followup', { n = 1 })\n"
    "  for i, e in ipairs(entries_of_run) do\n"
    "    if i > 16 then break end\n"
    "    if type(e) == 'table' then\n"
    "      try(journal.effect, e.kind, e.target, function() return true end)\n"
    "    end\n"
    "  end\n"
    "  return out\n"
    "end }\n"
    "\n"
    "local function is_array(v)\n"
    "  return type(v) == 'table' and getmetatable(v) ~= nil and getmetatable(v) == "
    "getmetatable(json.array())\n"
    "end\n"
    "\n"
    "function fuzz_store(value)\n"
    "  pcall(core.set_clock, 'virtual', T0)\n"
    "  outbox.backend = outbox.memory()\n"
    "  local dok, v = pcall(json.decode, value)\n"
    "  if not dok then return end\n"
    "  local entries = is_array(v) and v or { v }\n"
    "  response = response_of(v)\n"
    "\n"
    "  -- 1. the value as each record chorus.store decodes\n"
    "  local st = open_store(value)\n"
    "  try(st.get_run, st, RID)\n"
    "  try(st.unfinished, st)\n"
    "  try(st.find_runs, st, 'a', { limit = 10 })\n"
    "  try(require('chorus.runs_api').list, st, { status = 'failed' })\n"
    "  try(st.journal, st, RID)\n"
    "  if st.sweep then -- the server's sweep predicates (server.lua sweep_loop)\n"
    "    try(st.sweep, st, 'idempotency', nil, 10, function(rec)\n"
    "      return rec.state ~= 'running' and rec.expires_at ~= nil and rec.expires_at <= T0\n"
    "    end)\n"
    "    try(st.sweep, st, 'runs', nil, 10, function(rec)\n"
    "      return rec.status ~= 'running' and rec.finished ~= nil and rec.finished < T0 - 7 * "
    "86400\n"
    "    end)\n"
    "  end\n"
    "  try(st.due_outbox, st, T0 + 1, 10)\n"
    "  try(st.list_outbox, st, 10)\n"
    "  try(st.list_dlq, st, 10)\n"
    "  try(st.replay_dlq, st, 'entry-1', T0)\n"
    "\n"
    "  -- 2. as the idempotency record of a request's key, through\n"
    "  -- server.dispatch (its fingerprint patched in, or it would never match)\n"
    "  local copy = select(2, pcall(json.decode, value))\n"
    "  if type(copy) == 'table' and not is_array(copy) then\n"
    "    copy.fp = idempotency.fingerprint(keyed_request())\n"
    "    st.st.idempotency = select(2, pcall(json.encode, copy))\n"
    "  end\n"
    "  local state = server.state\n"
    "  state.store, state.backend, state.workflows = st, outbox.durable(st), WORKFLOWS\n"
    "  state.runs = server.service(st, state.backend, 16)\n"
    "  local rok, ok, resp = pcall(core.run, nil, dispatch, keyed_request())\n"
    "  state.store = nil\n"
    "  invariant(rok, 'core.run(server.dispatch) raised: %s', tostring(ok))\n"
    "  invariant(ok, 'server.dispatch raised: %s', tostring(resp))\n"
    "  invariant(type(resp) == 'table' and math.type(resp.status) == 'integer' and\n"
    "    type(resp.headers) == 'table' and type(resp.body) == 'string',\n"
    "    'server.dispatch answered a stored response that is no response: status %s',\n"
    "    type(resp) == 'table' and tostring(resp.status) or type(resp))\n"
    "  core.loop()\n"
    "  idempotency.release('echo', 'key-1')\n"
    "\n"
    "  -- 3. as an outbox entry: delivered once, in a run, as the relay does\n"
    "  local decoded = try(st.due_outbox, st, T0 + 1, 1)\n"
    "  if decoded and decoded[1] ~= nil then\n"
    "    local rok, err = pcall(core.run, nil, deliver, outbox.durable(st), decoded[1])\n"
    "    invariant(rok, 'core.run(outbox.deliver) raised: %s', tostring(err))\n"
    "  end\n"
    "\n"
    "  -- 4. as a run's journal: recovery reserves the locks it shows held,\n"
    "  -- the run replays against it, the run's end drops what is left\n"
    "  local hok, held = pcall(context.held_locks, entries)\n"
    "  held = hok and held or {}\n"
    "  local seen = {}\n"
    "  for _, name in ipairs(held) do\n"
    "    invariant(not seen[name], 'held_locks lists %s twice', tostring(name))\n"
    "    seen[name] = true\n"
    "    local taken = false\n"
    "    for _, e in ipairs(entries) do\n"
    "      if e.kind == 'lock' and e.target == name then taken = true end\n"
    "    end\n"
    "    invariant(taken, 'held_locks lists %s, which no entry locks', tostring(name))\n"
    "    context.reserve_lock(name, RID)\n"
    "  end\n"
    "  entries_of_run = entries\n"
    "  observed = nil\n"
    "  local rok, ok, result = pcall(core.run, { id = RID }, execute, replay, {},\n"
    "    { journal = { store = st, recorded = entries } })\n"
    "  invariant(rok, 'core.run(replay) raised: %s', tostring(ok))\n"
    "  context.drop_reservations(RID)\n"
    "  if ok then try(json.encode, result) end\n"
    "  -- a step whose record matches is given the recorded value back\n"
    "  local first\n"
    "  for _, e in ipairs(entries) do\n"
    "    if type(e) == 'table' and e.step == 'r#1' then first = e end\n"
    "  end\n"
    "  if observed and first and first.kind == 'now' and first.target == nil and first.ok == true "
    "then\n"
    "    invariant(rawequal(observed.now, first.value) or observed.now == first.value,\n"
    "      'step r#1 replayed %s, the journal has %s', tostring(observed.now), "
    "tostring(first.value))\n"
    "  end\n"
    "\n"
    "  -- 5. every lock is free again: a new run takes each without waiting\n"
    "  seen.account = true\n"
    "  for name in pairs(seen) do\n"
    "    if type(name) == 'string' and name ~= '' then\n"
    "      local pok, perr = pcall(core.run, nil, function()\n"
    "        context.new({ run_id = core.run_id(), timeline = {} }).lock(name, function() end)\n"
    "      end)\n"
    "      invariant(pok, 'lock %q still held after its run ended: %s', name, tostring(perr))\n"
    "    end\n"
    "  end\n"
    "  core.loop()\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (L == NULL || inputs % FRESH_STATE_EVERY == 0) {
        if (L != NULL)
            lua_close(L);
        L = fuzz_chorus_state();
        fuzz_lua_coverage(L);
        fuzz_setup(L, TARGET, driver);
    }
    inputs++;
    lua_pushlstring(L, (const char *)data, size);
    fuzz_pcall(L, TARGET, "fuzz_store", 1);
    return 0;
}
