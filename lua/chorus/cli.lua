-- chorus.cli — the command line: parses arguments, dispatches, and maps
-- outcomes to exit codes (0 success, 1 the workflow or a script failed,
-- 2 bad usage). Every failure is one line on stderr.
local core = require "chorus.core"
local errors = require "chorus.errors"
local json = core.json

local cli = {}

local Usage = {}

local function usage_error(fmt, ...)
  error(setmetatable({ message = fmt:format(...) }, Usage), 0)
end

local function read_input(text)
  if text == nil then
    return {}
  end
  if text:sub(1, 1) == "@" then
    local f, err = io.open(text:sub(2), "rb")
    if not f then
      usage_error("cannot read --input file: %s", err)
    end
    text = f:read("a") or ""
    f:close()
  end
  local ok, value = pcall(json.decode, text)
  if not ok then
    usage_error("--input is not valid JSON: %s", tostring(value):gsub("^json%.decode: ", ""))
  end
  return value
end

local function load_config(path)
  if not path then
    return {}
  end
  local config = require "chorus.config"
  local conf, err = config.load(path)
  if not conf then
    usage_error("%s", err)
  end
  config.apply(conf)
  return conf
end

local function fail(obj)
  io.stderr:write(require("chorus.secrets").redact(json.encode(obj)), "\n")
  return 1
end

