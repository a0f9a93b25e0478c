#!/usr/bin/env bash
# The journal under a real nbdkit: SIGKILL at random moments while four
# connections write, zero, trim, flush and send FUA writes; after each
# kill, nbdkit restarts with the same command line and recovers.  Every
# block must then hold its last flushed value (or its last acknowledged
# FUA write) or a later write's: tests/e2e/src/crash_client.c keeps the
# exact model.  Then: the exit save after recovery passes qemu-img check,
# reloads to the model's disk, and leaves no journal behind.  Also the
# refusals: a journal for another export size, a changed or missing base,
# a damaged header, a journal in use.
#
# LUACOW_CRASH_ROUNDS=N kill rounds (default 12).
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/e2e/src/save_lib.sh"

ROUNDS=${LUACOW_CRASH_ROUNDS:-12}
CC_OUT=$SCRATCH/crash_client
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Werror -o "$CC_OUT" "$SRC/crash_client.c" \
   $(pkg-config --cflags --libs libnbd libxxhash) -lpthread || { fail "crash_client builds"; done_testing; exit 1; }

d=$SCRATCH/j; mkdir -p "$d"
mkbase "$d/base.raw" $((64 << 20)) 7
sum_base=$(sha256sum < "$d/base.raw")
ARGS=(file "$d/base.raw" luacow-save="$d/ov.qcow2" luacow-load="$d/ov.qcow2")
STATE=$d/state

# round N: start, verify against the state, run, SIGKILL after a random delay.
kill_round () {
  local n=$1 delay
  start_nb "round$n" "${ARGS[@]}" || { fail "round $n: nbdkit starts"; return; }
  coproc CL { timeout -s KILL 120 "$CC_OUT" "$SCRATCH/round$n.sock" "$STATE" 4 30; }
  local cpid=$CL_PID line out=()
  exec {cl_out}<&"${CL[0]}"
  while IFS= read -r line <&"$cl_out"; do
    [ "$line" = RUNNING ] && break
    out+=("$line")
  done
  # The overlay (and the recovery) is made at the first client's connection.
  if [ "$n" -gt 0 ]; then
    checkv "round $n: the first connection logs the recovery" grep_log "luacow: recovered journal $d/ov.qcow2.journal: "
  fi
  delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.2 + (r % 150) / 100 }')
  sleep "$delay"
  kill -KILL "$NB_PID"
  wait "$NB_PID" 2>/dev/null; local rc=$?
  while IFS= read -r line <&"$cl_out"; do out+=("$line"); done
  exec {cl_out}<&-
  wait "$cpid"
  printf '%s\n' "${out[@]}" > "$SCRATCH/round$n.out"
  pass_fail_to_tap "round $n (killed after ${delay}s)" "$SCRATCH/round$n.out"
  check "round $n: nbdkit died of our SIGKILL, nothing else (status $rc)" [ "$rc" -eq 137 ]
  check "round $n: the journal is there" test -s "$d/ov.qcow2.journal"
}

for ((n = 0; n < ROUNDS; n++)); do kill_round "$n"; done
check "$ROUNDS rounds: every recovery was verified" \
  [ "$(grep -c '^PASS every block' "$SCRATCH"/round*.out | awk -F: '{ s += $2 } END { print s }')" -eq $((ROUNDS - 1)) ]

# The exit save after the last recovery: exactly the model.
start_nb final "${ARGS[@]}"
timeout 120 "$CC_OUT" "$SCRATCH/final.sock" "$STATE" 4 0 > "$SCRATCH/final.out"
pass_fail_to_tap "after the last kill" "$SCRATCH/final.out"
stop_nb
check "final: the exit save succeeded (status $NB_RC)" [ "$NB_RC" -eq 0 ]
checkv "final: the saved file passes qemu-img check" qcheck "$d/ov.qcow2"
check "final: the journal is gone after the exit save" test ! -e "$d/ov.qcow2.journal"
check "final: so is its link to the base" test ! -e "$d/ov.qcow2.journal.base"
start_nb reload "${ARGS[@]}"
timeout 120 "$CC_OUT" "$SCRATCH/reload.sock" "$STATE" 4 0 > "$SCRATCH/reload.out"
pass_fail_to_tap "the save reloaded" "$SCRATCH/reload.out"
checkv "reload: from the save, not a journal" grep_log "luacow: reloaded $d/ov.qcow2: "
stop_nb
check "the base was never written" test "$(sha256sum < "$d/base.raw")" = "$sum_base"

# A journal that never got a commit (killed before anything was written):
# the next start ignores it and reloads what the policy names.
start_nb nocommit file "$d/base.raw" luacow-save="$d/other.qcow2"
timeout 10 nbdinfo --size "$NB_URI" >/dev/null   # the first connection makes the journal
kill -KILL "$NB_PID"; wait "$NB_PID" 2>/dev/null
check "no commit: the killed start left a journal" test -s "$d/other.qcow2.journal"
start_nb nocommit2 file "$d/base.raw" luacow-save="$d/other.qcow2" luacow-load="$d/ov.qcow2"
timeout 120 "$CC_OUT" "$SCRATCH/nocommit2.sock" "$STATE" 4 0 > "$SCRATCH/nocommit2.out"
pass_fail_to_tap "no commit: the reloaded disk" "$SCRATCH/nocommit2.out"
checkv "no commit: the first connection says so and starts afresh" grep_log "journal $d/other.qcow2.journal holds no commit: starting afresh"
checkv "no commit: ... and reloads the policy's file" grep_log "luacow: reloaded $d/ov.qcow2: "
stop_nb
rm -f "$d/other.qcow2" "$d/other.qcow2.journal"*

