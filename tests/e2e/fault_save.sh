#!/usr/bin/env bash
# Saves under faults: the disk fills up, nbdkit is killed mid-save or
# right after a checkpoint, TMPDIR is unusable, the plugin below fails
# reads.  Plus the file-system hygiene of saves: modes, planted symlinks,
# client-controlled names.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"

P=$TOP/tests/e2e/policies      # the test policies (also: inline ones in $SCRATCH)
mkbase "$SCRATCH/base.raw" $((16 << 20)) 41
BASE=$SCRATCH/base.raw
# Save at every flush that has something, and at exit; to params.dir/target.qcow2.
sha () { sha256sum < "$1" | cut -d' ' -f1; }
only_target () {   # DIR: the directory holds target.qcow2 and nothing else
  local left; left=$(ls -A "$1")
  [ "$left" = target.qcow2 ] || { echo "in $1:" $left; return 1; }
}

# ----------------------------------------------------------- disk full
note "--- disk full during a save"
FULL=$SCRATCH/full; mkdir -p "$FULL"
if [ -z "${LUACOW_E2E_NO_MOUNT:-}" ] && mount -t tmpfs -o size=1m,mode=0755 luacow-e2e-full "$FULL" 2>/dev/null; then
  at_exit "umount -l '$FULL' 2>/dev/null"
  # A first save that fits: ~ 320 KiB.
  NB_CWD=$FULL start_nb full-1 file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$FULL"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:4096:1" >/dev/null
  stop_nb
  checkv "disk full: the first save fits and passes qemu-img check" qcheck "$FULL/target.qcow2"
  old=$(sha "$FULL/target.qcow2")
  # Then 2 MiB of data: the tmpfs (1 MiB, the old file still in it) fills up.
  NB_CWD=$FULL start_nb full-2 file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$FULL"
  checkv "disk full: the flush whose save does not fit fails with EIO" \
    client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/full.state" --seen "$SCRATCH/full.seen" \
    "w:0:2*M:2" "F"
  checkv "disk full: the error names the target and says why" \
    grep_log "luacow: flush event: save to $FULL/target.qcow2 failed: .*No space left on device"
  checkv "disk full: the earlier file is intact (sha256)" test "$(sha "$FULL/target.qcow2")" = "$old"
  checkv "disk full: no temporary file left" only_target "$FULL"
  checkv "disk full: nbdkit keeps serving" \
    client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/full.state" --seen "$SCRATCH/full.seen" "w:3*M:10:3"
  stop_nb
  checkv "disk full: at exit the save fails again" \
    grep_log "save to $FULL/target.qcow2 failed: .*No space left on device"
  checkv "disk full: the rescue is tried in the start directory first (also full)" \
    grep_log "luacow: rescue save in $FULL failed: .*No space left on device"
  rescue=$(ls "$TMPDIR"/luacow-rescue-*.qcow2 2>/dev/null | head -1)
  checkv "disk full: then in TMPDIR, which works" \
    grep_log "; the overlay was saved to the rescue file $TMPDIR/$RESCUE_RE$"
  checkv "disk full: the rescue file passes qemu-img check, mode 0600" \
    bash -c "[ -n '$rescue' ] && qemu-img check '$rescue' >/dev/null && [ \$(stat -c %a '$rescue') = 600 ]"
  cp "$rescue" "$SCRATCH/full-rb.qcow2" 2>/dev/null; qemu-img rebase -u -b "$BASE" -F raw "$SCRATCH/full-rb.qcow2" 2>/dev/null
  checkv "disk full: the rescue file holds every byte the client saw" \
    qemu-img compare -f qcow2 -F raw "$SCRATCH/full-rb.qcow2" "$SCRATCH/full.seen"
  checkv "disk full: the earlier file is still intact, nothing else in the full directory" \
    bash -c "[ \$(sha256sum < '$FULL/target.qcow2' | cut -d' ' -f1) = $old ] && [ \"\$(ls -A '$FULL')\" = target.qcow2 ]"
  rm -f "$TMPDIR"/luacow-rescue-*.qcow2
