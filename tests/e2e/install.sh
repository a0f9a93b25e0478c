#!/usr/bin/env bash
# `make install` into a DESTDIR (PREFIX=/usr/local): the filter lands in
# nbdkit's filterdir and works from there, the man page where man finds it,
# the Lua library where Lua 5.4 finds it; `make uninstall` removes them all.
# Prints TAP.
. "$(dirname "$0")/lib.sh"

ROOT=$SCRATCH/root
PREFIX=/usr/local
filterdir=$(pkg-config --variable=filterdir nbdkit 2>/dev/null)
so=$ROOT$filterdir/nbdkit-luacow-filter.so
man1=$ROOT$PREFIX/share/man/man1/nbdkit-luacow-filter.1
lualib=$ROOT$PREFIX/share/lua/5.4/luacow.lua

if [ -z "$filterdir" ]; then
  fail "pkg-config --variable=filterdir nbdkit names nbdkit's filter directory"
  done_testing; exit
fi

# make prints "Entering directory" lines with -C; -s keeps the log short.
# (Running make is no test: what it installed is.)
if ! make -s -C "$TOP" install DESTDIR="$ROOT" PREFIX="$PREFIX" >"$SCRATCH/install.log" 2>&1; then
  fail "make install DESTDIR=\$SCRATCH/root PREFIX=$PREFIX"; sed 's/^/# /' "$SCRATCH/install.log"
fi
check "the filter is installed in nbdkit's filterdir ($filterdir)" test -f "$so"
check "the installed filter is the built one" cmp -s "$FILTER" "$so"
check "the man page is installed in $PREFIX/share/man/man1" test -s "$man1"
check "the Lua library is installed in $PREFIX/share/lua/5.4" cmp -s "$TOP/lua/luacow.lua" "$lualib"
check "... with its luacow.names module" cmp -s "$TOP/lua/luacow/names.lua" "${lualib%.lua}/names.lua"
# The C helper luacow.core (luacow.latest/keep outside nbdkit), if the
# Makefile installs it: it must be where Lua 5.4 looks (checked below).
core=$(find "$ROOT" -path '*/luacow/core.so' -type f | head -n 1)
# Nothing else: everything under the DESTDIR is one of these.
others=$(find "$ROOT" -type f ! -path "$so" ! -path "$man1" ! -path "$lualib" ! -path "${lualib%.lua}/names.lua" ! -path "${core:-/nonexistent}")
check "make install installs nothing else${others:+ (also: $others)}" test -z "$others"

# The installed filter, from where it was installed (run from the scratch
# directory, away from the tree).
cd "$SCRATCH" || exit 1
out=$(nbdkit -U - --filter="$so" memory 1M --run 'nbdinfo "$uri"' 2>&1); rc=$?
if [ "$rc" -eq 0 ] && grep -q 'export-size: 1048576' <<<"$out" && grep -q 'is_read_only: false' <<<"$out"; then
  ok "nbdkit --filter=<installed .so> memory 1M serves a writable 1 MiB export"
else
  fail "nbdkit --filter=<installed .so> memory 1M serves a writable 1 MiB export"; sed 's/^/# /' <<<"$out"
fi
cat >"$SCRATCH/policy.lua" <<'EOF'
local luacow = require "luacow"
return { cluster_size = "4K", name = function (ctx) return luacow.expand("saved-{size}.qcow2", ctx) end }
EOF
out=$(nbdkit -U - --filter="$so" memory 1M script="$SCRATCH/policy.lua" \
        --run 'nbdsh -u "$uri" -c "h.pwrite(b\"i\" * 4096, 8192)"' 2>&1); rc=$?
if [ "$rc" -eq 0 ] && qemu-img check -q saved-1048576.qcow2 >/dev/null 2>&1 &&
   qemu-io -f qcow2 -c "read -P 0x69 8192 4096" saved-1048576.qcow2 >/dev/null 2>&1; then
  ok "the installed filter runs a policy that requires luacow and saves a valid qcow2"
else
  fail "the installed filter runs a policy that requires luacow and saves a valid qcow2"; sed 's/^/# /' <<<"$out"
fi

# man finds the page in the DESTDIR's man tree, and it renders.
found=$(MANPATH=$ROOT$PREFIX/share/man man -w nbdkit-luacow-filter 2>&1)
check "man finds nbdkit-luacow-filter(1) under \$DESTDIR$PREFIX/share/man${found:+ ($found)}" \
  test "$found" = "$man1"
check "the installed man page renders, NAME first" \
  bash -c 'MANWIDTH=80 man -l "$1" 2>/dev/null | grep -A1 "^NAME" | grep -q "nbdkit-luacow-filter - "' _ "$man1"

# Lua 5.4's own default search path, each absolute entry under the DESTDIR:
# it must find the installed luacow, and loading it must work.
lua_path=$(env -u LUA_PATH -u LUA_PATH_5_4 lua5.4 -e "
  local out = {}
  for entry in package.path:gmatch('[^;]+') do
    if entry:sub(1, 1) == '/' then out[#out + 1] = '$ROOT' .. entry end
  end
  print(table.concat(out, ';'))")
found=$(lua5.4 -e "print(package.searchpath('luacow', '$lua_path'))" 2>&1)
check "Lua 5.4's default path, under DESTDIR, finds luacow at $PREFIX/share/lua/5.4 ($found)" \
  test "$found" = "$lualib"
check "lua5.4 loads the installed luacow (LUA_PATH_5_4 relative to DESTDIR)" \
  env -u LUA_PATH LUA_PATH_5_4="$lua_path" lua5.4 -e "
    local luacow = require 'luacow'
    assert(package.searchpath('luacow', package.path) == '$lualib')
    assert(luacow.size('64K') == 65536)
    assert(luacow.evaluate(luacow.policy({}), 'cluster_size', {}) == 65536)"

lua_cpath=$(env -u LUA_CPATH -u LUA_CPATH_5_4 lua5.4 -e "
  local out = {}
  for entry in package.cpath:gmatch('[^;]+') do
    if entry:sub(1, 1) == '/' then out[#out + 1] = '$ROOT' .. entry end
  end
  print(table.concat(out, ';'))")
if [ -z "$core" ]; then
  fail "luacow.core is installed where Lua 5.4 finds it"
else
  check "lua5.4 finds the installed luacow.core and luacow.latest works (${core#"$ROOT"})" \
    env -u LUA_PATH -u LUA_CPATH LUA_PATH_5_4="$lua_path" LUA_CPATH_5_4="$lua_cpath" lua5.4 -e "
      assert(package.searchpath('luacow.core', package.cpath) == '$core')
      local luacow = require 'luacow'
      assert(luacow.latest('$lualib') == '$lualib')"
fi

# make uninstall takes them all away.
if ! make -s -C "$TOP" uninstall DESTDIR="$ROOT" PREFIX="$PREFIX" >"$SCRATCH/uninstall.log" 2>&1; then
  fail "make uninstall DESTDIR=\$SCRATCH/root PREFIX=$PREFIX"; sed 's/^/# /' "$SCRATCH/uninstall.log"
fi
left=$(find "$ROOT" -type f)
check "make uninstall removes everything make install installed${left:+ (left: $left)}" \
  test -z "$left"

done_testing
