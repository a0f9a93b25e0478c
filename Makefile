# luacow: a persistent, scriptable copy-on-write overlay filter for nbdkit.
#
#   make          build plugin/nbdkit-luacow-filter.so and the man page
#   make deps     install every Debian package build, tests and bench need
#   make check    deps + build + every test; ends with "N passed, N failed"
#   make demo     the whole story end to end on a scratch disk
#   make bench    fio: bare file plugin vs --filter=cow vs --filter=luacow
#   make fuzz     libFuzzer on the qcow2 decoder (FUZZ_SECONDS, default 60)
#   make stress   8 connections of random I/O under checkpoints
#   make install / uninstall   (DESTDIR and PREFIX honoured)

PREFIX     ?= /usr/local
DESTDIR    ?=
CC         ?= cc
PKGS        = nbdkit lua5.4 zlib libzstd libxxhash
PKG_CFLAGS  = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    = $(shell pkg-config --libs lua5.4 zlib libzstd libxxhash 2>/dev/null)
FILTERDIR   = $(shell pkg-config --variable=filterdir nbdkit 2>/dev/null)
WARN        = -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes \
              -Wmissing-prototypes -Wvla -Wformat=2
CFLAGS     ?= -O2 -g
ALL_CFLAGS  = -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden $(WARN) $(PKG_CFLAGS) \
              -Iplugin -Iplugin/gen $(CFLAGS) $(SAN)
LDLIBS      = $(PKG_LIBS) -lpthread -lm

FILTER      = plugin/nbdkit-luacow-filter.so
MANPAGE     = plugin/nbdkit-luacow-filter.1
GLUE_SRCS   = plugin/luacow.c plugin/config.c plugin/exports.c
LIB_SRCS    = $(filter-out $(GLUE_SRCS),$(wildcard plugin/*.c))
LIB_OBJS    = $(LIB_SRCS:.c=.o)
GEN_LUA     = plugin/gen/luacow_lua.h plugin/gen/luacow_names_lua.h
UNIT_SRCS   = $(wildcard tests/unit/test_*.c)
UNIT_BINS   = $(UNIT_SRCS:tests/unit/%.c=tests/unit/bin/%)
LUA_MODDIR  = $(PREFIX)/share/lua/5.4
LUA_CMODDIR = $(PREFIX)/lib/lua/5.4
LUA_CORE    = plugin/gen/luacow/core.so
MANDIR      = $(PREFIX)/share/man/man1

.PHONY: all deps check unit demo bench fuzz stress install uninstall clean lint
all: $(FILTER) $(MANPAGE) $(LUA_CORE)

plugin/%.o: plugin/%.c $(wildcard plugin/*.h) $(GEN_LUA)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The Lua library is compiled into the filter so that `require "luacow"`
# works without installing anything.
plugin/gen/luacow_lua.h: lua/luacow.lua tools/embed.lua
	@mkdir -p plugin/gen
	lua5.4 tools/embed.lua luacow_lua $< > $@.tmp && mv $@.tmp $@

plugin/gen/luacow_names_lua.h: lua/luacow/names.lua tools/embed.lua
	@mkdir -p plugin/gen
	lua5.4 tools/embed.lua luacow_names_lua $< > $@.tmp && mv $@.tmp $@

$(FILTER): $(GLUE_SRCS:.c=.o) $(LIB_OBJS)
	$(CC) -shared -o $@ $^ $(LDLIBS) $(SAN)

# The library's C part, for policies tested outside nbdkit (the filter has
# its own copy built in).
$(LUA_CORE): plugin/luacow_core.c plugin/luacow_core.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -fPIC -shared $(WARN) $(PKG_CFLAGS) $(CFLAGS) -o $@ $<

$(MANPAGE): plugin/nbdkit-luacow-filter.pod
	pod2man --section=1 --center="nbdkit" --release="luacow" --name=nbdkit-luacow-filter $< > $@

tests/unit/bin/%: tests/unit/%.c tests/unit/stubs.c tests/unit/tap.h tests/unit/ovtest.h tests/unit/shell.h $(LIB_OBJS)
	@mkdir -p tests/unit/bin
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< tests/unit/stubs.c $(LIB_OBJS) $(LDLIBS)

unit: $(UNIT_BINS)

# Installs what building, testing, benchmarking and the demo need.  Quiet
# and quick when everything is already there.
DEB_PKGS = nbdkit nbdkit-plugin-dev liblua5.4-dev lua5.4 lua-busted zlib1g-dev \
           libzstd-dev libxxhash-dev qemu-utils libnbd-bin libnbd-dev python3-libnbd fio luarocks \
           pkg-config gcc make clang libclang-rt-14-dev clang-tidy cppcheck valgrind \
           perl e2fsprogs util-linux procps xz-utils nbdkit-plugin-lua coreutils \
           nbdkit-plugin-python nbdkit-plugin-perl
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$(echo $$missing | tr '\n' ' ' | sed 's/^/ /')"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	else echo "make deps: all packages present"; fi

check: deps
	$(MAKE) all unit
	@tests/run.sh

lint: $(GEN_LUA)
	tests/lint.sh

demo: deps
	$(MAKE) all
	@tests/demo.sh

bench: deps
	$(MAKE) all
	@tests/bench/bench.sh

fuzz: deps
	tests/fuzz/run.sh $${FUZZ_SECONDS:-60}
	tests/fuzz/run_journal.sh $${FUZZ_SECONDS:-60}

stress: deps
	$(MAKE) all
	tests/stress/stress.sh $${STRESS_SECONDS:-20}

install: all
	install -d $(DESTDIR)$(FILTERDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(LUA_MODDIR)/luacow \
	           $(DESTDIR)$(LUA_CMODDIR)/luacow
	install -m 0755 $(FILTER) $(DESTDIR)$(FILTERDIR)/
	install -m 0644 $(MANPAGE) $(DESTDIR)$(MANDIR)/
	install -m 0644 lua/luacow.lua $(DESTDIR)$(LUA_MODDIR)/
	install -m 0644 lua/luacow/names.lua $(DESTDIR)$(LUA_MODDIR)/luacow/
	install -m 0755 $(LUA_CORE) $(DESTDIR)$(LUA_CMODDIR)/luacow/core.so

uninstall:
	rm -f $(DESTDIR)$(FILTERDIR)/nbdkit-luacow-filter.so \
	      $(DESTDIR)$(MANDIR)/nbdkit-luacow-filter.1 \
	      $(DESTDIR)$(LUA_MODDIR)/luacow.lua $(DESTDIR)$(LUA_MODDIR)/luacow/names.lua \
	      $(DESTDIR)$(LUA_CMODDIR)/luacow/core.so
	-rmdir $(DESTDIR)$(LUA_CMODDIR)/luacow $(DESTDIR)$(LUA_MODDIR)/luacow 2>/dev/null

clean:
	rm -rf plugin/*.o plugin/gen $(FILTER) $(MANPAGE) tests/unit/bin tests/fuzz/bin
