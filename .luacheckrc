std = "lua54"
max_line_length = 120
-- Workflow scripts see the sandbox's globals only (lua/chorus/luacheck_std.lua,
-- the standard `chorus init` writes into a new project's .luacheckrc too).
stds.chorus_workflow = dofile("lua/chorus/luacheck_std.lua")
files["examples/**/*.lua"] = { std = "chorus_workflow" }
files["tests/soak/workflows/*.lua"] = { std = "chorus_workflow" }
files["tests/**/*_spec.lua"] = { std = "+busted" }
files["examples/**/*_spec.lua"] = { std = "lua54+busted" }
-- types/: LuaLS annotations (---@meta): empty bodies, tables only described,
-- long type unions
files["types/**/*.lua"] = { unused = false, max_line_length = false }
exclude_files = { "build/**", "build-asan/**", "tests/integration/fixtures/**", "tests/fixtures/**" }
files["scripts/bench/wrk_post.lua"] = { globals = { "wrk" } }
files["scripts/bench/wrk_idem.lua"] = { globals = { "wrk", "setup", "request" }, read_globals = { "thread_id" } }
files["scripts/bench/wrk_wave.lua"] = {
  globals = { "wrk", "setup", "init", "request", "delay", "response", "done", "wave_2xx", "wave_answered" },
}
