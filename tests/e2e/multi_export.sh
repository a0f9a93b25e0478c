#!/bin/bash
# One overlay per export (issue 11): each export name a client opens gets
# its own overlay, journal and saves; {export} makes a safe file name of
# the client's name; two exports never share a file; a cap bounds them.
. "$(dirname "$0")/lib.sh"
IO=$TOP/tests/e2e/src/export_io.py
S=$SCRATCH
hex () { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }
# io SOCK NAME OP...: one connection to export NAME.
io () { local sock=$1 name=$2; shift 2; "$IO" "$S/$sock" "$(hex "$name")" "$@"; }
# refused SOCK NAME: the open of export NAME fails.
refused () { ! io "$1" "$2" r:0:0:1 2>/dev/null; }
logged () { grep -q -- "$1" "$S/nbdkit.log"; }

mkdir -p "$S/dir" "$S/ov" "$S/h"
head -c 1M /dev/zero | tr '\0' 'A' >"$S/dir/a.img"
head -c 1M /dev/zero | tr '\0' 'B' >"$S/dir/b.img"

# ---------------------------------------------- file dir=: two exports
run_nbdkit m.sock file dir="$S/dir" luacow-save="$S/ov/ov-{export}.qcow2" || exit 1
check "export a.img takes a write and a flush" io m.sock a.img w:0:0x61:4096 f
check "export b.img takes a write and a flush" io m.sock b.img w:4096:0x62:4096 f
check "a.img reads its own write and its own base" io m.sock a.img r:0:0x61:4096 r:4096:0x41:4096
check "b.img reads its own base, not a.img's write" io m.sock b.img r:0:0x42:4096 r:4096:0x62:4096
check "each export has its own journal while serving" \
  test -f "$S/ov/ov-a.img.qcow2.journal" -a -f "$S/ov/ov-b.img.qcow2.journal"
stop_nbdkit
check "the exit saved each export to its own file" \
  test -f "$S/ov/ov-a.img.qcow2" -a -f "$S/ov/ov-b.img.qcow2"
check "the exit save names the export in its log line" \
  grep -q "saved $S/ov/ov-b.img.qcow2 (exit of export \"b.img\")" "$S/nbdkit.log"
check "no journal is left after the exit saves" \
  test ! -e "$S/ov/ov-a.img.qcow2.journal" -a ! -e "$S/ov/ov-b.img.qcow2.journal"
check "both saves pass qemu-img check" \
  sh -c "qemu-img check -q '$S/ov/ov-a.img.qcow2' && qemu-img check -q '$S/ov/ov-b.img.qcow2'"

run_nbdkit m.sock file dir="$S/dir" luacow-save="$S/ov/ov-{export}.qcow2" \
  luacow-load="$S/ov/ov-{export}.qcow2" || exit 1
check "a.img reloads its own file" io m.sock a.img r:0:0x61:4096 r:4096:0x41:4096
check "b.img reloads its own file" io m.sock b.img r:0:0x42:4096 r:4096:0x62:4096
check "a name the plugin refuses gets no overlay" refused m.sock nosuch.img

# ---------------------------------------------- crash: each journal recovers
io m.sock a.img w:8192:0x63:4096 f && io m.sock b.img w:8192:0x64:4096 f
kill -KILL "$NBDKIT_PID"; wait "$NBDKIT_PID" 2>/dev/null
: >"$S/nbdkit.log"
run_nbdkit m.sock file dir="$S/dir" luacow-save="$S/ov/ov-{export}.qcow2" \
  luacow-load="$S/ov/ov-{export}.qcow2" || exit 1
check "after kill -9, a.img has its flushed write and its reload" \
  io m.sock a.img r:0:0x61:4096 r:8192:0x63:4096
check "after kill -9, b.img has its own" io m.sock b.img r:4096:0x62:4096 r:8192:0x64:4096
check "one recovery line per export" \
  test "$(grep -c 'recovered journal' "$S/nbdkit.log")" -eq 2
stop_nbdkit

# ---------------------------------------------- a save path two exports share
: >"$S/nbdkit.log"
run_nbdkit s.sock file dir="$S/dir" luacow-save="$S/one.qcow2" || exit 1
check "the first export opens" io s.sock a.img w:0:0x71:4096 f
check "a second export with the same save path is refused" refused s.sock b.img
check "... with a line that names both exports and says what to do" \
  grep -q "export \"b.img\": the journal $S/one.qcow2.journal is export \"a.img\"'s already.*{export}" \
  "$S/nbdkit.log"
check "the first export is untouched" io s.sock a.img r:0:0x71:4096
stop_nbdkit
check "the shared path holds the first export's data" \
  qemu-io -f qcow2 -r -c 'read -P 0x71 0 4096' "$S/one.qcow2"
