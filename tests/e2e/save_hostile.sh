#!/usr/bin/env bash
# Saves in a shared directory with a hostile neighbour (issue 10, items
# 9-12): another user (nobody) plants files, directories and symlinks in
# a sticky world-writable directory where root's nbdkit saves.  Nothing
# planted may hijack, weaken or stop a save or a rescue, and temporaries
# of our own left by a killed save go at the next save.  Runs as root.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"

P=$TOP/tests/e2e/policies
mkbase "$SCRATCH/base.raw" $((4 << 20)) 43
BASE=$SCRATCH/base.raw
sha () { sha256sum < "$1" | cut -d' ' -f1; }
as_other () { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
owner_mode () { stat -c '%U %a' "$1"; }

# The shared directory, and TMPDIR (the rescue files' second choice), are
# sticky and world-writable; nobody must be able to reach them.
S=$SCRATCH/shared
mkdir -p "$S"
chmod 0711 "$SCRATCH"
chmod 01777 "$S" "$TMPDIR"
check "setup: running as root" test "$(id -u)" = 0
check "setup: nobody can write the shared directory and TMPDIR" \
  as_other bash -c "touch '$S/.probe' '$TMPDIR/.probe' && rm '$S/.probe' '$TMPDIR/.probe'"

# save_once NAME TARGET: one nbdkit that writes a cluster and saves to
# TARGET at exit; the client's view goes to $SCRATCH/NAME.seen.
save_once () {
  NB_CWD=$S start_nb "$1" file "$BASE" luacow-save="$2"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$SCRATCH/$1.seen" "w:0:4096:7" >/dev/null
  stop_nb
}
# holds FILE SEEN: FILE + the base reads as SEEN.
holds () {
  cp "$1" "$SCRATCH/holds.qcow2" && qemu-img rebase -u -b "$BASE" -F raw "$SCRATCH/holds.qcow2" &&
    qemu-img compare -q -f qcow2 -F raw "$SCRATCH/holds.qcow2" "$2"
}

# ------------------------------------------------ 9: the replaced file's mode
note "--- 9: a replaced file lends at most its 0777 bits, and only if it is ours"
for m in 0666 06777; do
  t=$S/theirs-$m.qcow2
  as_other bash -c "touch '$t' && chmod $m '$t'"
  save_once "mode-theirs-$m" "$t"
  checkv "another user's $m target: the saved file is root's and 0600" \
    test "$(owner_mode "$t")" = "root 600"
  checkv "  and it holds the save" holds "$t" "$SCRATCH/mode-theirs-$m.seen"
done
for m in 0640:640 06755:755 01644:644; do
  t=$S/ours-${m%%:*}.qcow2
  : > "$t"; chmod "${m%%:*}" "$t"
  save_once "mode-ours-${m%%:*}" "$t"
  checkv "our own ${m%%:*} target: the saved file keeps ${m##*:} (no setuid, setgid or sticky bit)" \
    test "$(owner_mode "$t")" = "root ${m##*:}"
done

# ----------------------------------------- 10: planted temporary names
note "--- 10: links at every temporary name the old pattern would pick"
d=$S/tmpnames; mkdir -p "$d"; chmod 01777 "$d"
echo precious > "$SCRATCH/victim"; vsum=$(sha "$SCRATCH/victim")
NB_CWD=$S start_nb tmpnames file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
# .target.qcow2.luacow-PID-<monotonic ms>.tmp for the next 30 s.
as_other "$PY" - "$d" "$NB_PID" "$SCRATCH/victim" <<'EOF'
import os, sys, time
d, pid, victim = sys.argv[1], sys.argv[2], sys.argv[3]
now = int(time.monotonic() * 1000)
for ms in range(now - 1000, now + 30000):
    os.symlink(victim, "%s/.target.qcow2.luacow-%s-%d.tmp" % (d, pid, ms))
EOF
planted=$(find "$d" -maxdepth 1 -type l | wc -l)
checkv "31,000 links planted by nobody" test "$planted" = 31000
for i in 1 2 3; do
  checkv "flush $i saves despite the links (no EIO)" \
    client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --state "$SCRATCH/tmpnames.state" \
      --seen "$SCRATCH/tmpnames.seen" "w:$i*cs:4096:$i" "f"
done
checkv "  the target holds the last flush" holds "$d/target.qcow2" "$SCRATCH/tmpnames.seen"
stop_nb
checkv "  the exit save too: no error, no rescue" \
  bash -c "! grep -E 'error|rescue' '$NB_LOG' && ! ls '$S'/luacow-rescue-* '$TMPDIR'/luacow-rescue-* 2>/dev/null"
checkv "  the link target is untouched and the links are still nobody's links" \
  bash -c "[ \$(sha256sum < '$SCRATCH/victim' | cut -d' ' -f1) = $vsum ] && \
    [ \$(find '$d' -maxdepth 1 -type l -user nobody | wc -l) = 31000 ]"
checkv "  no temporary of ours left" \
  test -z "$(find "$d" -maxdepth 1 -name '.target.qcow2.luacow-*' ! -type l)"
rm -rf "$d"

# ------------------------------------------------ 11: planted rescue names
note "--- 11: the rescue names the old pattern would pick, for the next hour"
printf 'return { name = function () error("no name") end }\n' > "$SCRATCH/fail.lua"
# plant KIND PID: in the start directory and TMPDIR, as nobody, for every
# second of the next hour: directories, or empty 0666 files.
plant () {
  as_other "$PY" - "$1" "$2" "$S" "$TMPDIR" <<'EOF'
import os, sys, time
kind, pid, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
now = int(time.time())
for d in dirs:
    for t in range(now - 2, now + 3600):
        p = "%s/luacow-rescue-%d-%s.qcow2" % (d, t, pid)
        if kind == "dir":
            os.mkdir(p)
        else:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            os.chmod(p, 0o666)
EOF
}
for kind in dir file; do
  NB_CWD=$S start_nb "rescue-$kind" file "$BASE" luacow-script="$SCRATCH/fail.lua"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$SCRATCH/rescue-$kind.seen" "w:0:70000:5" >/dev/null
  plant "$kind" "$NB_PID"
  stop_nb
  r=$(grep -oE "the overlay was saved to the rescue file .*" "$NB_LOG" | sed 's/.*rescue file //')
  checkv "planted ${kind}s at the rescue names: the overlay is rescued" \
    bash -c "[ -n '$r' ] && ! grep -q 'overlay is lost' '$NB_LOG'"
  if [ -n "$r" ]; then
    checkv "  in the start directory, under a fresh name" \
      bash -c "[[ '$r' =~ ^$S/$RESCUE_RE\$ ]]"
    checkv "  a regular file of root's, mode 0600" \
      bash -c "[ -f '$r' ] && [ ! -L '$r' ] && [ \"\$(stat -c '%U %a' '$r')\" = 'root 600' ]"
    checkv "  that passes qemu-img check" qcheck "$r"
    checkv "  and holds every byte the client saw" holds "$r" "$SCRATCH/rescue-$kind.seen"
    rm -f "$r"
  fi
  checkv "  what nobody planted is still there, nobody's, untouched" \
    test "$(find "$S" "$TMPDIR" -maxdepth 1 -name 'luacow-rescue-*' -user nobody -empty | wc -l)" = 7204
  find "$S" "$TMPDIR" -maxdepth 1 -name 'luacow-rescue-*' -user nobody -exec rm -rf {} +
done

# A rescue that cannot be written anywhere: both directories are gone by
# exit.  With --log=null nbdkit's log goes nowhere; stderr still says it.
note "--- a rescue that cannot be written is loud"
for log in default null; do
  cwd=$SCRATCH/gone-cwd-$log tmp=$SCRATCH/gone-tmp-$log
  mkdir -p "$cwd" "$tmp"
  args=(); [ $log = null ] && args=(--log=null)
  NB_CWD=$cwd NB_ENV="TMPDIR=$tmp" start_nb "lost-$log" "${args[@]}" file "$BASE" luacow-script="$SCRATCH/fail.lua"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:4096:9" >/dev/null
  rmdir "$cwd" "$tmp"
  stop_nb
  checkv "--log=$log: stderr says the overlay is lost, marked CRITICAL" \
    grep_log "^nbdkit: luacow: CRITICAL: .*no name.*; no rescue file could be written: the overlay is lost$"
  if [ $log = default ]; then
    checkv "  and nbdkit's own error line says it too" \
      grep_log "^nbdkit: error: luacow: .*no name.*; no rescue file could be written: the overlay is lost$"
  fi
  # nbdkit 1.32 gives a filter no way to set the exit status (see rescue.h).
  note "  nbdkit exited $NB_RC"
done

# ------------------------------------ 12: temporaries left by killed saves
note "--- 12: stale temporaries of ours go at the next save, nothing else does"
d=$S/stale; mkdir -p "$d"; chmod 01777 "$d"
T=.target.qcow2.luacow-
stale=${T}0123456789abcdef.tmp
: > "$d/$stale"                                     # ours, unlocked: a killed save's
: > "$d/${T}1111111111111111.tmp"                    # ours, held by a live process
as_other touch "$d/${T}2222222222222222.tmp"        # another user's
ln -s "$SCRATCH/victim" "$d/${T}3333333333333333.tmp"   # a link
: > "$d/${T}4444444444444444.tmp"; ln "$d/${T}4444444444444444.tmp" "$d/hardlink"   # two names
keep=("${T}1111111111111111.tmp" "${T}2222222222222222.tmp" "${T}3333333333333333.tmp"
      "${T}4444444444444444.tmp" hardlink
      "${T}55555555555555.tmp" "${T}6666666666666666.tmpx" "${T}ABCDEF0123456789.tmp"
      ".other.qcow2.luacow-7777777777777777.tmp" "${T}1234-5678.tmp")
for f in "${keep[@]:5}"; do : > "$d/$f"; done
mkdir "$d/${T}8888888888888888.tmp"; keep+=("${T}8888888888888888.tmp")   # a directory
# The live holder takes a POSIX lock (it conflicts with OFD locks) and
# says so before the save starts.
"$PY" -c '
import fcntl, sys, time
f = open(sys.argv[1], "r+"); fcntl.lockf(f, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(600)
' "$d/${T}1111111111111111.tmp" > "$SCRATCH/holder.out" &
holder=$!
_pids+=("$holder")
for _ in $(seq 1 100); do grep -q locked "$SCRATCH/holder.out" && break; sleep 0.05; done
check "the holder has its lock" grep -q locked "$SCRATCH/holder.out"
NB_CWD=$S start_nb stale file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
checkv "before any save, the stale temporary is still there" test -f "$d/$stale"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$SCRATCH/stale.seen" "w:0:4096:3" "f" >/dev/null
checkv "the next save to that target removes our stale temporary" test ! -e "$d/$stale"
for f in "${keep[@]}"; do
  checkv "  it leaves alone: $f" test -e "$d/$f" -o -L "$d/$f"
done
checkv "  the save itself went through" holds "$d/target.qcow2" "$SCRATCH/stale.seen"
stop_nb
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null

# ------------------------------- named temporaries (no O_TMPFILE) and locks
note "--- where O_TMPFILE is unsupported: named temporaries, locked while in use"
SHIM=$SCRATCH/shim.so
checkv "the test shim builds" cc -shared -fPIC -Wall -Wextra -Werror -o "$SHIM" "$SRC/shim_savefile.c" -ldl
NOTMP="LD_PRELOAD=$SHIM LUACOW_SHIM_NO_TMPFILE=1"
# pause_ctl SOCK p|r: the pause filter below luacow holds (or releases)
# every read from the plugin, so a save that needs one waits mid-way.
pause_ctl () {
  "$PY" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode())
print(s.recv(1).decode())' "$1" "$2"
}
temps () { find "$1" -maxdepth 1 -name '.target.qcow2.luacow-*.tmp' -user root -type f; }
# held_save NAME DIR: an nbdkit whose save to DIR/target.qcow2 hangs
# (reading the plugin) with its named temporary in DIR; sets HELD (the
# temporary) and FLUSHER (the client waiting for the save).
held_save () {
  local ctl=$SCRATCH/$1.ctl
  NB_CWD=$S NB_ENV=$NOTMP start_nb "$1" --filter=pause file "$BASE" pause-control="$ctl" \
    luacow-script="$P/fault_checkpoint.lua" luacow-dir="$2"
  hold_open "$NB_URI"         # so no close is the export's last
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "p:5:1:1" "f" >/dev/null
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "p:cs+5:1:2" >/dev/null
  HOLD_CTL=$ctl
  [ "$(pause_ctl "$ctl" p)" = P ] || echo "# the pause filter did not pause"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "f" >/dev/null 2>&1 &
  FLUSHER=$!
  HELD=
  for _ in $(seq 1 400); do HELD=$(temps "$2"); [ -n "$HELD" ] && break; sleep 0.05; done
}
d=$S/held; mkdir -p "$d"
held_save held "$d"
A_PID=$NB_PID A_LOG=$NB_LOG
checkv "a save without O_TMPFILE works under a temporary name (.target.qcow2.luacow-<random>.tmp)" \
  bash -c "[ -n '$HELD' ] && [[ '${HELD##*/}' =~ ^\\.target\\.qcow2\\.luacow-[0-9a-f]{16}\\.tmp\$ ]]"
# Meanwhile another nbdkit saves to the same target: its cleanup must
# leave the live temporary alone.
NB_CWD=$S start_nb held-other file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
checkv "another nbdkit saves to the same target meanwhile" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:2*M:4096:4" "f"
stop_nb
checkv "  and leaves the live save's temporary alone (it is locked)" test -n "$HELD" -a -f "$HELD"
NB_PID=$A_PID NB_LOG=$A_LOG
pause_ctl "$HOLD_CTL" r >/dev/null
wait "$FLUSHER"; rc=$?
checkv "the held save completes once reads resume: its flush succeeds" test $rc = 0
checkv "  the target passes qemu-img check" qcheck "$d/target.qcow2"
checkv "  and no temporary is left" test -z "$(temps "$d")"
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
stop_nb

note "--- SIGKILL while a named temporary exists"
d=$S/killed; mkdir -p "$d"
held_save killed "$d"
kill -KILL "$NB_PID"; wait "$NB_PID" 2>/dev/null; wait "$FLUSHER" 2>/dev/null
checkv "a save killed mid-way leaves its temporary behind" test -n "$HELD" -a -f "$HELD"
NB_CWD=$S start_nb killed-next file "$BASE" luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$SCRATCH/killed.seen" "w:0:4096:6" "f" >/dev/null
stop_nb
checkv "the next save to that target removes it" test -z "$(temps "$d")"
checkv "  and saves" holds "$d/target.qcow2" "$SCRATCH/killed.seen"

note "--- a rescue without O_TMPFILE"
d=$SCRATCH/rescue-named; mkdir -p "$d"
NB_CWD=$d NB_ENV=$NOTMP start_nb rescue-named file "$BASE" luacow-script="$SCRATCH/fail.lua"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$SCRATCH/rescue-named.seen" "w:0:9000:8" >/dev/null
stop_nb
r=$(ls "$d"/luacow-rescue-*.qcow2 2>/dev/null)
checkv "the rescue file is the only file there, with a fresh name" \
  bash -c "[[ '$(ls -A "$d" | tr '\n' ' ')' =~ ^$RESCUE_RE\ \$ ]]"
checkv "  and holds every byte the client saw" holds "$r" "$SCRATCH/rescue-named.seen"

# --------------------------------------------- colliding random names
note "--- names that collide: retried, a bounded number of times"
ZERO="LD_PRELOAD=$SHIM LUACOW_SHIM_ZERO_RANDOM"
Z=0000000000000000
for mode in anon named; do
  d=$S/zero-$mode; mkdir -p "$d"; chmod 01777 "$d"
  env=$ZERO=3; [ $mode = named ] && env="$env LUACOW_SHIM_NO_TMPFILE=1"
  save_once "zero-$mode-first" "$d/target.qcow2"        # the target exists: a temporary is needed
  as_other ln -s "$SCRATCH/victim" "$d/.target.qcow2.luacow-$Z.tmp"
  NB_CWD=$S NB_ENV=$env start_nb "zero-$mode" file "$BASE" luacow-save="$d/target.qcow2"
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$SCRATCH/zero-$mode.seen" "w:0:4096:11" >/dev/null
  stop_nb
  checkv "$mode: the first three temporary names are taken: the save retries and succeeds" \
    holds "$d/target.qcow2" "$SCRATCH/zero-$mode.seen"
  checkv "  the planted link is still there, its target untouched" \
    bash -c "[ -L '$d/.target.qcow2.luacow-$Z.tmp' ] && [ \$(sha256sum < '$SCRATCH/victim' | cut -d' ' -f1) = $vsum ]"
  env=$ZERO=1000; [ $mode = named ] && env="$env LUACOW_SHIM_NO_TMPFILE=1"
  old=$(sha "$d/target.qcow2")
  NB_CWD=$S NB_ENV=$env start_nb "zero-$mode-always" file "$BASE" \
    luacow-script="$P/fault_checkpoint.lua" luacow-dir="$d"
  checkv "$mode: every name taken: the flush fails with EIO" \
    client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:4096:12" "F"
  checkv "  with a clear error" grep_log "luacow: flush event: save to $d/target.qcow2 failed: .*File exists"
  checkv "  the target untouched, no temporary of ours left" \
    bash -c "[ \$(sha256sum < '$d/target.qcow2' | cut -d' ' -f1) = $old ] && [ -z \"\$(find '$d' -name '.*.tmp' ! -type l)\" ]"
  kill -KILL "$NB_PID"; wait "$NB_PID" 2>/dev/null   # (its exit save would fail too)
done
# Rescue names: the start directory holds 0666 files at the all-zero names
# of this second and the next minute.
d=$S/zero-rescue; mkdir -p "$d"; chmod 01777 "$d"
NB_CWD=$d NB_ENV="$ZERO=3" start_nb zero-rescue file "$BASE" luacow-script="$SCRATCH/fail.lua"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --seen "$SCRATCH/zero-rescue.seen" "w:0:4096:13" >/dev/null
now=$(date +%s)
as_other bash -c "for t in \$(seq $((now - 1)) $((now + 60))); do f='$d'/luacow-rescue-\$t-$NB_PID-$Z.qcow2; : > \$f; chmod 0666 \$f; done"
stop_nb
r=$(grep -oE "the overlay was saved to the rescue file .*" "$NB_LOG" | sed 's/.*rescue file //')
checkv "planted all-zero rescue names: the rescue retries, in the start directory" \
  bash -c "[[ '$r' =~ ^$d/$RESCUE_RE\$ ]] && [[ '$r' != *-$Z.qcow2 ]] || { echo 'rescue file: $r'; false; }"
checkv "  root's, 0600, with the data" \
  bash -c "[ \"\$(stat -c '%U %a' '$r')\" = 'root 600' ] && [ \$(find '$d' -user nobody -empty | wc -l) = 62 ]"
[ -n "$r" ] && checkv "  every byte the client saw" holds "$r" "$SCRATCH/zero-rescue.seen"

done_testing
