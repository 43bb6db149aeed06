# chorus — build, test, run, bench, deps.
#
# `make deps` installs the Debian packages; `make` builds ./chorus;
# `make test` builds and runs every test; `make demo` runs the fan-out example
# against the mock upstream; `make bench` prints the benchmark numbers;
# `make install PREFIX=/usr/local DESTDIR=` installs it (`make uninstall`).

CC      ?= cc
BUILD   ?= build
PKGS    := lua5.4 libuv libcurl libcjson libmicrohttpd lmdb libcrypto libxxhash libsystemd
MOCK_PKGS := libmicrohttpd libcjson

OPT     ?= -O2 -g
CFLAGS  := $(OPT) -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -fPIC -Iruntime -I$(BUILD)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lm -lpthread
# The Lua C module must not link liblua: lua5.4 has the VM built in.
MOD_LIBS   = $(shell pkg-config --libs libuv libcurl libcjson libmicrohttpd lmdb libcrypto libxxhash libsystemd \
    2>/dev/null) -lhttp_parser -lm -lpthread

# Everything in runtime/ except the CLI entry point is the core, linked into
# both ./chorus and the Lua C module used by busted (same sources).
CORE_SRC := $(filter-out runtime/main.c,$(wildcard runtime/*.c))
CORE_OBJ := $(CORE_SRC:runtime/%.c=$(BUILD)/%.o) $(BUILD)/embedded_lua.o $(BUILD)/embedded_ui.o
LUA_SRC  := $(wildcard lua/chorus/*.lua)
UI_SRC   := $(wildcard ui/*)

.PHONY: all install uninstall man deps test test-fast asan-build test-unit test-lua test-integration test-asan bench bench-profile demo clean lint format fuzz

all: chorus $(BUILD)/mock-upstream $(BUILD)/sync-gate.so $(BUILD)/lua/chorus/core.so

# -f: a ./chorus still running (a server left up) is replaced, not kept
# stale with only "Text file busy" to say so
chorus: $(BUILD)/chorus
	cp -f $< $@

$(BUILD):
	mkdir -p $(BUILD)

$(BUILD)/%.o: runtime/%.c $(wildcard runtime/*.h) | $(BUILD)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

# The Lua modules of lua/chorus/ are compiled into the binary so that
# ./chorus works from any directory without an install step.
$(BUILD)/embedded_lua.c: $(LUA_SRC) scripts/embed.lua | $(BUILD)
	lua5.4 scripts/embed.lua lua $@ $(LUA_SRC)

$(BUILD)/embedded_lua.o: $(BUILD)/embedded_lua.c
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

# The web console (ui/: HTML, CSS, JS; no build step) is compiled in the
# same way; `chorus serve` answers /ui from it (chorus.ui).
$(BUILD)/embedded_ui.c: $(UI_SRC) scripts/embed.lua | $(BUILD)
	lua5.4 scripts/embed.lua ui $@ $(UI_SRC)

$(BUILD)/embedded_ui.o: $(BUILD)/embedded_ui.c
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c $< -o $@

$(BUILD)/chorus: $(CORE_OBJ) $(BUILD)/main.o
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(PKG_LIBS)

$(BUILD)/lua/chorus/core.so: $(CORE_OBJ)
	mkdir -p $(BUILD)/lua/chorus
	$(CC) $(CFLAGS) -shared $^ -o $@ $(LDFLAGS) $(MOD_LIBS)

# The crash specs' LD_PRELOAD shim that holds disk syncs at a gate
# (tests/sync_gate.c); never linked into chorus.
$(BUILD)/sync-gate.so: tests/sync_gate.c | $(BUILD)
	$(CC) $(CFLAGS) -shared $< -o $@ -ldl

$(BUILD)/mock-upstream: tests/mock_upstream.c | $(BUILD)
	$(CC) $(CFLAGS) $(shell pkg-config --cflags $(MOCK_PKGS)) $< -o $@ \
	    $(shell pkg-config --libs $(MOCK_PKGS)) -lpthread

$(BUILD)/test_%: tests/unit/test_%.c $(CORE_OBJ) tests/unit/unit.h
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -Itests/unit $< $(CORE_OBJ) -o $@ $(LDFLAGS) $(PKG_LIBS)

UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/%,$(wildcard tests/unit/test_*.c))

deps:
	bash scripts/deps.sh

# ---- install ------------------------------------------------------------------
# `make install PREFIX=/usr/local DESTDIR=` puts the binary in PREFIX/bin, the
# Lua modules and core.so where lua5.4 (and so busted) looks for them —
# `require "chorus.testing"` works in any spec — and the man page, examples,
# contrib files and LuaLS annotations under PREFIX/share. The installed
# `chorus test` finds the modules relative to its own path, so a DESTDIR
# tree works where it is too. Debian's lua5.4 looks for C modules of /usr in
# lib/MULTIARCH/lua/5.4, of /usr/local in lib/lua/5.4.
PREFIX    ?= /usr/local
DESTDIR   ?=
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null)
BINDIR    := $(PREFIX)/bin
LUA_LDIR  := $(PREFIX)/share/lua/5.4
LUA_CDIR  ?= $(if $(and $(filter /usr,$(PREFIX)),$(MULTIARCH)),$(PREFIX)/lib/$(MULTIARCH)/lua/5.4,$(PREFIX)/lib/lua/5.4)
MANDIR    := $(PREFIX)/share/man/man1
DOCDIR    := $(PREFIX)/share/doc/chorus
TYPESDIR  := $(PREFIX)/share/chorus/types
VERSION   := $(shell sed -n 's/^\#define CHORUS_VERSION "\(.*\)"/\1/p' runtime/runtime.h)

man: $(BUILD)/chorus.1

$(BUILD)/chorus.1: README.md scripts/man.lua runtime/runtime.h | $(BUILD)
	lua5.4 scripts/man.lua README.md $(VERSION) > $@.tmp && mv $@.tmp $@

install: $(BUILD)/chorus $(BUILD)/lua/chorus/core.so $(BUILD)/chorus.1
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LUA_LDIR)/chorus $(DESTDIR)$(LUA_CDIR)/chorus \
	    $(DESTDIR)$(MANDIR) $(DESTDIR)$(DOCDIR)/contrib $(DESTDIR)$(TYPESDIR)/chorus
	install -m 755 $(BUILD)/chorus $(DESTDIR)$(BINDIR)/chorus
	install -m 644 $(LUA_SRC) $(DESTDIR)$(LUA_LDIR)/chorus/
	install -m 755 $(BUILD)/lua/chorus/core.so $(DESTDIR)$(LUA_CDIR)/chorus/core.so
	install -m 644 $(BUILD)/chorus.1 $(DESTDIR)$(MANDIR)/chorus.1
	install -m 644 README.md LICENSE $(DESTDIR)$(DOCDIR)/
	install -m 644 contrib/* $(DESTDIR)$(DOCDIR)/contrib/
	cp -R examples $(DESTDIR)$(DOCDIR)/
	install -m 644 types/chorus/*.lua $(DESTDIR)$(TYPESDIR)/chorus/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/chorus $(DESTDIR)$(MANDIR)/chorus.1 $(DESTDIR)$(LUA_CDIR)/chorus/core.so
	rm -f $(patsubst lua/chorus/%,$(DESTDIR)$(LUA_LDIR)/chorus/%,$(LUA_SRC))
	rm -rf $(DESTDIR)$(DOCDIR) $(DESTDIR)$(PREFIX)/share/chorus
	rmdir $(DESTDIR)$(LUA_LDIR)/chorus $(DESTDIR)$(LUA_CDIR)/chorus 2>/dev/null || true

# Every test, then the C unit and integration tests again under
# AddressSanitizer + UBSan; one line "N passed, N failed" for both at the end.
test: all $(UNIT_TESTS) asan-build
	bash scripts/test.sh --and-sanitized

# Only the first half (no sanitizer build), for a quick loop while editing.
test-fast: all $(UNIT_TESTS)
	bash scripts/test.sh

# The sanitized half alone. The ASan build lives in its own folder so the
# optimized binary stays as it is.
ASAN_FLAGS := CC=clang BUILD=build-asan \
    OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
    LDFLAGS="-fsanitize=address,undefined"

asan-build: all
	$(MAKE) $(ASAN_FLAGS) build-asan/chorus build-asan/mock-upstream $(patsubst $(BUILD)/%,build-asan/%,$(UNIT_TESTS))

test-asan: asan-build
	CHORUS_BUILD=build-asan bash scripts/test.sh --sanitized

demo: all
	bash scripts/demo.sh

bench: all
	bash scripts/bench.sh
	bash scripts/bench_serve.sh
	bash scripts/bench_durable.sh
	bash scripts/bench_recovery.sh
	bash scripts/bench_runs.sh
	bash scripts/bench_otlp.sh
	bash scripts/bench_sweep.sh

# Where a served request's time goes (perf, callgrind); not part of `bench`.
bench-profile: all
	bash scripts/bench_profile.sh

# Every C file of the project: lint and format cover them all.
C_FILES = runtime/*.c runtime/*.h tests/*.c tests/unit/*.c tests/unit/*.h tests/fuzz/*.c tests/fuzz/*.h

lint:
	luacheck lua examples tests scripts types
	clang-format --dry-run --Werror $(C_FILES)

format:
	clang-format -i $(C_FILES)

clean:
	rm -rf build build-asan build-fuzz chorus

# ---- fuzz: libFuzzer targets (tests/fuzz/) ----------------------------------
# `make fuzz [FUZZ_SECONDS=60]` builds each tests/fuzz/fuzz_NAME.c with
# clang, libFuzzer, ASan and UBSan against the same runtime sources (CORE_SRC)
# and embedded Lua modules as ./chorus, compiled separately into build-fuzz/,
# then runs each target for FUZZ_SECONDS on a scratch corpus seeded from
# tests/fuzz/corpus/NAME/ (only read), with tests/fuzz/NAME.dict, and prints
# one summary line per target (tests/fuzz/run.sh). It fails when any target
# crashes; crashing inputs land in build-fuzz/crashes/NAME/.
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build-fuzz
FUZZ_CC      := clang
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS  := -O1 -g -fno-omit-frame-pointer -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE \
    -Iruntime -I$(BUILD) $(FUZZ_SAN)
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_CORE_OBJ := $(CORE_SRC:runtime/%.c=$(FUZZ_BUILD)/%.o) $(FUZZ_BUILD)/embedded_lua.o \
    $(FUZZ_BUILD)/embedded_ui.o

$(FUZZ_BUILD)/%.o: runtime/%.c $(wildcard runtime/*.h)
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/embedded_lua.o: $(BUILD)/embedded_lua.c
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/embedded_ui.o: $(BUILD)/embedded_ui.c
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) -c $< -o $@

$(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%): $(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_lua.h \
    $(FUZZ_CORE_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(PKG_CFLAGS) $< $(FUZZ_CORE_OBJ) -o $@ $(PKG_LIBS)

fuzz: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)
	bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)
# ---- end of fuzz ---------------------------------------------------------------