--- chorus run SCRIPT: flags is the parsed command line (chorus.cli_args).
function cli.run(flags)
  local input = read_input(flags.input)
  local conf = load_config(flags.config)
  local script = require "chorus.script"
  local workflow, source = script.load(flags.script)
  if not workflow then
    if source:match("^cannot read script") then
      usage_error("%s", source)
    end
    return fail({ error = { kind = "script", message = source } })
  end
  local outbox = require "chorus.outbox"
  local st
  if flags.data then
    local store = require "chorus.store"
    local err2
    st, err2 = store.open(flags.data)
    if not st then
      return fail({ error = { kind = "store", message = err2 } })
    end
    -- a guest (as open_data's), whose runs a server starting meanwhile
    -- leaves to it while it lives (chorus.store, claim_guest)
    local gok, gerr = st:claim_guest()
    if not gok then
      st:close()
      return fail({ error = { kind = "store", message = tostring(gerr) } })
    end
    -- and, as open_data, the index and the counts of an older folder are
    -- built now; a folder this run creates is marked built: without
    -- meta.held the next server counted it again from the runs alone, and
    -- the outbox entries this run enqueued, left out, were given back as
    -- they went (their workflow's count short for good)
    local ok, ierr = pcall(st.ensure_run_index, st)
    if not ok then
      st:close()
      return fail({ error = { kind = "store", message = tostring(ierr) } })
    end
  end
  -- the run service a server uses (chorus.runs): with --data the run is
  -- recorded, journaled and resumable in the folder as a served one is
  local svc = require("chorus.runs").service({ store = st, config = conf,
    log = function(level, msg, fields)
      if msg ~= "run failed" then -- that one this command prints itself, as JSON
        require("chorus.log").event(level, msg, fields)
      end
    end })
  local entry = { workflow = workflow, path = flags.script, source = source, hash = core.sha256(source) }
  local rok, res = core.run(nil, function()
    local ok, value, rec, _, _, info = svc:start(entry, input)
    if not st and next(svc.backend.entries) then
      outbox.drain(svc.backend) -- no data folder: deliver the outbox now
    end
    return { ok = ok, value = value, id = rec.id, info = info }
  end)
  local ok, value, info = rok and res.ok, rok and res.value or res, rok and res.info or {}
  info.id = rok and res.id or info.id
  if st then
    st:close()
  else
    local mem = svc.backend
    if #mem.delivered + #mem.dead > 0 then
      io.stderr:write(("chorus: outbox: %d delivered, %d dead%s\n"):format(#mem.delivered, #mem.dead,
        #mem.dead > 0 and " (" .. tostring(mem.dead[1].last_error.message) .. ")" or ""))
    end
  end
  if not ok then
    if flags.verbose and info.traceback then
      io.stderr:write(info.traceback, "\n")
    end
    return fail({ error = errors.normalize(value), run_id = info.id })
  end
  local eok, text = pcall(json.encode, value)
  if not eok then
    return fail({ error = { kind = "result", message = "the workflow's result is not JSON: " .. tostring(text) },
      run_id = info.id })
  end
  io.stdout:write(text, "\n")
  return 0
end

function cli.serve(flags)
  local conf = load_config(flags.config)
  conf.listen = flags.listen or conf.listen or "127.0.0.1:8080"
  conf.scripts = flags.scripts or conf.scripts or "./examples"
  conf.data = flags.data or conf.data or "./.chorus-data"
  local port = tonumber(conf.listen:match("^%d+%.%d+%.%d+%.%d+:(%d+)$"))
  if not port or port > 65535 then
    usage_error("--listen must be IPV4:PORT, e.g. 127.0.0.1:8080 (got '%s')", conf.listen)
  end
  local server = require "chorus.server"
  local ok, err = server.serve(conf, function(address)
    io.stdout:write("chorus: listening on http://", address, "\n")
    io.stdout:flush()
  end)
  if not ok then
    io.stderr:write("chorus serve: ", err, "\n")
    return 1
  end
  return 0
end

-- The source with comments and strings blanked (their newlines kept, so
-- line numbers stay right): what `check` looks for must be code.
local function code_only(src)
  local out, i, n = {}, 1, #src
  local function blank(j)
    out[#out + 1] = src:sub(i, j):gsub("[^\n]", "")
    i = j + 1
  end
  while i <= n do
    local long = src:match("^%-%-%[(=*)%[", i) or src:match("^%[(=*)%[", i)
    local c = src:sub(i, i)
    if long then
      local _, close = src:find("]" .. long .. "]", i + 2, true)
      blank(close or n)
    elseif src:sub(i, i + 1) == "--" then
      blank((src:find("\n", i, true) or n + 1) - 1)
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n do
        local d = src:sub(j, j)
        if d == "\\" then
          j = j + 2
        elseif d == c or d == "\n" then
          break
        else
          j = j + 1
        end
      end
      blank(math.min(j, n))
    else
      local j = src:find("[%-%[\"']", i + 1) or n + 1
      out[#out + 1] = src:sub(i, j - 1)
      i = j
    end
  end
  return table.concat(out)
end

-- Whether a call's argument list (with its parentheses) has a time
-- argument: os.time(t) and os.date(fmt, t) are pure conversions.
local function has_time_arg(args, name)
  local inner = args:sub(2, -2):gsub("%b()", "()"):gsub("%b{}", "{}")
  if name == "time" then
    return inner:find("%S") ~= nil
  end
  return inner:find(",") ~= nil
end

-- What a workflow script should not read directly (README "Determinism").
local NONDETERMINISTIC = {
  { "os", "time", "os.time()", "ctx.now()" },
  { "os", "date", "os.date() without a time", "ctx.now()" },
  { "os", "clock", "os.clock()", "ctx.now()" },
  { "math", "randomseed", "math.randomseed()", "ctx.random()" },
  { "math", "random", "math.random()", "ctx.random()" },
}

--- Warnings for the clock and random functions a script's source uses:
--- a list of "LINE: message".
function cli.determinism_warnings(source)
  local code = code_only(source)
  local found = {}
  for _, w in ipairs(NONDETERMINISTIC) do
    local pattern = "()%f[%w_]" .. w[1] .. "%s*%.%s*" .. w[2] .. "%f[^%w_]%s*(%b())"
    local bare = "()%f[%w_]" .. w[1] .. "%s*%.%s*" .. w[2] .. "%f[^%w_]%s*(.?)"
    local calls = {}
    for pos, args in code:gmatch(pattern) do
      calls[pos] = true
      if not has_time_arg(args, w[2]) then
        found[#found + 1] = { pos = pos, w = w }
      end
    end
    for pos, after in code:gmatch(bare) do -- not called here (aliased), or os.time { ... }
      if not calls[pos] and not (after == "{" and w[2] == "time") then
        found[#found + 1] = { pos = pos, w = w }
      end
    end
  end
  table.sort(found, function(a, b) return a.pos < b.pos end)
  local warnings = {}
  for i, f in ipairs(found) do
    local _, newlines = code:sub(1, f.pos):gsub("\n", "")
    local w = f.w
    if w[2] == "randomseed" then
      warnings[i] = ("%d: math.randomseed() always raises in workflow scripts; math.random and %s "
        .. "are journaled"):format(newlines + 1, w[4])
    else
      warnings[i] = ("%d: %s is journaled inside a run and raises at the top level; say what you "
        .. "mean with %s"):format(newlines + 1, w[3], w[4])
    end
  end
  return warnings
end

function cli.check(flags)
  local pos = flags.scripts
  local script = require "chorus.script"
  local failed = 0
  for _, path in ipairs(pos) do
    local workflow, err = script.load(path)
    if workflow then
      io.stdout:write(("ok   %s (workflow %s)\n"):format(path, workflow.name))
    end
    local source = script.read_file(path, "script")
    for _, w in ipairs(source and cli.determinism_warnings(source) or {}) do
      io.stdout:write(("warn %s:%s\n"):format(path, w))
    end
    if not workflow then
      failed = failed + 1
      io.stdout:write(("FAIL %s\n"):format(err))
    end
  end
  if failed > 0 then
    io.stderr:write(("chorus check: %d of %d scripts failed\n"):format(failed, #pos))
    return 1
  end
  return 0
end

local function readable(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
  end
  return f ~= nil
end

-- Where the Lua modules and the C core that busted loads live, for this
-- binary: the checkout it was built in (lua/ and build/lua/ next to it or one
-- up), or the prefix `make install` put it under (PREFIX/bin/chorus,
-- PREFIX/share/lua/5.4/chorus/, PREFIX/lib[/MULTIARCH]/lua/5.4/chorus/core.so,
-- PREFIX/share/chorus/types/). Returns { lpath, cpath, types } or nil.
local function find_root()
  local exe = core.exe() or ""
  local dir = exe:match("^(.*)/[^/]*$") or "."
  local up = dir:match("^(.*)/[^/]*$") or "."
  for _, root in ipairs({ dir, up }) do
    if readable(root .. "/lua/chorus/init.lua") and readable(root .. "/build/lua/chorus/core.so") then
      return { lpath = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua", cpath = root .. "/build/lua/?.so",
        types = root .. "/types" }
    end
  end
  local share = up .. "/share/lua/5.4"
  if not readable(share .. "/chorus/init.lua") then
    return nil
  end
  local cdirs = { up .. "/lib/lua/5.4" }
  for _, ent in ipairs(core.scandir(up .. "/lib") or {}) do
    if ent.dir then
      cdirs[#cdirs + 1] = up .. "/lib/" .. ent.name .. "/lua/5.4"
    end
  end
  for _, cdir in ipairs(cdirs) do
    if readable(cdir .. "/chorus/core.so") then
      return { lpath = share .. "/?.lua;" .. share .. "/?/init.lua", cpath = cdir .. "/?.so",
        types = up .. "/share/chorus/types" }
    end
  end
  return nil
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- What marks a project's folder for `chorus test` without a DIR.
local PROJECT_MARKERS = { ".busted", "chorus.conf.lua", "chorus.config.lua" }

local function cwd()
  local p = io.popen("pwd")
  local dir = p and p:read("l")
  if p then
    p:close()
  end
  return dir or os.getenv("PWD") or "."
end

-- The nearest folder, from the current one up, holding a project marker;
-- returns it and the marker, or nil.
local function find_project()
  local dir = cwd()
  while dir and dir ~= "" do
    for _, marker in ipairs(PROJECT_MARKERS) do
      if readable(dir .. "/" .. marker) then
        return dir, marker
      end
    end
    dir = dir:match("^(.*)/[^/]*$")
  end
  return nil
end

local function is_dir(path)
  return core.scandir(path) ~= nil
end

--- chorus test [DIR | FILE]: the specs of a folder, one spec file, or
--- without an argument the current project's (the nearest folder up with a
--- .busted or a chorus.conf.lua; busted's own .busted then says where its
--- specs are), else the *_spec.lua files of the current folder alone.
function cli.test(flags)
  local target, chdir = flags.target, nil
  if target then
    if not is_dir(target) and not readable(target) then
      usage_error("cannot read the folder '%s'", target)
    end
  else
    local project, marker = find_project()
    if project and marker == ".busted" then
      chdir = project -- busted reads its .busted there: its ROOT names the specs
    elseif project then
      target = project
    else
      local specs = {}
      for _, ent in ipairs(core.scandir(".") or {}) do
        if not ent.dir and ent.name:match("_spec%.lua$") then
          specs[#specs + 1] = shell_quote(ent.name)
        end
      end
      if #specs == 0 then
        usage_error("no project here (no .busted or chorus.conf.lua in this folder or above it) and no "
          .. "*_spec.lua in this folder; pass a DIR or a FILE")
      end
      table.sort(specs)
      target = specs
    end
  end
  local root = find_root()
  if not root then
    io.stderr:write("chorus test: cannot find lua/chorus and build/lua/chorus/core.so next to this binary, ",
      "nor share/lua/5.4/chorus and lib/lua/5.4/chorus/core.so under its prefix; run `make` in the chorus ",
      "checkout, or `make install`\n")
    return 1
  end
  local paths
  if type(target) == "table" then
    paths = table.concat(target, " ")
  elseif target then
    paths = shell_quote(target)
  else
    paths = ""
  end
  local cmd = ("%slua5.4 /usr/bin/busted --ignore-lua --lpath=%s --cpath=%s --pattern=_spec %s"):format(
    chdir and ("cd " .. shell_quote(chdir) .. " && ") or "",
    shell_quote(root.lpath), shell_quote(root.cpath), paths)
  local ok, _, code = os.execute(cmd)
  if ok then
    return 0
  end
  return code ~= 0 and code or 1
end

-- ---- the data folder: runs, outbox, dlq ---------------------------------

-- Opens the data folder of flags; unless as_is, gives a folder an older
-- chorus wrote its runs' index first (chorus.store build_run_index).
local function open_data(flags, as_is)
  local dir = flags.data or "./.chorus-data"
  if not core.scandir(dir) then
    usage_error("no data folder at %s (pass --data DIR, the folder chorus serve uses)", dir)
  end
  local store = require "chorus.store"
  local st, err = store.open(dir)
  if not st then
    error(err, 0)
  end
  -- a server may run on the folder: this process's changes of the counts
  -- go as deltas it folds in (chorus.store, absorb_counts), unless it takes
  -- serve.lock
  st.guest = true
  if not as_is then
    local ok, ierr = pcall(st.ensure_run_index, st)
    if not ok then
      st:close()
      error(ierr, 0)
    end
  end
  return st
end

-- The filter the runs commands' options give (chorus.runs_api), or a usage
-- error naming the option. bulk: --dry-run, and --limit up to 1000.
local function filter_of(flags, bulk)
  local runs_api = require "chorus.runs_api"
  local params = {}
  for _, name in ipairs({ "workflow", "status", "since", "until", "key", "cursor" }) do
    params[name] = flags[name]
  end
  if bulk then
    params.limit = flags.limit
    params.dry_run = flags.dry_run or nil
  end
  local f, name, why = runs_api.parse(params, bulk and runs_api.BULK_FILTERS or nil)
  if not f then
    usage_error("--%s %s", (name:gsub("_", "-")), why)
  end
  return f
end

-- Whether the runs command names runs by filter rather than by ID.
local function by_filter(flags)
  for _, name in ipairs({ "workflow", "status", "since", "until", "key", "cursor", "dry_run" }) do
    if flags[name] then
      return true
    end
  end
  return false
end

local function limit_of(flags)
  local n = tonumber(flags.limit or "100")
  if not n or n < 1 or n ~= math.floor(n) then
    usage_error("--limit must be a positive integer")
  end
  return n
end

local function print_lines(list)
  for _, v in ipairs(list) do
    io.stdout:write(json.encode(v), "\n")
  end
end

-- A bulk action of the CLI: act(run id) on each run the filters f find
-- (chorus.runs_api.bulk), in a run (the store commits from a task); prints
-- the counts, closes the store and returns the exit code.
local function bulk(st, f, act)
  local ok, out = core.run(nil, function() return require("chorus.runs_api").bulk(st, f, act) end)
  st:close()
  if not ok then
    return fail({ error = errors.normalize(out) })
  end
  io.stdout:write(json.encode(out), "\n")
  return 0
end

-- `chorus runs redrive ID`: runs a failed run again here, in this process,
-- when no `chorus serve` holds the data folder (its lock); with a server
-- running, POST /admin/runs/ID/redrive asks it instead (two processes must
-- not run the same run). --config is the server's config file: the run
-- needs its upstreams. Prints the run's record; exit 0 when it succeeded.
local function runs_redrive(id, flags)
  if id and by_filter(flags) then
    usage_error("give a run ID or filters, not both")
  elseif not id and not by_filter(flags) then
    usage_error("give a run ID, or filters (--status failed --workflow NAME ...)")
  end
  local conf = load_config(flags.config)
  local st = open_data(flags)
  local lok, lerr = st:lock(0)
  if not lok then
    st:close()
    return fail({ error = { kind = "busy", message = tostring(lerr)
      .. "; ask that server: POST /admin/runs/" .. (id and id .. "/redrive" or "redrive") } })
  end
  local server = require "chorus.server"
  if not id then -- each failed run the filters find, one after the other, to its end
    local f = filter_of(flags, true)
    f.status = f.status or "failed"
    return bulk(st, f, function(rid)
      local resp, _, refused = server.redrive_local(conf, st, rid)
      if refused then
        local dok, body = pcall(json.decode, resp.body)
        return false, dok and type(body) == "table" and body.detail or resp.status
      end
      return true
    end)
  end
  -- core.run gives back one value: the three come in a table
  local ok, out = core.run(nil, function() return { server.redrive_local(conf, st, id) } end)
  st:close()
  if not ok then
    return fail({ error = errors.normalize(out), run_id = id })
  end
  local resp, text = out[1], out[2]
  if not text then -- refused: the problem says why
    io.stderr:write(resp.body, "\n")
    return 1
  end
  io.stdout:write(text, "\n")
  return resp.status < 400 and 0 or 1
end

-- `chorus runs cancel ID`: with no `chorus serve` holding the data folder,
-- marks the unfinished run cancelled in its record: the next start resumes
-- it and cancels it after its replay (its sagas compensate, on_cancel
-- runs). A server that holds the folder is asked instead: DELETE /runs/ID.
local function runs_cancel(id, flags)
  if id and by_filter(flags) then
    usage_error("give a run ID or filters, not both")
  elseif not id and not by_filter(flags) then
    usage_error("give a run ID, or filters (--status running --workflow NAME ...)")
  end
  local st = open_data(flags)
  local lok, lerr = st:lock(0)
  if not lok then
    st:close()
    return fail({ error = { kind = "busy", message = tostring(lerr)
      .. "; ask that server: " .. (id and "DELETE /runs/" .. id or "POST /admin/runs/cancel") } })
  end
  local svc = require("chorus.runs").service({ store = st, log = function() end })
  if not id then -- each running run the filters find
    local f = filter_of(flags, true)
    f.status = f.status or "running"
    return bulk(st, f, function(rid)
      local rec, _, why = svc:cancel(rid, "cli")
      return rec ~= nil, why
    end)
  end
  -- core.run: the store commits from inside a task; one value comes back
  local ok, out = core.run(nil, function() return { svc:cancel(id, "cli") } end)
  st:close()
  if not ok then
    return fail({ error = errors.normalize(out), run_id = id })
  end
  local rec, refusal, why = out[1], out[2], out[3]
  if not rec then
    return fail({ error = { kind = refusal, message = why }, run_id = id })
  end
  io.stdout:write(json.encode({ run_id = id, status = "cancelling", cancel = rec.cancel,
    message = "the run is cancelled when chorus serve next starts on this data folder" }), "\n")
  return 0
end

-- What an outbox or DLQ entry is for, in one string.
local function target_of(e)
  if e.kind == "workflow" then
    return e.workflow
  elseif e.kind == "http" and type(e.request) == "table" then
    local r = e.request
    return ("%s %s"):format(r.method, r.upstream and r.path and (r.upstream .. ":" .. r.path) or r.url)
  elseif e.kind == "chain" then
    return "chain " .. tostring(e.name)
  end
  return nil
end

-- The listed fields of entries (README: id, kind, target, due, attempts,
-- last_error; created, and failed_at and replayed for the DLQ), newest
-- first (by `when`), at most limit. The entry's data (input, request body)
-- is not listed: GET /admin/outbox shows it, masked.
local function entry_lines(list, when, limit)
  table.sort(list, function(a, b)
    local ta, tb = tonumber(when(a)) or 0, tonumber(when(b)) or 0
    if ta ~= tb then
      return ta > tb
    end
    return tostring(a.id) < tostring(b.id)
  end)
  local out = {}
  for i = 1, math.min(limit, #list) do
    local e = list[i]
    out[i] = { id = e.id, kind = e.kind, target = target_of(e), due = e.due, attempts = e.attempts,
      last_error = e.last_error, created = e.created, failed_at = e.failed_at, replayed = e.replayed }
  end
  return out
end

-- `chorus runs list`: the runs the filters find, newest first, from the
-- runs' index (as GET /admin/runs, a page of up to 1000 at a time), each as
-- GET /admin/runs lists it plus started (= started_at), duration and a
-- scheduled run's slot. When --limit stops it before the end, the cursor
-- to go on from is said on stderr.
local function runs_list(flags)
  local runs_api = require "chorus.runs_api"
  local f, left = filter_of(flags), limit_of(flags)
  local st = open_data(flags)
  local ok, err = pcall(function()
    repeat
      f.limit = math.min(left, runs_api.MAX_LIMIT)
      local rows, next_cursor = runs_api.page(st, f)
      for _, row in ipairs(rows) do
        local s = row.summary
        s.started = s.started_at
        io.stdout:write(json.encode(s), "\n")
      end
      left = left - #rows
      f.cursor = next_cursor and runs_api.parse({ cursor = next_cursor }).cursor
      if next_cursor and left == 0 then
        io.stderr:write(("chorus: more runs: --cursor %s\n"):format(next_cursor))
      end
    until not next_cursor or left == 0
  end)
  st:close()
  if not ok then
    error(err, 0)
  end
  return 0
end

function cli.runs(flags)
  local sub, id = flags.subcommand, flags.id
  if sub == "list" then
    return runs_list(flags)
  elseif sub == "redrive" then
    return runs_redrive(id, flags)
  elseif sub == "cancel" then
    return runs_cancel(id, flags)
  end
  do -- show
    local st = open_data(flags)
    local text = st:get_run_text(id)
    local entries = text and st:deliveries(id)
    st:close()
    if not text then
      io.stderr:write(("chorus: no run with id '%s'\n"):format(id))
      return 1
    end
    local ok, rec = pcall(core.json.decode, text)
    if ok and type(rec) == "table" and rec.redact then -- a running run's record holds its input whole
      text = core.json.encode(require("chorus.redact").fields(rec, rec.redact, { "input", "result", "error" }))
    end
    -- the outbox entries the run enqueued, as they stand now (as GET /runs/ID)
    text = require("chorus.deliveries").add_to_record(text, entries)
    io.stdout:write(text, "\n")
    return 0
  end
end

-- `chorus schedules list`: the schedules the server stored (chorus.scheduler),
-- each with its next slot and its last run's status now.
function cli.schedules(flags) -- its one subcommand: list
  local st = open_data(flags)
  local scheduler = require "chorus.scheduler"
  local names, stored = {}, st:schedules()
  for name in pairs(stored) do
    names[#names + 1] = name
  end
  table.sort(names)
  local list, now = {}, core.now()
  for i, name in ipairs(names) do
    list[i] = scheduler.view(name, stored[name], now, function(id)
      return id and scheduler.status_of_record(st:get_run_text(id))
    end)
  end
  st:close()
  print_lines(list)
  return 0
end

function cli.outbox(flags) -- its one subcommand: list
  local limit = limit_of(flags)
  local st = open_data(flags)
  local list = st:list_outbox()
  st:close()
  print_lines(entry_lines(list, function(e) return e.created or e.due end, limit))
  return 0
end

function cli.dlq(flags)
  local sub, id = flags.subcommand, flags.id
  if sub == "list" then
    local limit = limit_of(flags)
    local st = open_data(flags)
    local list = st:list_dlq()
    st:close()
    print_lines(entry_lines(list, function(e) return e.failed_at or e.created end, limit))
    return 0
  end
  do -- replay or drop
    local st = open_data(flags)
    local found
    if sub == "replay" then
      found = st:replay_dlq(id, core.now())
    else
      found = st:get_dlq(id)
      if found then
        st:del_dlq(id, found)
      end
    end
    st:close() -- commits the queued writes
    if not found then
      io.stderr:write(("chorus: no DLQ entry with id '%s'\n"):format(id))
      return 1
    end
    io.stdout:write(("%s %s\n"):format(sub == "replay" and "replayed" or "dropped", id))
    return 0
  end
end

-- Checks every record of the data folder: prints the records per database
-- and each bad one (database, key, why); exit 0 when all are good, 1 when
-- any is corrupt.
function cli.data(flags) -- its one subcommand: verify
  local st = open_data(flags, true) -- read as it is
  local ok, report = pcall(st.verify, st)
  st:close()
  if not ok then
    error(report, 0)
  end
  local names, total = {}, 0
  for name, n in pairs(report.counts) do
    names[#names + 1] = name
    total = total + n
  end
  table.sort(names)
  for _, name in ipairs(names) do
    io.stdout:write(("%-12s %d\n"):format(name, report.counts[name]))
  end
  for _, b in ipairs(report.bad) do
    io.stdout:write("BAD ", b.message, "\n")
  end
  local dir = flags.data or "./.chorus-data"
  if #report.bad > 0 then
    io.stderr:write(("chorus data verify: %d corrupt record%s in %s\n"):format(#report.bad,
      #report.bad == 1 and "" or "s", dir))
    return 1
  end
  io.stdout:write(("ok: %d records in %s, every checksum and JSON value good\n"):format(total, dir))
  return 0
end

function cli.version()
  io.stdout:write("chorus ", core.version, " (", _VERSION, ")\n")
  return 0
end

--- chorus init DIR: a new project (chorus.project).
function cli.init(flags)
  local project = require "chorus.project"
  local created, err = project.create(flags.dir, { types = (find_root() or {}).types })
  if not created then
    usage_error("%s", err)
  end
  for _, path in ipairs(created) do
    io.stdout:write("created ", path, "\n")
  end
  io.stdout:write("\nnext:\n", project.next_steps(flags.dir), "\n")
  return 0
end

local COMMANDS = { run = cli.run, serve = cli.serve, check = cli.check, test = cli.test, init = cli.init,
  runs = cli.runs, outbox = cli.outbox, dlq = cli.dlq, data = cli.data, version = cli.version,
  schedules = cli.schedules }

-- The command line's grammar needs lua-argparse, from the system Lua path.
local function load_argparse()
  local ok, argparse = pcall(require, "argparse")
  if not ok then
    error("the Lua module 'argparse' is missing (Debian: apt-get install lua-argparse, or make deps)", 0)
  end
  return argparse
end

local function usage(message, command)
  io.stderr:write("chorus: ", message, " (see 'chorus ", command and (command .. " ") or "", "--help')\n")
  return 2
end

-- Parses argv and runs its command; returns the exit status.
local function dispatch(argv)
  local cli_args = require "chorus.cli_args"
  local outcome, result, grammar = cli_args.parse(load_argparse(), argv)
  if outcome == "help" then
    io.stdout:write(result, "\n")
    return 0
  elseif outcome == "usage" then
    return usage(result, grammar)
  end
  local cmd = result.command
  if not cmd then
    if result.version then
      return cli.version()
    end
    usage_error("no command given")
  elseif cmd == "help" then
    local text = cli_args.help(grammar, result.topic)
    if not text then
      usage_error("unknown command '%s'", result.topic)
    end
    io.stdout:write(text, "\n")
    return 0
  elseif cmd == "completion" then
    io.stdout:write(cli_args.completion(grammar, result.shell))
    return 0
  end
  local ok, status = pcall(COMMANDS[cmd], result)
  if not ok and getmetatable(status) == Usage then
    return usage(status.message, cmd)
  end
  return ok and status or error(status, 0)
end

--- Entry point from main.c: returns the process exit status.
function cli.main(argv)
  local ok, status = pcall(dispatch, argv)
  if ok then
    return status
  end
  if getmetatable(status) == Usage then
    return usage(status.message)
  end
  io.stderr:write("chorus: ", tostring(status), "\n")
  return 1
end

return cli
