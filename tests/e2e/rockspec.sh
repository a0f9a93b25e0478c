#!/usr/bin/env bash
# The rock: lints rockspec/luacow-scm-1.rockspec, installs it into a private
# tree with `luarocks make` (from a copy of the tree, so no build products
# land in the work tree), then runs the busted specs with Lua's search
# paths pointing at that installed tree (and busted's own directories)
# only, and checks that the installed luacow and luacow.core are the ones
# loaded.  Prints TAP; exits non-zero when anything fails.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd -P)
rockspec=rockspec/luacow-scm-1.rockspec
tmp=$(mktemp -d "${TMPDIR:-/tmp}/luacow-rock.XXXXXX") || { echo "not ok 1 - mktemp"; exit 1; }
trap 'rm -rf "$tmp"' EXIT
src=$tmp/src tree=$tmp/tree
n=0 failed=0

ok ()     { n=$((n + 1)); echo "ok $n - $1"; }
not_ok () { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
# check DESCRIPTION COMMAND...: one TAP line; the output as comments on failure.
check () {
  local what=$1 out; shift
  if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what"; printf '%s\n' "$out" | sed 's/^/# /'; fi
}
# step DESCRIPTION COMMAND...: a build step, no test: a failure is one,
# a success prints nothing.
step () {
  local what=$1 out; shift
  if ! out=$("$@" 2>&1); then not_ok "$what"; printf '%s\n' "$out" | sed 's/^/# /'; fi
}
# finish: the plan line, and the exit status.
finish () {
  echo "1..$n"
  [ "$failed" -eq 0 ]
  exit
}

for tool in luarocks lua5.4 busted cc; do
  if ! command -v "$tool" >/dev/null; then not_ok "$tool is installed"; finish; fi
done

cd "$top" || exit 1
check "luarocks lint $rockspec" luarocks lint "$rockspec"

# A copy of the tree without .git or build products.
mkdir -p "$src"
step "copy the tree to $src" \
  bash -c 'tar -C "$1" --exclude=./.git --exclude="*.o" --exclude="*.so" --exclude=./plugin/gen -cf - . \
           | tar -C "$2" -xf -' _ "$top" "$src"

step "luarocks make installs luacow into a private tree" \
  bash -c 'cd "$1" && luarocks --lua-version=5.4 --tree="$2" make "$3"' _ "$src" "$tree" "$rockspec"
if [ ! -f "$tree/share/lua/5.4/luacow.lua" ] || [ ! -f "$tree/lib/lua/5.4/luacow/core.so" ]; then
  not_ok "the tree has share/lua/5.4/luacow.lua and lib/lua/5.4/luacow/core.so"
  find "$tree" -type f | sed 's/^/# /'
  finish
fi
ok "the tree has share/lua/5.4/luacow.lua and lib/lua/5.4/luacow/core.so"
check "the installed luacow.lua is lua/luacow.lua" cmp "$top/lua/luacow.lua" "$tree/share/lua/5.4/luacow.lua"
check "the installed luacow/names.lua is lua/luacow/names.lua" \
  cmp "$top/lua/luacow/names.lua" "$tree/share/lua/5.4/luacow/names.lua"

# Nothing of the sources is left to load by mistake.
rm -f "$src/lua/luacow.lua" "$src/lua/luacow/names.lua" "$src/plugin/luacow_core.c"

# Lua's search paths: the installed tree, then only the directories that
# busted itself lives in (Debian's, not /usr/local nor ./).
sysdir () {  # MODULE path|cpath SUFFIX
  env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 lua5.4 -e \
    "local p = package.searchpath('$1', package.$2); if p then print((p:gsub('$3\$', ''))) end"
}
bdir=$(sysdir busted.runner path /busted/runner.lua)
cdir=$(sysdir system.core cpath /system/core.so)
[ -n "$cdir" ] || cdir=$(sysdir term.core cpath /term/core.so)
lpath="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua${bdir:+;$bdir/?.lua;$bdir/?/init.lua}"
cpath="$tree/lib/lua/5.4/?.so${cdir:+;$cdir/?.so}"
# Lua 5.4 reads LUA_PATH_5_4 / LUA_CPATH_5_4 (before LUA_PATH / LUA_CPATH).
# The generic ones are unset: /usr/bin/busted may start under another Lua
# (Debian's /usr/bin/lua is often 5.1) before re-running itself with
# --lua=lua5.4, and that one must keep its own default paths.
run_installed () {
  env -u LUA_PATH -u LUA_CPATH LUA_PATH_5_4="$lpath" LUA_CPATH_5_4="$cpath" \
      LUACOW_INSTALLED="$tree" LUACOW_CORE_SO= "$@"
}

check "lua5.4 loads luacow and luacow.core from the tree" \
  run_installed lua5.4 -e "
    local tree = '$tree'
    local lp = package.searchpath('luacow', package.path)
    local cp = package.searchpath('luacow.core', package.cpath)
    assert(lp == tree .. '/share/lua/5.4/luacow.lua', 'luacow from ' .. tostring(lp))
    assert(cp == tree .. '/lib/lua/5.4/luacow/core.so', 'luacow.core from ' .. tostring(cp))
    local luacow = require 'luacow'
    assert(luacow.size('64K') == 65536)
    assert(type(require('luacow.core').glob('$tree/*')) == 'table')
    assert(luacow.latest('$tree/share/lua/5.4/*.lua') == lp)"

# The specs, against the installed copy (the spec helper checks that
# luacow and luacow.core resolve under \$LUACOW_INSTALLED).
out=$(cd "$src" && run_installed busted --lua=lua5.4 -o TAP tests/spec 2>&1)
rc=$?
total=$(printf '%s\n' "$out" | grep -cE '^ok [0-9]+' || true)
bad=$(printf '%s\n' "$out" | grep -cE '^not ok [0-9]+' || true)
if [ "$rc" -eq 0 ] && [ "$bad" -eq 0 ] && [ "$total" -gt 0 ]; then
  ok "busted specs pass against the installed rock ($total tests)"
else
  not_ok "busted specs pass against the installed rock ($total ok, $bad failed, rc $rc)"
  printf '%s\n' "$out" | sed 's/^/# /'
fi

check "luarocks built in the copy, not in the work tree" \
  bash -c 'test -f "$1/luacow/core.so" && test ! "$2/luacow/core.so" -nt "$3"' _ "$src" "$top" "$tmp"

finish
