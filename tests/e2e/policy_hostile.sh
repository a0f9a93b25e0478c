#!/usr/bin/env bash
# Hostile policies (issue 10, "The Lua host"): whatever a policy does, nbdkit
# exits by itself with status 0 (no abort, no segfault, no exit code of the
# policy's choosing) and the data is kept: saved where the policy said, or
# in a rescue file, holding every byte the client saw.  A hook that cannot
# be stopped (a __gc loop, a blocking call) costs a flush EIO after the
# budget + 2 s grace, and the exit saves without it.
#
# Every case runs twice: with the filter as built, and with a copy built
# with clang -fsanitize=address,undefined (no report may appear).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"

mkbase "$SCRATCH/base.raw" $((2 << 20)) 41
BASE=$SCRATCH/base.raw
LIBLUA=$(ldd "$FILTER" | awk '/liblua5\.4/ { print $3 }')
MODE=plain
NB_ENV=

# The one qcow2 in DIR other than target.qcow2 (the rescue file).
rescue_in () { ls "$1"/*.qcow2 2>/dev/null | grep -v '/target\.qcow2$'; }

# kept DIR saved|rescued: the data is where it should be, as the client saw it.
kept () {
  local dir=$1 kind=$2 file others
  others=$(rescue_in "$dir")
  if [ "$kind" = saved ]; then
    file=$dir/target.qcow2
    [ -z "$others" ] || { echo "unexpected rescue file: $others"; return 1; }
  else
    file=$others
    [ ! -e "$dir/target.qcow2" ] || { echo "the target was written"; return 1; }
    [ "$(grep -c . <<<"$file")" = 1 ] || { echo "not one rescue file: '$file'"; return 1; }
  fi
  [ -f "$file" ] || { echo "no $kind file in $dir"; ls -la "$dir"; return 1; }
  qcheck "$file" || return 1
  cp "$file" "$dir/rb.qcow2" && qemu-img rebase -u -b "$BASE" -F raw "$dir/rb.qcow2" &&
    qemu-img compare -q -f qcow2 -F raw "$dir/rb.qcow2" "$dir/seen.raw"
}

# in_log TEXT: a fixed string in NB_LOG, else show the log's end.
in_log () { grep -qF -- "$1" "$NB_LOG" || { grep -v ': debug: ' "$NB_LOG" | tail -5 | cut -c1-300; return 1; }; }

# exited_well: nbdkit ended by itself after SIGTERM, status 0, and (ASan)
# no sanitizer report.
exited_well () {
  case $NB_RC in
    0) ;;
    134|139) echo "nbdkit died of a signal (status $NB_RC)"; return 1 ;;
    137) echo "nbdkit did not exit after SIGTERM (killed)"; return 1 ;;
    *) echo "nbdkit exited with status $NB_RC"; return 1 ;;
  esac
  if [ "$MODE" = asan ] && ls "$SCRATCH"/asan/log.* >/dev/null 2>&1; then
    echo "sanitizer reports:"; cat "$SCRATCH"/asan/log.*; rm -f "$SCRATCH"/asan/log.*; return 1
  fi
}

# policy DIR 'LUA': DIR/policy.lua, with @LIBLUA@ and @DIR@ filled in.
policy () {
  mkdir -p "$1"
  printf '%s\n' "$2" | sed -e "s|@LIBLUA@|$LIBLUA|g" -e "s|@DIR@|$1|g" > "$1/policy.lua"
}

# hostile NAME FLUSH KEPT 'LUA' TEXT...: nbdkit with the policy LUA,
# luacow-hook-seconds=1 (HOOK) and luacow-save=target.qcow2, started in a fresh
# directory; a client writes and zeroes, then flushes (FLUSH: f must
# succeed, F must fail with EIO) and reads everything; SIGTERM.  nbdkit
# must exit well, the log must have every TEXT, and the data must be KEPT
# (saved or rescued).  Extra nbdkit arguments in NB_ARGS.
hostile () {
  local name=$1 flush=$2 kind=$3 src=$4; shift 4
  local label="[$MODE] $name" dir=$SCRATCH/$MODE-$name t
  policy "$dir" "$src"
  # shellcheck disable=SC2086
  NB_CWD=$dir start_nb "$MODE-$name" ${NB_ARGS:-} file "$BASE" luacow-script="$dir/policy.lua" \
    luacow-hook-seconds="${HOOK:-1}" luacow-save="$dir/target.qcow2" || { fail "$label: nbdkit starts"; return; }
  checkv "$label: the client's writes work, the flush $([ "$flush" = F ] && echo fails with EIO || echo works)" \
    client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$dir/seen.raw" "w:1000:100000:1" "z:4*cs:cs" \
    "w:size-10:10:2" "$flush"
  stop_nb
  checkv "$label: nbdkit exits by itself with status 0" exited_well
  [ "$NB_RC" = 0 ] || tail -5 "$NB_LOG" | cut -c1-300 | sed 's/^/#   log: /'
  for t in "$@"; do
    checkv "$label: the log has: $t" in_log "$t"
  done
  checkv "$label: the data is $kind, as the client saw it" kept "$dir" "$kind"
}

bytecode='local function f () local x = "abc" return x end
local s = string.dump(f)
local i = s:find("\3\0\0\0", 1, true)       -- LOADK 0 0
local bad = s:sub(1, i - 1) .. "\3\128\255\255" .. s:sub(i + 4)   -- LOADK 0 131071'

cases () {
  note "--- [$MODE] item 1: debug.sethook cannot remove the budget"
  hostile sethook F rescued 'return { events = { "flush" }, save = function (ctx)
  debug.sethook()
  while true do end
end }' "attempt to call a nil value (field 'sethook')"
  hostile sethook-coroutine F rescued 'return { events = { "flush" }, save = function (ctx)
  coroutine.wrap(function () debug.sethook() while true do end end)()
end }' "attempt to call a nil value (field 'sethook')"
  hostile loop-coroutine F rescued 'return { events = { "flush" }, save = function (ctx)
  return coroutine.wrap(function () while true do end end)()
end }' "save: hook exceeded its time budget (1 s)"
  hostile debug-kept f saved 'return { save = function (ctx)
  return debug.gethook == nil and debug.getregistry == nil and debug.setupvalue == nil
    and debug.setmetatable == nil and debug.setlocal == nil and debug.upvaluejoin == nil
    and type(debug.traceback) == "function" and debug.getinfo(1, "S").what == "Lua"
end }'

  note "--- [$MODE] item 2: hooks Lua cannot stop do not hold the data"
  hostile gc-loop F rescued 'return { events = { "flush" }, save = function (ctx)
  setmetatable({}, { __gc = function () while true do end end })
  collectgarbage()
  return true
end }' "flush event: policy.lua: save: the hook did not return within 3 s" \
    "the policy is disabled: its save hook did not return; the overlay was saved to the rescue file"
  # A blocking call at exit: nbdkit saves without the policy while the
  # call still runs (ordering: the sleep outlives nbdkit).
  local tag=97.$RANDOM
  hostile execute-exit f rescued "return { save = function (ctx) os.execute('sleep $tag') return true end }" \
    "policy.lua: save: the hook did not return within 3 s"
  local sleeper; sleeper=$(pgrep -f "^sleep $tag\$")
  checkv "[$MODE] execute-exit: the blocking call still runs after nbdkit exited" test -n "$sleeper"
  [ -n "$sleeper" ] && kill $sleeper
  stuck_flush_then_term
  local tag2=95.$RANDOM
  echo "os.execute('sleep $tag2') return {}" > "$SCRATCH/$MODE-stuck-startup.lua"
  startup_fails "$MODE-stuck-startup" null size=1M luacow-script="$SCRATCH/$MODE-stuck-startup.lua" luacow-hook-seconds=1
  checkv "[$MODE] a script that blocks at startup: nbdkit stops with one line" \
    failed_at_startup "$MODE-stuck-startup.lua: script: the hook did not return within 3 s"
  sleeper=$(pgrep -f "^sleep $tag2\$")
  [ -n "$sleeper" ] && kill $sleeper

  note "--- [$MODE] item 3: no way to native code or to exit"
  hostile loadlib f rescued 'return { save = function (ctx)
  package.loadlib("@LIBLUA@", "luaopen_os")().exit(7)
end }' "attempt to call a nil value (field 'loadlib')"
  hostile c-searcher f rescued 'return { save = function (ctx)
  package.cpath = "@LIBLUA@"
  package.loaded.os = nil
  require("os").exit(7)
end }' "module 'os' not found"

  note "--- [$MODE] item 4: a policy at its memory cap"
  # (a budget filling 256 MiB takes even under ASan)
  HOOK=60 hostile memory-cap f saved 'local keep
local function fill (make)
  pcall(function () while true do keep = { keep, make() } end end)
end
return { events = { "flush" }, save = function (ctx)
  if not keep then          -- at the first event: up to the last bytes of the cap
    fill(function () return string.rep("x", 1 << 20) end)
    fill(function () return string.rep("x", 1 << 12) end)
    fill(function () return false end)
  end
  return true
end }'

  note "--- [$MODE] item 5: binary chunks are refused"
  hostile load-binary f rescued "$bytecode
return { save = function (ctx) return #tostring(assert(load(bad, '=bad', 'b'))()) > 0 end }" \
    "attempt to load a binary chunk (mode is 't')"
  hostile loadfile-binary f saved "$bytecode
local path = '@DIR@/bad.luac'
local out = assert(io.open(path, 'wb')); out:write(bad); out:close()
return { save = function (ctx)
  local ran = pcall(dofile, path) or loadfile(path) or loadfile(path, 'b')
  package.path = '@DIR@/?.luac'
  ran = ran or pcall(require, 'bad')
  os.remove(path)
  return not ran
end }"

  note "--- [$MODE] item 6: the trace runs protected, rendered in Lua"
  startup_fails "$MODE-trace-tostring" -D luacow.lua=1 null size=1M luacow-script="$SCRATCH/trace-tostring.lua"
  checkv "[$MODE] trace: debug.setmetatable(true, ...) stops the start with one line" \
    failed_at_startup "trace-tostring.lua:1: attempt to call a nil value (field 'setmetatable')"
  NB_ARGS="-v -D luacow.lua=1" hostile trace-sabotage f saved "string.format = function () error('no format') end
tostring = function () error('no tostring') end
return { backing = { file = string.rep('b', 3000) .. '.raw' } }" \
    'luacow: lua: save -> true' 'luacow: lua: backing -> {' 'luacow: lua: name -> "'

  note "--- [$MODE] item 7: the host's tables ignore the policy's metatables"
  hostile disk-newindex f saved 'return { cluster_size = function (disk)
  setmetatable(disk, { __newindex = function () error("x") end, __index = function () error("y") end })
  return 65536
end }'

  note "--- [$MODE] item 8: a path with a NUL byte is an error"
  hostile nul-path f rescued 'return { name = function (ctx) return "short.qcow2\0/../x" end }' \
    'name must be nil or a path (non-empty string without NUL bytes), got "short.qcow2\0/../x"'
  checkv "[$MODE] nul-path: nothing saved at the truncated name" test ! -e "$SCRATCH/$MODE-nul-path/short.qcow2"
  hostile nul-backing f rescued 'return { backing = function (ctx) return { file = "b.raw\0x", embed = true } end }' \
    'backing.file must be a path (non-empty string without NUL bytes)'

  note "--- [$MODE] the host's own functions cannot be called by a policy"
  hostile host-body f saved 'return { save = function (ctx)
  for level = 2, 10 do
    local info = debug.getinfo(level, "fS")
    if info and info.what == "C" then pcall(info.func) pcall(info.func, 1, 2) end
  end
  return true
end }'
}

# A flush stuck in a blocking hook, then SIGTERM: nbdkit answers the flush
# with EIO after budget + grace and exits with the rescue file.
stuck_flush_then_term () {
  local label="[$MODE] stuck-flush-term" dir=$SCRATCH/$MODE-stuck tag=96.$RANDOM
  policy "$dir" "return { events = { 'flush' }, save = function (ctx)
  if ctx.event == 'flush' then os.execute('sleep $tag') end
  return ctx.event == 'flush'
end }"
  NB_CWD=$dir start_nb "$MODE-stuck" file "$BASE" luacow-script="$dir/policy.lua" \
    luacow-hook-seconds=1 luacow-save="$dir/target.qcow2" || { fail "$label: nbdkit starts"; return; }
  client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$dir/seen.raw" "w:0:70000:3" >/dev/null
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "F" >"$dir/flush.out" 2>&1 &
  local flusher=$! i
  for i in $(seq 1 200); do pgrep -f "^sleep $tag\$" >/dev/null && break; sleep 0.05; done
  checkv "$label: the flush's hook is running (blocked)" pgrep -f "^sleep $tag\$"
  stop_nb
  wait "$flusher"; local frc=$?
  checkv "$label: the waiting flush failed with EIO (not a hang)" test "$frc" = 0
  checkv "$label: nbdkit exits by itself with status 0" exited_well
  checkv "$label: the data is rescued, as the client saw it" kept "$dir" rescued
  local sleeper; sleeper=$(pgrep -f "^sleep $tag\$")
  [ -n "$sleeper" ] && kill $sleeper
}

echo 'debug.setmetatable(true, { __tostring = function () error "x" end })
return {}' > "$SCRATCH/trace-tostring.lua"

cases

# The same under ASan+UBSan, on a copy of the tree built with clang.
MODE=asan
rt=$(clang -print-file-name=libclang_rt.asan-x86_64.so 2>/dev/null)
tree=$SCRATCH/asan-tree
mkdir -p "$tree" "$SCRATCH/asan"
cp -r "$TOP/Makefile" "$TOP/plugin" "$TOP/lua" "$TOP/tools" "$tree/"
rm -f "$tree"/plugin/*.o "$tree"/plugin/*.so
if [ -f "$rt" ] && make -s -j2 -C "$tree" CC=clang CFLAGS="-O1 -g -Wno-error" \
     SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
     plugin/nbdkit-luacow-filter.so >"$SCRATCH/asan-build.log" 2>&1; then
  FILTER=$tree/plugin/nbdkit-luacow-filter.so
  NB_ENV="LD_PRELOAD=$rt ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$SCRATCH/asan/log
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$SCRATCH/asan/log"
  NB_ENV=${NB_ENV//$'\n'/ }
  cases
else
  fail "[asan] build the filter with clang -fsanitize=address,undefined (clang, libclang_rt.asan: make deps)"
  tail -20 "$SCRATCH/asan-build.log" | sed 's/^/#   /'
fi

done_testing
