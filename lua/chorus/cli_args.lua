-- chorus.cli_args — the command line's grammar, on lua-argparse (Debian's
-- lua-argparse, found on the system Lua path, not embedded): every command
-- with its options and help text, and the shell completion scripts argparse
-- derives from them. Parsing never ends the process: argparse's own help
-- flag calls os.exit, ours prints and stops the parse, so chorus.cli maps
-- every outcome to an exit status itself.
local cli_args = {}

-- Options that take a value take the next word whatever it starts with:
-- `--input -1` is JSON, where argparse would read "-1" as an option.
local VALUE_OPTIONS = { ["--input"] = true, ["--config"] = true, ["--data"] = true, ["--scripts"] = true,
  ["--listen"] = true, ["--limit"] = true, ["--workflow"] = true, ["--status"] = true, ["--since"] = true,
  ["--until"] = true, ["--key"] = true, ["--cursor"] = true }

local function join_values(argv)
  local out, i = {}, 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      table.move(argv, i, #argv, #out + 1, out)
      break
    elseif VALUE_OPTIONS[a] and argv[i + 1] ~= nil then
      out[#out + 1] = a .. "=" .. argv[i + 1]
      i = i + 2
    else
      out[#out + 1] = a
      i = i + 1
    end
  end
  return out
end

local STOP = "chorus.cli_args: help shown"

local DESCRIPTION = "Runs Lua workflow scripts: one from the command line (run), or each behind an HTTP "
  .. "endpoint with durable runs, an outbox and a DLQ (serve)."

local EPILOG = [[Exit status: 0 success; 1 the workflow, a script or a check failed; 2 bad usage.
'chorus COMMAND --help' shows a command's options.]]

local DATA_HELP = "The data folder chorus serve uses (default ./.chorus-data)."
local CONFIG_HELP = "The config file (a Lua file returning a table)."

local DATA_OPTIONS = {
  { name = "data", argname = "DIR", help = DATA_HELP },
  { name = "limit", argname = "N", help = "At most N (default 100)." },
  { name = "config", argname = "FILE", help = CONFIG_HELP },
}

-- Builds the parser; state.help gets the help text -h/--help asked for,
-- state.commands the top-level commands by name.
local function build(argparse, state)
  state.commands = {}
  local function with_help(cmd)
    cmd:add_help(false)
    cmd:flag("-h --help"):description("Show this help and exit."):action(function()
      state.help = cmd:get_help()
      error(STOP, 0)
    end)
    return cmd
  end

  local p = with_help(argparse("chorus", DESCRIPTION):epilog(EPILOG))
  state.parser = p
  p:command_target("command")
  p:require_command(false) -- `chorus --version`; no command at all is refused in chorus.cli
  p:flag("--version"):description("Print the version and exit.")
  p:help_max_width(100)

  local function command(parent, name, summary, description)
    local cmd = with_help(parent:command(name, description or summary))
    cmd:summary(summary)
    cmd:target("cmd_" .. name) -- commands and options share the result table: `data` is both
    if parent == state.parser then
      state.commands[name] = cmd
    end
    return cmd
  end

  local run = command(p, "run", "Run one workflow script and print its result as JSON.",
    "Run one workflow script and print its result as one line of JSON (exit 0); a failed run prints "
      .. "{\"error\":...} on stderr (exit 1).")
  run:argument("script", "The workflow script (ends with return chorus.workflow { ... }).")
  run:option("--input", "The run's input: JSON text, or @FILE to read it from FILE (default {})."):argname("JSON")
  run:option("--config", CONFIG_HELP):argname("FILE")
  run:option("--data", "Record and journal the run in this data folder, as chorus serve would.")
    :argname("DIR")
  run:flag("--verbose", "On failure, also print the Lua traceback.")

  local serve = command(p, "serve", "Serve the workflows of a folder over HTTP.",
    "Serve the workflows of a folder over HTTP (POST /workflows/NAME). Prints 'chorus: listening on "
      .. "http://HOST:PORT' on stdout and JSON-lines logs on stderr.")
  serve:option("--config", CONFIG_HELP):argname("FILE")
  serve:option("--scripts", "The folder of workflow scripts (default ./examples)."):argname("DIR")
  serve:option("--data", DATA_HELP):argname("DIR")
  serve:option("--listen", "The address to listen on (default 127.0.0.1:8080; port 0 picks one).")
    :argname("HOST:PORT")

  local check = command(p, "check", "Load workflow scripts without running them.",
    "Load workflow scripts without running them: prints 'ok', 'warn' (clock or random reads) or "
      .. "'FAIL' per script; exit 1 when any fails.")
  check:argument("scripts", "The workflow scripts."):args("+"):argname("SCRIPT")

  local test = command(p, "test", "Run the specs of a folder, a spec file or the current project.",
    "Run busted specs with the runtime's paths: those of DIR, one spec FILE, or without an argument "
      .. "the current project's (the nearest folder up with a .busted or a chorus.conf.lua).")
  test:argument("target", "A folder of *_spec.lua files, or one spec file."):args("?"):argname("DIR|FILE")

  local init = command(p, "init", "Create a new project: a workflow, its spec and a config.",
    "Create DIR (missing or empty) with a workflow calling an upstream, its spec, a .busted, a "
      .. "chorus.conf.lua and editor and luacheck settings; 'chorus test' passes there at once.")
  init:argument("dir", "The project folder to create."):argname("DIR")

  -- runs, outbox and dlq take --data, --limit and --config anywhere, as
  -- they always have (scripts pass the three to each); where one means
  -- nothing it is accepted and hidden from the help. Before the subcommand
  -- they land in DATA_EARLY's targets (a parent's option of the same target
  -- would be reset when argparse enters the subcommand).
  local function data_options(cmd, wanted, early)
    for _, o in ipairs(DATA_OPTIONS) do
      local opt = cmd:option("--" .. o.name, wanted[o.name] or o.help):argname(o.argname)
      if early then
        opt:target(o.name .. "_early"):hidden(true)
      elseif not wanted[o.name] then
        opt:hidden(true)
      end
    end
  end

  -- the filters of GET /admin/runs (chorus.runs_api); bulk: the dry run too
  local function filter_options(cmd, bulk)
    cmd:option("--workflow", "Only runs of this workflow."):argname("NAME")
    cmd:option("--status", "Only runs in this status (running, succeeded, failed, timed_out, compensated, "
      .. "cancelled)."):argname("STATUS")
    cmd:option("--since", "Only runs started at or after T (unix seconds or RFC 3339)."):argname("T")
    cmd:option("--until", "Only runs started before T (unix seconds or RFC 3339)."):argname("T")
    cmd:option("--key", "Only runs of this idempotency key."):argname("KEY")
    cmd:option("--cursor", "Go on from where the previous listing stopped (it prints the cursor on stderr).")
      :argname("CURSOR")
    if bulk then
      cmd:flag("--dry-run", "Only count the runs it would act on: {\"count\":N}.")
    end
  end

  local runs = command(p, "runs", "List, show, redrive and cancel the runs of a data folder.")
  runs:command_target("subcommand")
  data_options(runs, {}, true)
  local runs_list = command(runs, "list", "One JSON line per run, newest first, by filter.")
  data_options(runs_list, { limit = "At most N runs (default 100).", data = DATA_HELP })
  filter_options(runs_list)
  local runs_show = command(runs, "show", "The run's whole record, with the outbox entries it enqueued.")
  runs_show:argument("id", "The run id."):argname("ID")
  data_options(runs_show, { data = DATA_HELP })
  local redrive = command(runs, "redrive", "Run a failed run again in this process (or each a filter finds).",
    "Run a failed run again in this process, to its end, when no chorus serve holds the data folder; "
      .. "prints its record (exit 0 when it succeeded). Without ID, each failed run the filters find "
      .. "(at most --limit, 1000), one after the other; prints {\"done\":N,\"skipped\":N,...}.")
  redrive:argument("id", "The run id."):argname("ID"):args("?")
  data_options(redrive, { config = "The server's config file (the run needs its upstreams).", data = DATA_HELP,
    limit = "At most N runs (1 to 1000, default 1000)." })
  filter_options(redrive, true)
  local cancel = command(runs, "cancel", "Cancel an unfinished run (or each a filter finds) at the next start.",
    "Mark an unfinished run cancelled when no chorus serve holds the data folder: the next start resumes it "
      .. "and cancels it (a running server is asked with DELETE /runs/ID). Without ID, each running run the "
      .. "filters find (at most --limit, 1000).")
  cancel:argument("id", "The run id."):argname("ID"):args("?")
  data_options(cancel, { data = DATA_HELP, limit = "At most N runs (1 to 1000, default 1000)." })
  filter_options(cancel, true)

  local outbox = command(p, "outbox", "List the outbox of a data folder.")
  outbox:command_target("subcommand")
  data_options(outbox, {}, true)
  data_options(command(outbox, "list", "One JSON line per outbox entry, newest first."),
    { limit = "At most N entries (default 100).", data = DATA_HELP })

  local dlq = command(p, "dlq", "List, replay and drop dead-letter entries of a data folder.")
  dlq:command_target("subcommand")
  data_options(dlq, {}, true)
  data_options(command(dlq, "list", "One JSON line per DLQ entry, newest first."),
    { limit = "At most N entries (default 100).", data = DATA_HELP })
  for _, sub in ipairs({ { "replay", "Move an entry back to the outbox, due now with fresh attempts." },
    { "drop", "Delete an entry." } }) do
    local c = command(dlq, sub[1], sub[2])
    c:argument("id", "The entry id."):argname("ID")
    data_options(c, { data = DATA_HELP })
  end

  local schedules = command(p, "schedules", "List the schedules of a data folder.")
  schedules:command_target("subcommand")
  data_options(schedules, {}, true)
  data_options(command(schedules, "list", "One JSON line per schedule, as the server last stored it: its "
    .. "cron or every, next slot and last run."), { data = DATA_HELP })

  local data = command(p, "data", "Check the records of a data folder.")
  data:command_target("subcommand")
  local verify = command(data, "verify", "Check every record's checksum and JSON; exit 1 when any is corrupt.")
  verify:option("--data", DATA_HELP):argname("DIR")

  command(p, "version", "Print the version.")

  local completion = command(p, "completion", "Print a shell completion script.",
    "Print a completion script for bash, zsh or fish, e.g. source <(chorus completion bash).")
  completion:argument("shell", "The shell."):choices({ "bash", "zsh", "fish" })

  local help = command(p, "help", "Show the help of chorus or of a command.")
  help:argument("topic", "The command."):args("?"):argname("COMMAND")
  return p
end

--- Parses argv (the words after `chorus`). Returns "ok", the result (each
--- option and argument by name, `command` and, under runs/outbox/dlq/data,
--- `subcommand`) and the grammar (for cli_args.help and .completion);
--- "help" and the help text (-h/--help was given); or "usage", argparse's
--- message (one line) and the command it concerns, if argv names one.
function cli_args.parse(argparse, argv)
  local state = {}
  local parser = build(argparse, state)
  local ok, parsed, result = pcall(parser.pparse, parser, join_values(argv))
  if state.help then
    return "help", state.help
  elseif not ok then
    error(parsed, 0)
  elseif not parsed then
    local command = state.commands[argv[1] or ""] and argv[1]
    return "usage", (result:gsub("\nDid you mean", "; did you mean"):gsub("\n", " ")), command
  end
  for _, o in ipairs(DATA_OPTIONS) do -- given before the subcommand
    local early = result[o.name .. "_early"]
    result[o.name .. "_early"] = nil
    if result[o.name] == nil then
      result[o.name] = early
    end
  end
  return "ok", result, state
end

--- The help text of a top-level command (nil for one that does not
--- exist), or of chorus itself for nil.
function cli_args.help(grammar, name)
  local cmd = name == nil and grammar.parser or grammar.commands[name]
  return cmd and cmd:get_help()
end

--- The completion script for shell ("bash", "zsh" or "fish").
function cli_args.completion(grammar, shell)
  local parser = grammar.parser
  return parser["get_" .. shell .. "_complete"](parser)
end

return cli_args
