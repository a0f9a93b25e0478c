#!/usr/bin/env bash
# Broken policies.  At startup every kind of mistake stops nbdkit with one
# error line naming the script (and the field).  At run time a failing hook
# loses no data: at exit the overlay goes to a rescue file that qemu can
# use; a failing save at a "flush" event fails that flush (EIO) and nbdkit
# keeps serving; an error in `saved` is only logged.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"

# ----------------------------------------------------------------- startup
# broken FILE.lua 'LUA SOURCE' TEXT...: nbdkit with luacow-script=FILE.lua
# over a 1 MiB null disk must exit non-zero at startup, serve no client,
# and print one error line containing "luacow: " and every TEXT.
broken () {
  local name=$1 src=$2; shift 2
  local dir=$SCRATCH/startup-$RANDOM$RANDOM
  mkdir -p "$dir"; printf '%s\n' "$src" > "$dir/$name"
  startup_fails startup null size=1M luacow-script="$dir/$name" luacow-hook-seconds=1
  local why one=${src//$'\n'/ }
  if why=$(failed_at_startup "luacow: " "$@"); then ok "startup: $name ${one:0:60}: $(sed 's/^nbdkit: error: luacow: //' "$NB_LOG" | cut -c1-150)"
  else fail "startup: $name ${one:0:60}:$why"; fi
}

note "--- broken at startup"
broken syntax.lua 'return {' 'syntax.lua:2: ' 'near <eof>'
broken runtime.lua 'local t = nil
return t.field' 'runtime.lua:2: attempt to index a nil value'
broken error.lua 'error("no policy today")' 'error.lua:1: no policy today'
broken number.lua 'return 42' 'number.lua: policy must return a table, got number'
broken nothing.lua '-- returns nothing' 'nothing.lua: policy must return a table, got nil'
broken string.lua 'return "name"' 'string.lua: policy must return a table, got string'
broken unknown.lua 'return { nmae = "x.qcow2" }' "unknown.lua: unknown field 'nmae' (did you mean 'name'?)"
broken unknowns.lua 'return { foo = 1, bar = 2 }' "unknowns.lua: unknown fields 'bar', 'foo'"
broken policy.lua 'return { cluster_size = 1000 }' \
  'policy.lua: cluster_size must be a power of two from 512 to 2097152, got 1000'
# exactly that line
checkv "startup: cluster_size=1000 gives exactly the documented line" \
  test "$(cat "$NB_LOG")" = "nbdkit: error: luacow: policy.lua: cluster_size must be a power of two from 512 to 2097152, got 1000"
broken cs-small.lua 'return { cluster_size = 256 }' 'cs-small.lua: cluster_size must be a power of two from 512 to 2097152, got 256'
broken cs-big.lua 'return { cluster_size = "4M" }' 'cs-big.lua: cluster_size must be a power of two from 512 to 2097152, got "4M"'
# every field with a value of the wrong type
broken cs-type.lua 'return { cluster_size = {} }' 'cs-type.lua: cluster_size must be ' 'got table'
broken load-type.lua 'return { load = 42 }' 'load-type.lua: load must be nil, false or a path' 'got 42'
broken load-empty.lua 'return { load = "" }' 'load-empty.lua: load must be ' 'got ""'
broken events-type.lua 'return { events = "flush" }' 'events-type.lua: events must be a list of' 'got "flush"'
broken events-bogus.lua 'return { events = { "flush", "bogus" } }' 'events-bogus.lua: events must be a list of' '"bogus" at index 2'
broken events-exit.lua 'return { events = { "exit" } }' 'events-exit.lua: events must be ' '("exit" is always an event)'
broken interval-type.lua 'return { interval = "1" }' 'interval-type.lua: interval must be nil or a number of seconds > 0, got "1"'
broken interval-zero.lua 'return { interval = 0 }' 'interval-zero.lua: interval must be ' 'got 0'
broken interval-missing.lua 'return { events = { "interval" } }' \
  'interval-missing.lua: interval must be a number of seconds > 0 when events include "interval", got nil'
broken save-type.lua 'return { save = "yes" }' 'save-type.lua: save must be a boolean' 'got "yes"'
broken name-type.lua 'return { name = 42 }' 'name-type.lua: name must be nil or a path' 'got 42'
broken backing-type.lua 'return { backing = 42 }' 'backing-type.lua: backing must be nil, a path or {file=, format=, embed=}, got 42'
broken backing-key.lua 'return { backing = { file = "b.raw", fmt = "raw" } }' 'backing-key.lua: backing must be {file=, format=, embed=}, got unknown key "fmt"'
broken backing-embed.lua 'return { backing = { file = "b.raw", embed = "yes" } }' 'backing-embed.lua: backing.embed must be a boolean, got "yes"'
broken compress-type.lua 'return { compress = "lz4" }' 'compress-type.lua: compress must be false, true, "deflate" or "zstd", got "lz4"'
broken saved-type.lua 'return { saved = 42 }' 'saved-type.lua: saved must be nil or a function, got 42'
# startup hooks given as functions that return the wrong thing or fail
# cluster_size(disk) needs the export size: known at the first client's open.
at_open () {
  local name=$1 src=$2 dir=$SCRATCH/open-$RANDOM$RANDOM one; shift 2
  mkdir -p "$dir"; printf '%s\n' "$src" > "$dir/$name"
  one=${src//$'\n'/ }
  checkv "first open: $name ${one:0:60}: both clients refused with the one error line" \
    refused_at_open "open-$name" "$@" -- null size=1M luacow-script="$dir/$name" luacow-hook-seconds=1
}
at_open cs-fn.lua 'return { cluster_size = function (disk) return 1000 end }' 'cs-fn.lua: cluster_size must be ' 'got 1000'
at_open cs-fn-error.lua 'return { cluster_size = function (disk) error("no size") end }' 'cs-fn-error.lua:1: no size'
broken load-fn.lua 'return { load = function (disk) return 42 end }' 'load-fn.lua: load must be ' 'got 42'
broken events-fn.lua 'return { events = function () return { "bogus" } end }' 'events-fn.lua: events must be ' '"bogus" at index 1'
broken interval-fn.lua 'return { events = { "interval" }, interval = function () return -1 end }' 'interval-fn.lua: interval must be ' 'got -1'
broken loop.lua 'while true do end' 'loop.lua:1: script: hook exceeded its time budget'
at_open cs-loop.lua 'return { cluster_size = function (disk)
  while true do end
end }' 'cs-loop.lua:2: cluster_size: hook exceeded its time budget'
broken memory.lua 'local s = string.rep("x", 1e9)
return {}' 'memory.lua: not enough memory'
broken exit.lua 'os.exit(0)' 'exit.lua:1: os.exit is not allowed in a policy'
startup_fails missing null size=1M luacow-script="$SCRATCH/does-not-exist.lua"
checkv "startup: a script that does not exist: one line naming it" \
  failed_at_startup "$SCRATCH/does-not-exist.lua" "cannot open"
echo 'return {}' > "$SCRATCH/twice.lua"
startup_fails twice null size=1M luacow-script="$SCRATCH/twice.lua" luacow-script="$SCRATCH/twice.lua"
checkv "startup: luacow-script= given twice: one error line" \
  failed_at_startup "luacow: luacow-script= given twice"

# ---------------------------------------------------------------- run time
note "--- failing hooks at run time lose no data"
mkbase "$SCRATCH/base.raw" $((2 << 20)) 31
BASE=$SCRATCH/base.raw

# rescued NAME 'LUA' TEXT...: nbdkit started in a fresh directory with
# luacow-script=policy.lua (LUA) and luacow-hook-seconds=1; a client
# writes, zeroes and reads everything; SIGTERM.  The exit save must fail
# with TEXT in the log and the overlay must be in the rescue file in the
# start directory: 0600, qemu-img check, identical (rebased) to what the
# client read.
rescued () {
  local name=$1 src=$2; shift 2
  local dir=$SCRATCH/rt-$name
  mkdir -p "$dir"; printf '%s\n' "$src" > "$dir/policy.lua"
  NB_CWD=$dir start_nb "rt-$name" file "$BASE" luacow-script="$dir/policy.lua" luacow-hook-seconds=1 \
    luacow-save="$dir/target.qcow2" || { fail "$name: nbdkit starts"; return; }
  client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$dir/seen.raw" "w:1000:100000:1" "z:4*cs:cs" "w:size-10:10:2" >/dev/null
  stop_nb
  local t
  checkv "$name: nbdkit exits by itself with status 0 (no signal, not killed)" test "$NB_RC" = 0
  for t in "$@"; do
    checkv "$name: the log has: $t" grep -qF -- "$t" "$NB_LOG"
  done
  local rescue
  rescue=$(ls "$dir"/luacow-rescue-*-*.qcow2 2>/dev/null | head -1)
  checkv "$name: the log names the rescue file in the start directory" \
    grep -qE "luacow: .*; the overlay was saved to the rescue file $dir/$RESCUE_RE$" "$NB_LOG"
  checkv "$name: rescue file luacow-rescue-<time>-<pid>-<random>.qcow2 exists" test -n "$rescue"
  [ -n "$rescue" ] || return
  checkv "$name: the rescue file passes qemu-img check" qcheck "$rescue"
  checkv "$name: the rescue file is mode 0600" test "$(mode_of "$rescue")" = 600
  cp "$rescue" "$dir/rb.qcow2"; qemu-img rebase -u -b "$BASE" -F raw "$dir/rb.qcow2"
  checkv "$name: the rescue file holds every byte the client saw" \
    qemu-img compare -f qcow2 -F raw "$dir/rb.qcow2" "$dir/seen.raw"
  checkv "$name: nothing at the policy's target" test ! -e "$dir/target.qcow2"
}

rescued save-loop 'return {
  save = function (ctx)
    while true do end
  end,
}' 'policy.lua:3: save: hook exceeded its time budget'
rescued name-error 'return {
  name = function (ctx) error("no name at " .. ctx.event) end,
}' 'policy.lua:2: no name at exit'
rescued name-type 'return { name = function (ctx) return 42 end }' \
  'policy.lua: name must be nil or a path (non-empty string), got 42'