: >"$S/nbdkit.log"
run_nbdkit s.sock file dir="$S/dir" luacow-save="$S/two.qcow2" luacow-journal=off || exit 1
io s.sock a.img w:0:0x72:4096
check "without a journal, the save path alone is claimed too" refused s.sock b.img
check "... and the line says so" logged "the save path $S/two.qcow2 is export \"a.img\"'s already"
stop_nbdkit

# ---------------------------------------------- one export's bad file
# A file that cannot be reloaded fails that export's opens, with a line
# naming it; the other exports are served.
mkdir -p "$S/bad"
head -c 4096 /dev/urandom >"$S/bad/ov-b.img.qcow2"
: >"$S/nbdkit.log"
run_nbdkit bad.sock file dir="$S/dir" luacow-load="$S/bad/ov-{export}.qcow2" \
  luacow-save="$S/bad/ov-{export}.qcow2" || exit 1
check "an export whose file is damaged is refused" refused bad.sock b.img
check "... with one line naming the export and the file" \
  logged "luacow: export \"b.img\": $S/bad/ov-b.img.qcow2: "
check "... every time" refused bad.sock b.img
check "another export is served meanwhile" io bad.sock a.img w:0:0x7a:4096 r:0:0x7a:4096
stop_nbdkit
check "the damaged file is left as it was" test "$(stat -c %s "$S/bad/ov-b.img.qcow2")" -eq 4096
check "the other export saved" test -f "$S/bad/ov-a.img.qcow2"

# ---------------------------------------------- the cap
head -c 1M /dev/zero >"$S/one.img"
run_nbdkit c.sock file "$S/one.img" luacow-max-exports=2 || exit 1
io c.sock x w:0:0x11:4096 && io c.sock y w:0:0x22:4096
check "past luacow-max-exports=2 an open fails" refused c.sock z
check "... saying so" grep -q 'export "z" refused: 2 exports have an overlay already.*luacow-max-exports=2' "$S/nbdkit.log"
check "the existing overlays are untouched" io c.sock x r:0:0x11:4096
check "... both of them" io c.sock y r:0:0x22:4096
stop_nbdkit
check "a bad luacow-max-exports stops the start" \
  bash -c "! nbdkit -U - --filter='$FILTER' file '$S/one.img' luacow-max-exports=0 --run true 2>'$S/cap.err' && grep -q 'luacow-max-exports must be' '$S/cap.err'"

# ---------------------------------------------- hostile names
long=$(printf 'x%.0s' $(seq 4000))
names=("../../etc/x" ".hidden" "a/b" "" "${long}1" "${long}2" "Disk" "disk" "DISK"
       $'\xc3\xa9' $'e\xcc\x81' "%2f" "/" "%" ".." "x y")
start_hostile () {
  run_nbdkit h.sock file "$S/one.img" luacow-save="$S/h/ov-{export}.qcow2" \
    luacow-load="$S/h/ov-{export}.qcow2" luacow-max-exports=100 "$@"
}
start_hostile || exit 1
i=0 bad=0
for n in "${names[@]}"; do
  i=$((i + 1)); io h.sock "$n" w:0:$i:4096 f || bad=$((bad + 1))