else
  # No mount here: a file size limit instead (SIGXFSZ ignored so that the
  # writes fail with EFBIG).  It applies to every file nbdkit writes, so
  # the rescue fails too: the log must say the overlay is lost.
  note "cannot mount a tmpfs here: using ulimit -f"
  mkdir -p "$SCRATCH/lim"
  NB_CWD=$SCRATCH/lim start_nb lim-1 file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$SCRATCH/lim"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:4096:1" >/dev/null
  stop_nb
  old=$(sha "$SCRATCH/lim/target.qcow2")
  (
    trap "" XFSZ; ulimit -f 400   # KiB: the store (~260 KiB) fits, the new file (~640 KiB) not
    NB_CWD=$SCRATCH/lim start_nb lim-2 file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$SCRATCH/lim"
    client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:4096:2" "p:M:4*cs:3" "F" > "$SCRATCH/lim.flush"
    stop_nb
  )
  checkv "file limit: the flush whose save does not fit fails with EIO" grep -q 'flush failed as expected' "$SCRATCH/lim.flush"
  checkv "file limit: the error names the target and says why" \
    grep_log "save to $SCRATCH/lim/target.qcow2 failed: .*File too large" "$SCRATCH/lim-2.log"
  checkv "file limit: the earlier file is intact (sha256)" test "$(sha "$SCRATCH/lim/target.qcow2")" = "$old"
  checkv "file limit: no temporary file left" only_target "$SCRATCH/lim"
  checkv "file limit: rescue tried in the start directory, then TMPDIR, then reported lost" \
    bash -c "grep -q 'rescue save in $SCRATCH/lim failed' '$SCRATCH/lim-2.log' && grep -q 'rescue save in $TMPDIR failed' '$SCRATCH/lim-2.log' && grep -q 'the overlay is lost' '$SCRATCH/lim-2.log'"
fi

# ------------------------------------------------- SIGKILL during a save
note "--- SIGKILL during a save"
# The delay filter below luacow makes every plugin read take 20 ms; a
# save completing 60 partly written clusters from the plugin takes ~2.5 s.
# The save's anonymous file shows in /proc/PID/fd as "DIR/#N (deleted)".
saving () { ls -l "/proc/$1/fd" 2>/dev/null | grep -q -- "-> $2/#"; }
OPS=""; for i in $(seq 0 59); do OPS+=" p:$i*cs+5:1:$i"; done
for after in 0 0.5 1.2 2 3.5; do
  d=$SCRATCH/kill-$after; mkdir -p "$d"
  NB_CWD=$d start_nb "kill-$after" --filter=delay file "$BASE" rdelay=20ms luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$SCRATCH/$after-state-old" "w:M:4096:1" "f" >/dev/null
  old=$(sha "$d/target.qcow2")
  cp "$SCRATCH/$after-state-old" "$SCRATCH/$after-state-new"
  # shellcheck disable=SC2086
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$SCRATCH/$after-state-new" $OPS >/dev/null
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "f" >/dev/null 2>&1 &
  flusher=$!
  seen=no
  for _ in $(seq 1 200); do saving "$NB_PID" "$d" && { seen=yes; break; }; sleep 0.02; done
  sleep "$after"
  kill -KILL "$NB_PID"; wait "$NB_PID" 2>/dev/null; wait "$flusher" 2>/dev/null
  checkv "SIGKILL ${after}s into a save: the save had started" test $seen = yes
  checkv "SIGKILL ${after}s into a save: no temporary file remains" only_target "$d"
  if [ "$(sha "$d/target.qcow2")" = "$old" ]; then
    ok "SIGKILL ${after}s into a save: the target is the old file, unchanged"
    state=$SCRATCH/$after-state-old
  else
    checkv "SIGKILL ${after}s into a save: the target is a complete new file (qemu-img check)" qcheck "$d/target.qcow2"
    state=$SCRATCH/$after-state-new
  fi
  run_nb "kill-$after-reload" file "$BASE" luacow-load="$d/target.qcow2" -- \
    "$PY $CLIENT ops \"\$uri\" --base $BASE --cs 65536 --state $state"
  checkv "SIGKILL ${after}s into a save: the target reloads to exactly its checkpoint" test "$NB_RC" = 0