rescued save-exit 'return {
  save = function (ctx) os.exit(3) end,
}' 'policy.lua:2: os.exit is not allowed in a policy'
rescued name-huge 'return {
  name = function (ctx) return string.rep("x", 1e9) end,
}' 'policy.lua: not enough memory'
rescued backing-error 'return { backing = function (ctx) return { file = 1 } end }' \
  'policy.lua: backing.file must be a path (non-empty string), got 1'
rescued compress-loop 'return { compress = function (ctx) while true do end end }' \
  'policy.lua:1: compress: hook exceeded its time budget'

# An error in saved: logged, the save is kept, no rescue.
dir=$SCRATCH/rt-saved; mkdir -p "$dir"
cat > "$dir/policy.lua" <<'EOF'
return {
  saved = function (ctx, result) error("saved failed for " .. result.path) end,
}
EOF
NB_CWD=$dir start_nb rt-saved file "$BASE" luacow-script="$dir/policy.lua" luacow-save="$dir/target.qcow2"
client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$dir/seen.raw" "w:0:70000:1" >/dev/null
stop_nb
checkv "saved error: logged with the script name and line" \
  grep -qF "luacow: policy.lua:2: saved failed for $dir/target.qcow2 (the save itself succeeded)" "$NB_LOG"
checkv "saved error: the save is kept" qcheck "$dir/target.qcow2"
cp "$dir/target.qcow2" "$dir/rb.qcow2"; qemu-img rebase -u -b "$BASE" -F raw "$dir/rb.qcow2"
checkv "saved error: the file holds what the client saw" qemu-img compare -f qcow2 -F raw "$dir/rb.qcow2" "$dir/seen.raw"
checkv "saved error: no rescue file" bash -c "! ls '$dir'/luacow-rescue-* 2>/dev/null"
checkv "saved error: nbdkit exits 0" test "$NB_RC" = 0

