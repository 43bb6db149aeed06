std = "lua54"
max_line_length = 120
files["tests/**/*_spec.lua"] = { std = "+busted" }
files["examples/**/*_spec.lua"] = { std = "+busted" }
exclude_files = { "build/**", "build-asan/**", "tests/integration/fixtures/**", "tests/fixtures/**" }
files["scripts/bench/wrk_post.lua"] = { globals = { "wrk" } }
files["scripts/bench/wrk_idem.lua"] = { globals = { "wrk", "setup", "request" }, read_globals = { "thread_id" } }
files["scripts/bench/wrk_wave.lua"] = { globals = { "wrk", "response" } }