done

# ---------------------------------------- SIGKILL after acknowledged flushes
note "--- SIGKILL after acknowledged flushes"
d=$SCRATCH/acked; mkdir -p "$d"
start_nb acked file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$SCRATCH/state-$(basename "$d")" "w:0:100000:1" "z:2*M:M" "f" >/dev/null
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$SCRATCH/state-$(basename "$d")" "w:5*M+3:70000:2" "t:8*M:cs" "f" >/dev/null
# written but never flushed: may be lost
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:10*M:4096:3" "z:0:cs" >/dev/null
stop_nb KILL
checkv "SIGKILL after flushes: the checkpoint passes qemu-img check" qcheck "$d/target.qcow2"
checkv "SIGKILL after flushes: no temporary file" only_target "$d"
run_nb acked-reload file "$BASE" luacow-load="$d/target.qcow2" -- \
  "$PY $CLIENT ops \"\$uri\" --base $BASE --cs 65536 --state $SCRATCH/state-$(basename "$d")"
checkv "SIGKILL after flushes: every flushed write, zero and trim is in the file (and nothing later)" test "$NB_RC" = 0

# ----------------------------------------------------------- TMPDIR
note "--- TMPDIR unusable"
mkdir -p "$SCRATCH/ro"
tmpdir_fails () {
  local label=$1 dir=$2
  NB_ENV="TMPDIR=$dir" startup_fails tmpdir null size=1M luacow-save="$SCRATCH/never.qcow2" luacow-journal=off
  checkv "TMPDIR $label: nbdkit stops at startup with one clear line" \
    failed_at_startup "luacow: cannot create the overlay store in $dir: " "(set TMPDIR to a writable directory)"
}
tmpdir_fails "does not exist" "$SCRATCH/no/such/dir"
tmpdir_fails "is a file" "$BASE"
if [ -z "${LUACOW_E2E_NO_MOUNT:-}" ] && mount -t tmpfs -o ro,size=64k luacow-e2e-ro "$SCRATCH/ro" 2>/dev/null; then
  at_exit "umount -l '$SCRATCH/ro' 2>/dev/null"
  tmpdir_fails "is read-only" "$SCRATCH/ro"
else
  note "cannot mount a read-only tmpfs: (as root, chmod does not make a directory unwritable)"
fi

# ---------------------------------------- the plugin below fails reads
note "--- the plugin below fails reads"
d=$SCRATCH/perr; mkdir -p "$d"
TRIGGER=$SCRATCH/perr-trigger
start_nb perr --filter=error file "$BASE" error-pread-rate=1 error-pread-file="$TRIGGER" \
  luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
# A partly written cluster: the save must read the rest of it from the
# plugin.  Another client stays connected meanwhile, so the writer's
# close is not the export's last (which would copy the rest, save_settle).
hold_open "$NB_URI"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$SCRATCH/state-$(basename "$d")" "w:1000:100:1" >/dev/null
touch "$TRIGGER"
checkv "failing plugin: the flush whose save needs the plugin fails with EIO" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "F"
checkv "failing plugin: clear error naming the cluster" \
  grep_log "luacow: flush event: save to $d/target.qcow2 failed: reading cluster 0 \(offset 0\) failed: Input/output error"
checkv "failing plugin: no file written" test -z "$(ls -A "$d")"
rm -f "$TRIGGER"
checkv "failing plugin: once the errors stop, the next flush saves" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "f"
checkv "failing plugin: the file passes qemu-img check" qcheck "$d/target.qcow2"
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
stop_nb
run_nb perr-reload file "$BASE" luacow-load="$d/target.qcow2" -- \
  "$PY $CLIENT ops \"\$uri\" --base $BASE --cs 65536 --state $SCRATCH/state-$(basename "$d")"