done
check "every hostile name got an overlay of its own" test $bad -eq 0
stop_nbdkit
files=$(ls -A "$S/h")
check "one save per name, all inside the save directory" test "$(ls -A "$S/h" | wc -l)" -eq ${#names[@]}
check "no file name starts with a dot or has a character outside [a-z0-9._%-]" \
  bash -c "! grep -v '^ov-[a-z0-9._%-]*\.qcow2\$' <<<'$files' && ! grep -q '^\.' <<<'$files'"
check "nothing was written outside it" \
  test "$(find "$S" -name '*.qcow2' -not -path "$S/h/*" -not -path "$S/ov/*" -not -path "$S/bad/*" | wc -l)" -eq 2
check "the 4 KiB names have short file names" \
  test "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' <<<"$files")" -le 90
start_hostile || exit 1
i=0 bad=0
for n in "${names[@]}"; do
  i=$((i + 1)); io h.sock "$n" r:0:$i:4096 || bad=$((bad + 1))
done
check "each name reloads exactly its own data (no two names share a file)" test $bad -eq 0
stop_nbdkit

# ---------------------------------------------- the last client completes clusters
# nbdkit 1.32 gives a context opened outside a connection no export name,
# so the exit save of a named export must read nothing from the plugin:
# its last client copies the rest of each partly written cluster.
mkdir -p "$S/e"
: >"$S/nbdkit.log"
run_nbdkit e.sock --filter=error file dir="$S/dir" error-pread-rate=1 \
  error-pread-file="$S/e/trigger" luacow-save="$S/e/ov-{export}.qcow2" || exit 1
io e.sock b.img w:8192:0x65:4096
touch "$S/e/trigger"               # from now on every read of the plugin fails
stop_nbdkit
check "the exit save of a named export needs no plugin read after its last client left" \
  test -f "$S/e/ov-b.img.qcow2"
check "... and holds the write and the plugin's data around it" \
  qemu-io -f qcow2 -r -c 'read -P 0x42 0 8192' -c 'read -P 0x65 8192 4096' \
    -c 'read -P 0x42 12288 53248' "$S/e/ov-b.img.qcow2"

# ---------------------------------------------- an interval save borrows a client
# While a client of the export is connected, an interval save reads the
# rest of a partly written cluster through that client's context.
cat >"$S/i.lua" <<'LUA'
local luacow = require "luacow"
return {
  events = { "interval" }, interval = 0.3, journal = false,
  save = function (ctx) return ctx.event == "interval" and ctx.dirty_bytes > 0 end,
  name = function (ctx) return luacow.expand(ctx.params.dir .. "/i-{export}.qcow2", ctx) end,
}
LUA
mkdir -p "$S/i"
: >"$S/nbdkit.log"
run_nbdkit i.sock file dir="$S/dir" luacow-script="$S/i.lua" luacow-dir="$S/i" || exit 1
hold_open "nbd+unix:///a.img?socket=$S/i.sock"
io i.sock a.img w:4096:0x69:4096
for _ in $(seq 1 100); do [ -f "$S/i/i-a.img.qcow2" ] && break; sleep 0.1; done
check "an interval save of a named export, a client connected" test -f "$S/i/i-a.img.qcow2"
check "... read the plugin's data around the write through that client" \
  qemu-io -f qcow2 -r -c 'read -P 0x41 0 4096' -c 'read -P 0x69 4096 4096' \
    -c 'read -P 0x41 8192 57344' "$S/i/i-a.img.qcow2"
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
stop_nbdkit

# ---------------------------------------------- the policy sees the export
cat >"$S/p.lua" <<'LUA'
local luacow = require "luacow"
return {
  name = function (ctx) return luacow.expand(ctx.params.dir .. "/p-{export}.qcow2", ctx) end,
  journal = false,
  cluster_size = function (disk) return disk.export == "a.img" and 131072 or 65536 end,
  saved = function (ctx) luacow.log("saved export=" .. ctx.export) end,
}
LUA
mkdir -p "$S/p"
run_nbdkit p.sock -v file dir="$S/dir" luacow-script="$S/p.lua" luacow-dir="$S/p" || exit 1
io p.sock a.img w:0:0x31:512 && io p.sock b.img w:0:0x32:512
stop_nbdkit
check "the saved hook sees ctx.export of a.img" logged "policy: saved export=a.img"
check "... and of b.img" logged "policy: saved export=b.img"
check "the policy's own names, one per export" test -f "$S/p/p-a.img.qcow2" -a -f "$S/p/p-b.img.qcow2"
check "cluster_size is evaluated per export, with disk.export" \
  bash -c "qemu-img info '$S/p/p-a.img.qcow2' | grep -q 'cluster_size: 131072' && qemu-img info '$S/p/p-b.img.qcow2' | grep -q 'cluster_size: 65536'"

# ---------------------------------------------- a rescue file names the export
cat >"$S/r.lua" <<'LUA'
return { journal = false, name = function (ctx)
  if ctx.export == "b.img" then error("no name for b") end
  return ctx.params.dir .. "/r-a.qcow2" end }
LUA
mkdir -p "$S/r"
( cd "$S/r" && nbdkit -f -U "$S/r.sock" --filter="$FILTER" file dir="$S/dir" \
    luacow-script="$S/r.lua" luacow-dir="$S/r" 2>>"$S/nbdkit.log" & echo $! >"$S/r.pid" )
for _ in $(seq 1 100); do [ -S "$S/r.sock" ] && break; sleep 0.05; done
io r.sock a.img w:0:0x51:4096 && io r.sock b.img w:0:0x52:4096
kill -TERM "$(cat "$S/r.pid")"
for _ in $(seq 1 200); do kill -0 "$(cat "$S/r.pid")" 2>/dev/null || break; sleep 0.05; done
check "the export whose policy failed went to a rescue file named after it" \
  bash -c "ls '$S/r' | grep -q '^luacow-rescue-b.img-.*\.qcow2\$'"
check "... and the log says whose overlay it holds" \
  grep -q 'the overlay of export "b.img" was saved to the rescue file' "$S/nbdkit.log"
check "the other export saved as its policy says" test -f "$S/r/r-a.qcow2"

no_crash
done_testing
