#!/usr/bin/env bash
# The overlay store under a file size limit (ulimit -f 2 MiB), without
# and with a journal: nbdkit starts (the store is not grown far ahead of
# use, which used to raise SIGXFSZ at startup), a write past the limit
# fails with ENOSPC and nbdkit goes on, and once the disk is trimmed the
# space is reused: writes succeed again and read back.
. "$(dirname "$0")/lib.sh"
truncate -s 16M "$SCRATCH/disk.img"
mkdir -p "$SCRATCH/tmp"
script=$SCRATCH/probe.py
cat >"$script" <<'PY'
import nbd
try:
    h.pwrite(b"A" * (3 << 20), 0)
    print("past the limit: written")
except nbd.Error as e:
    print("past the limit: errno", e.errnum)
h.trim(16 << 20, 0)
h.pwrite(b"B" * (512 << 10), 0)
h.pwrite(b"C" * (512 << 10), 512 << 10)
ok = h.pread(512 << 10, 0) == b"B" * (512 << 10) and h.pread(512 << 10, 512 << 10) == b"C" * (512 << 10)
print("after the trim: written and read back" if ok else "after the trim: wrong data")
PY
for mode in off "$SCRATCH/j.journal"; do
  name=$([ "$mode" = off ] && echo "no journal" || echo "journal")
  out=$SCRATCH/out-${name// /-}
  (
    ulimit -f 2048
    TMPDIR=$SCRATCH/tmp nbdkit -U - --filter="$FILTER" file "$SCRATCH/disk.img" \
      luacow-journal="$mode" --run "nbdsh -u \"\$uri\" -c 'exec(open(\"$script\").read())'"
  ) >"$out" 2>"$out.err"
  rc=$?
  check "$name: nbdkit ran and ended normally under ulimit -f (status $rc)" [ "$rc" -eq 0 ]
  check "$name: a write past the limit fails with ENOSPC (28)" grep -qx "past the limit: errno 28" "$out"
  check "$name: the error says the store cannot grow" grep -q "the overlay store cannot grow" "$out.err"
  check "$name: after trimming the disk, writes succeed and read back" \
    grep -qx "after the trim: written and read back" "$out"
  sed 's/^/# /' "$out"
done
check "the base was never written" test "$(stat -c %b "$SCRATCH/disk.img")" -eq 0
done_testing