checkv "failing plugin: the later save holds the write, completed from the plugin" test "$NB_RC" = 0

# A filter below luacow that sleeps (rate, delay, retry use nbdkit_nanosleep)
# fails every sleep once nbdkit is shutting down, which is when the exit
# save runs: partly written clusters cannot be completed from the plugin.
d=$SCRATCH/rate; mkdir -p "$d"
NB_CWD=$d start_nb rate --filter=rate file "$BASE" rate=1M luacow-save="$d/target.qcow2"
OPS=""; for i in $(seq 0 40); do OPS+=" p:$i*cs+5:1:$i"; done
# shellcheck disable=SC2086
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$SCRATCH/state-rate" $OPS >/dev/null
stop_nb
# Whichever file it reached, it must hold every write the client made.
f=$d/target.qcow2
[ -f "$f" ] || f=$(ls "$d"/luacow-rescue-*.qcow2 "$TMPDIR"/luacow-rescue-*.qcow2 2>/dev/null | head -1)
checkv "a sleeping filter below luacow (rate=1M): the exit save reaches a file" test -n "$f"
if [ -n "$f" ]; then
  checkv "  that file passes qemu-img check" qcheck "$f"
  run_nb rate-reload file "$BASE" luacow-load="$f" -- \
    "$PY $CLIENT ops \"\$uri\" --base $BASE --cs 65536 --state $SCRATCH/state-rate"
  checkv "  and reloads to exactly what the client wrote" test "$NB_RC" = 0
fi
rm -f "$TMPDIR"/luacow-rescue-*.qcow2

# ------------------------------------------------------------ modes
note "--- modes"
d=$SCRATCH/modes; mkdir -p "$d"
NB_CWD=$d NB_ENV="" start_nb modes file "$BASE" luacow-save="$d/umask0.qcow2"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:10:1" >/dev/null
stop_nb
checkv "a save is mode 0600" test "$(mode_of "$d/umask0.qcow2")" = 600
( umask 000
  NB_CWD=$d start_nb modes-umask file "$BASE" luacow-save="$d/umask000.qcow2"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:10:1" >/dev/null
  stop_nb
  printf 'return { name = function () error("x") end }\n' > "$d/fail.lua"
  NB_CWD=$d start_nb modes-rescue file "$BASE" luacow-script="$d/fail.lua"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$d/rescue.seen" "w:0:10:1" >/dev/null
  stop_nb )
checkv "a save is mode 0600 even under umask 000" test "$(mode_of "$d/umask000.qcow2")" = 600
r=$(ls "$d"/luacow-rescue-*.qcow2 2>/dev/null | head -1)
checkv "a rescue file is mode 0600 even under umask 000" bash -c "[ -n '$r' ] && [ \$(stat -c %a '$r') = 600 ]"
checkv "  and holds the write" bash -c "cp '$r' '$d/rrb.qcow2' && qemu-img rebase -u -b '$BASE' -F raw '$d/rrb.qcow2' && \
  qemu-img compare -q -f qcow2 -F raw '$d/rrb.qcow2' '$d/rescue.seen'"

# ---------------------------------------------------- planted symlinks
note "--- planted symlinks"
d=$SCRATCH/sym; mkdir -p "$d/out"
echo "precious" > "$SCRATCH/victim"; chmod 0644 "$SCRATCH/victim"
vsum=$(sha "$SCRATCH/victim")
ln -s "$SCRATCH/victim" "$d/out/target.qcow2"
NB_CWD=$d start_nb sym file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d/out"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:10:1" "f" >/dev/null
checkv "a symlink at the target: the save replaces the link, the file it pointed to is untouched" \
  bash -c "[ ! -L '$d/out/target.qcow2' ] && [ -f '$d/out/target.qcow2' ] && [ \$(sha256sum < '$SCRATCH/victim' | cut -d' ' -f1) = $vsum ]"