# ------------------------------------------------------------- refusals
note "--- refusals"
# A journal left by a kill, with a reloaded base (so it has a .base link).
leave_journal () {
  start_nb "$1" "${ARGS[@]}"
  timeout 60 "$CC_OUT" "$SCRATCH/$1.sock" "$SCRATCH/$1.state" 2 0.5 >/dev/null
  kill -KILL "$NB_PID"; wait "$NB_PID" 2>/dev/null
  true
}
leave_journal r1
cp "$d/ov.qcow2.journal" "$SCRATCH/journal.keep"

mkbase "$d/small.raw" $((32 << 20)) 8
# The size is known at the first connection (the plugin is not opened before).
checkv "another export size: every client refused, naming the journal and the reason" \
  refused_at_open size "luacow: journal $d/ov.qcow2.journal: " \
  "the journal is for an export of 67108864 bytes, this export has 33554432" -- \
  file "$d/small.raw" luacow-save="$d/ov.qcow2" luacow-load="$d/ov.qcow2"
check "another export size: the journal is kept as it was" cmp -s "$d/ov.qcow2.journal" "$SCRATCH/journal.keep"

cp "$d/ov.qcow2.journal.base" "$SCRATCH/base.keep"
printf 'X' | dd of="$d/ov.qcow2.journal.base" bs=1 seek=200 conv=notrunc status=none
startup_fails changed "${ARGS[@]}"
checkv "base changed: nbdkit refuses to start, naming the base" \
  failed_at_startup "luacow: journal $d/ov.qcow2.journal: " "the file it was based on, $d/ov.qcow2.journal.base, has changed"
rm -f "$d/ov.qcow2.journal.base"
startup_fails missing "${ARGS[@]}"
checkv "base missing: nbdkit refuses to start, naming the base" \
  failed_at_startup "luacow: journal $d/ov.qcow2.journal: " "$d/ov.qcow2.journal.base, cannot be opened"
cp "$SCRATCH/base.keep" "$d/ov.qcow2.journal.base"

dd if=/dev/urandom of="$d/ov.qcow2.journal" bs=4096 count=2 conv=notrunc status=none
startup_fails header "${ARGS[@]}"
checkv "damaged header: nbdkit refuses to start with one line" \
  failed_at_startup "luacow: journal $d/ov.qcow2.journal: " "corrupt journal header"
cp "$SCRATCH/journal.keep" "$d/ov.qcow2.journal"

startup_fails nodir file "$d/base.raw" luacow-journal="$d/no/such/dir/j"
checkv "a journal in a directory that is not there: nbdkit refuses to start with one line" \
  failed_at_startup "luacow: journal $d/no/such/dir/j: its directory $d/no/such/dir is not writable"

# Still recoverable after all that (nothing was changed by the refusals).
start_nb again "${ARGS[@]}"
timeout 60 "$CC_OUT" "$SCRATCH/again.sock" "$SCRATCH/r1.state" 2 0 > "$SCRATCH/again.out"
pass_fail_to_tap "after the refusals" "$SCRATCH/again.out"
first=$NB_PID
checkv "a journal in use by another nbdkit: its clients are refused" \
  refused_at_open busy "luacow: journal $d/ov.qcow2.journal: " "in use by another process" -- "${ARGS[@]}"
NB_PID=$first
stop_nb
check "the exit save removed the journal" test ! -e "$d/ov.qcow2.journal"

# The policy sees what was recovered: ctx.recovered (and disk.recovered).
cat > "$d/seen.lua" <<LUA
local out = "$d/recovered.txt"
return {
  journal = "$d/own.journal",
  save = function (ctx)
    if ctx.event == "exit" then
      local f = assert(io.open(out, "w"))
      local r = ctx.recovered
      f:write(r and string.format("%s %d %d %s", r.journal, r.blocks, r.bytes,
                                  tostring(r.flushed > 0)) or "nil", "\n")
      f:close()
    end
    return false
  end,
}
LUA
start_nb seen1 file "$d/base.raw" luacow-script="$d/seen.lua"
timeout 60 "$CC_OUT" "$SCRATCH/seen1.sock" "$SCRATCH/seen.state" 2 0.5 >/dev/null
kill -KILL "$NB_PID"; wait "$NB_PID" 2>/dev/null
start_nb seen2 file "$d/base.raw" luacow-script="$d/seen.lua"
timeout 10 nbdinfo --size "$NB_URI" >/dev/null   # the recovery happens at the first connection
stop_nb
checkv "ctx.recovered names the journal, the blocks and bytes, and a flush time" \
  grep -qE "^$d/own.journal [1-9][0-9]* [1-9][0-9]* true$" "$d/recovered.txt"
check "a policy that never saves keeps its journal" test -s "$d/own.journal"
rm -f "$d/own.journal"
start_nb seen3 file "$d/base.raw" luacow-script="$d/seen.lua"
timeout 10 nbdinfo --size "$NB_URI" >/dev/null
stop_nb
checkv "without a recovery, ctx.recovered is nil" grep -qx nil "$d/recovered.txt"

# luacow-journal=off: no journal at all.
start_nb off "${ARGS[@]}" luacow-journal=off
check "luacow-journal=off: no journal file" test ! -e "$d/ov.qcow2.journal"
stop_nb

done_testing
