#!/usr/bin/env bash
# Write-behind under a real nbdkit: with a journal, writes among flushes
# make luacow ask the kernel to write back early (the debug line at exit
# counts it); the same writes without any flush never do; the data reads
# back either way.  Together with tests/unit/test_store.c this covers the
# wiring (a flush arms it, the overlay starts its thread), not only the
# store's mechanism.
. "$(dirname "$0")/lib.sh"
export PATH=/usr/bin:$PATH
[ -x "$FILTER" ] || { fail "filter built at $FILTER"; done_testing; exit; }
truncate -s 16M "$SCRATCH/disk.img"

# ops N FLUSH_EVERY: export_io.py operations for N 4 KiB writes (0x5a)
# at every other 4 KiB of the disk, a flush after every FLUSH_EVERY (0:
# never), then a read-back of each.  (export_io.py sends nothing it is
# not told to; qemu-io would flush at close.)
ops () {
  local n=$1 every=$2 i
  for ((i = 0; i < n; i++)); do
    echo "w:$((i * 8192)):0x5a:4096"
    if [ "$every" -gt 0 ] && [ $(((i + 1) % every)) -eq 0 ]; then echo f; fi
  done
  for ((i = 0; i < n; i++)); do echo "r:$((i * 8192)):0x5a:4096"; done
}
# kicks: the count in the last "write-behind asked for writeback N times".
kicks () {
  grep -o 'write-behind asked for writeback [0-9]* times' "$SCRATCH/nbdkit.log" | tail -1 |
    awk '{ print $5 }'
}

for mode in flushes none; do
  rm -f "$SCRATCH/j.journal"
  : >"$SCRATCH/nbdkit.log"
  run_nbdkit s.sock -v file "$SCRATCH/disk.img" luacow-journal="$SCRATCH/j.journal" ||
    { fail "nbdkit starts ($mode)"; continue; }
  every=16; [ "$mode" = none ] && every=0
  mapfile -t cmds < <(ops 512 "$every")
  check "$mode: 512 writes of 4 KiB ($([ "$every" = 0 ] && echo "no flush" || echo "a flush every $every")) read back" \
    timeout 120 "$TOP/tests/e2e/src/export_io.py" "$SCRATCH/s.sock" "" "${cmds[@]}"
  stop_nbdkit
  check "$mode: nbdkit exited cleanly" [ $? -eq 0 ]
  n=$(kicks)
  if [ "$mode" = flushes ]; then
    check "flushes: luacow asked for early writeback (${n:-no line} times, 2 MiB written)" \
      [ "${n:-0}" -ge 1 ]
  else
    check "no flush: nothing was written back early (${n:-no line} times)" [ "$n" = 0 ]
  fi
done
no_crash
done_testing