checkv "  and the new file is 0600 (not the link target's mode)" test "$(mode_of "$d/out/target.qcow2")" = 600
stop_nb
# Links at the rescue names older versions would pick (time and pid, for
# the next seconds of this nbdkit's pid), in the start directory and in
# TMPDIR; save_hostile.sh plants more.
printf 'return { name = function () error("no name") end }\n' > "$d/fail.lua"
NB_CWD=$d start_nb sym-rescue file "$BASE" luacow-script="$d/fail.lua"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$d/seen.raw" "w:0:5000:2" >/dev/null
now=$(date +%s)
for t in $(seq $((now - 1)) $((now + 15))); do
  ln -s "$SCRATCH/victim" "$d/luacow-rescue-$t-$NB_PID.qcow2"
  ln -s "$SCRATCH/victim" "$TMPDIR/luacow-rescue-$t-$NB_PID.qcow2"
done
stop_nb
r=$(grep -oE "saved to the rescue file .*" "$NB_LOG" | sed 's/saved to the rescue file //')
checkv "a planted link at the rescue name: the victim is untouched" test "$(sha "$SCRATCH/victim")" = "$vsum"
checkv "  the rescue file is a regular file holding the data, not a link" \
  bash -c "[ -n '$r' ] && [ -f '$r' ] && [ ! -L '$r' ] && qemu-img check '$r' >/dev/null && cp '$r' '$d/rb.qcow2' && \
    qemu-img rebase -u -b '$BASE' -F raw '$d/rb.qcow2' && qemu-img compare -q -f qcow2 -F raw '$d/rb.qcow2' '$d/seen.raw'"
find "$d" "$TMPDIR" -maxdepth 1 -type l -name 'luacow-rescue-*' -delete

# ------------------------------------------- client-controlled names
note "--- nothing the client sends becomes part of a path"
d=$SCRATCH/names; mkdir -p "$d/start"
cat > "$d/dump.lua" <<'EOF'
-- Saves at close and exit; records every ctx string.
local luacow = require "luacow"
local function dump (t, prefix, out)
  for k, v in pairs(t) do
    if type(v) == "table" then dump(v, prefix .. k .. ".", out)
    else out[#out + 1] = prefix .. tostring(k) .. "=" .. tostring(v) end
  end
end
return {
  events = { "close" },
  save = function (ctx) return ctx.written_bytes > 0 end,
  name = function (ctx) return luacow.expand("{params.tag}-{export}-{event}.qcow2", ctx) end,
  saved = function (ctx, r)
    local out = {}
    dump(ctx, "", out)
    local f = assert(io.open(ctx.params.out, "a")); f:write(table.concat(out, "\n"), "\n"); f:close()
  end,
}
EOF
pwned () { { find / /tmp -maxdepth 2 -name '*luacow-pwned*'; find "$SCRATCH" -name '*luacow-pwned*' -not -path "$d/start/*"; } 2>/dev/null | wc -l; }
before=$(pwned)
NB_CWD=$d/start start_nb names file "$BASE" luacow-script="$d/dump.lua" luacow-tag=vm luacow-out="$d/ctx.txt"
for name in "../../luacow-pwned" "/tmp/luacow-pwned" "{event}luacow-pwned" "luacow-pwned/../../x" "$(printf 'luacow-pwned\nx')"; do
  EXPORT_NAME=$name client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:10:1" >/dev/null ||
    fail "a client with export name '$name' is served"
done
stop_nb
# Each name is an export of its own (issue 11), saved where {export}'s
# safe form puts it: in the start directory, never a path of the client's.
checkv "export names: each name's close and exit saves, all in the start directory" \
  test "$(ls -A "$d/start" | grep -c '^vm-[a-z0-9._%-]*-\(close\|exit\)\.qcow2$')" -eq 10
checkv "export names: nothing else in the start directory" test "$(ls -A "$d/start" | wc -l)" -eq 10
checkv "export names: no file named after an export name anywhere else" \
  test "$(pwned)" = "$before"
checkv "export names: the policy sees them only as ctx.export (or in the safe form)" \
  bash -c "! grep 'pwned' '$d/ctx.txt' | grep -v '^export=' | grep -v '^last_save.path=$d/start/vm-'"

done_testing