# A failing save at a flush: that flush fails with EIO, nbdkit serves on,
# and the exit save (which works) has everything.
for kind in error loop; do
  dir=$SCRATCH/rt-flush-$kind; mkdir -p "$dir"
  cat > "$dir/policy.lua" <<EOF
return {
  events = { "flush" },
  save = function (ctx)
    if ctx.event == "flush" then
      $( [ $kind = error ] && echo 'error("not now")' || echo 'while true do end' )
    end
    return ctx.event == "exit"
  end,
}
EOF
  NB_CWD=$dir start_nb rt-flush-$kind file "$BASE" luacow-script="$dir/policy.lua" luacow-save="$dir/target.qcow2" \
    luacow-hook-seconds=1
  checkv "flush, save hook $kind: the client's flush fails with EIO" \
    client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$dir/state" "w:0:5000:1" "F"
  want='policy.lua:5: not now'; [ $kind = loop ] && want='policy.lua:5: save: hook exceeded its time budget'
  checkv "flush, save hook $kind: the log names the event, script, line" grep -qF "luacow: flush event: $want" "$NB_LOG"
  checkv "flush, save hook $kind: nbdkit keeps serving (reads, writes, a second flush fails again)" \
    client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$dir/state" --seen "$dir/seen.raw" "w:cs:100:2" "F" "z:2*cs:cs"
  stop_nb
  checkv "flush, save hook $kind: nbdkit exits by itself with status 0" test "$NB_RC" = 0
  checkv "flush, save hook $kind: the exit save works and holds everything" \
    bash -c "qemu-img check '$dir/target.qcow2' >/dev/null && cp '$dir/target.qcow2' '$dir/rb.qcow2' && \
      qemu-img rebase -u -b '$BASE' -F raw '$dir/rb.qcow2' && qemu-img compare -q -f qcow2 -F raw '$dir/rb.qcow2' '$dir/seen.raw'"
done

# Nothing written and a failing policy: nothing to rescue, no file.
dir=$SCRATCH/rt-empty; mkdir -p "$dir"
printf 'return { save = function () error("x") end }\n' > "$dir/policy.lua"
NB_CWD=$dir start_nb rt-empty file "$BASE" luacow-script="$dir/policy.lua"
stop_nb
checkv "failing policy with an empty overlay: nbdkit exits by itself with status 0" test "$NB_RC" = 0
checkv "failing policy with an empty overlay: no rescue file" bash -c "[ -z \"\$(ls -A '$dir' | grep -v policy.lua)\" ]"

done_testing
