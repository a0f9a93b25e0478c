#!/usr/bin/env bash
# Request flags and stacking:
#  - fast zero (qemu-io `write -z -n`, nbdsh zero(flags=FAST_ZERO)), FUA
#    writes / zeroes / trims and flush are accepted and give the right
#    content; a 4 GiB fast zero on a 1 TiB export is immediate;
#  - --filter=luacow --filter=xz file disk.xz serves, writes, saves and
#    reloads, the .xz never written;
#  - the error filter below luacow: with the trigger file present, reads
#    of clean areas fail with NBD errors (EIO) while overlay data and
#    zeroes read fine and whole-block writes work; partial writes needing
#    the plugin fail cleanly; once the trigger is gone everything reads as
#    expected; an exit save that cannot read the plugin fails, never
#    replaces the previous save, and leaves exactly one rescue file that
#    holds the overlay.
# Every nbdkit's exit status is checked: a signal (134 SIGABRT, 139
# SIGSEGV...) fails even when nothing was logged.
. "$(dirname "$0")/lib.sh"
export PATH=/usr/bin:$PATH
cd "$SCRATCH" || exit 1             # rescue files, if any, land here
M=$((1024 * 1024))
[ -x "$FILTER" ] || { fail "filter built at $FILTER"; done_testing; exit; }

# mirror FILE OFF LEN BYTE: what a write of LEN bytes of BYTE at OFF does.
mirror () {
  /usr/bin/python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2]));
f.write(bytes([int(sys.argv[4], 0)]) * int(sys.argv[3]))' "$@"
}
# qemu_io_ok NAME COMMANDS...: qemu-io against $URI, no error, no failed verification.
qemu_io_ok () {
  local name=$1 out; shift
  local args=(); for c in "$@"; do args+=(-c "$c"); done
  if out=$(timeout 60 qemu-io -f raw "${args[@]}" "$URI" 2>&1) &&
     ! grep -qiE 'error|fail|verification' <<<"$out"; then ok "$name"
  else fail "$name"; sed 's/^/#   /' <<<"$out" | head -20; fi
}
# stopped WHAT [ANY]: SIGTERM nbdkit and wait; it must exit 0 (with ANY,
# any status but a signal's, 128 + N).
stopped () {
  stop_nbdkit
  local rc=$? why
  why="status $rc"
  [ "$rc" -gt 128 ] && why+=", killed by SIG$(kill -l $((rc - 128)) 2>/dev/null)"
  if [ -n "${2:-}" ]; then check "$1: nbdkit exits without a crash ($why)" [ "$rc" -lt 128 ]
  else check "$1: nbdkit exits 0 ($why)" [ "$rc" -eq 0 ]; fi
}
# store_kib: disk use (KiB) of the overlay store, the deleted file that
# nbdkit holds open in $STORE.
store_kib () {
  local fd t
  for fd in /proc/"$NBDKIT_PID"/fd/*; do
    t=$(readlink "$fd") || continue
    case $t in "$STORE"/*" (deleted)") stat -L -c '%b %B' "$fd" | awk '{ print int($1 * $2 / 1024) }'; return ;; esac
  done
  echo none
}
# nbdsh_ok NAME PYTHON: nbdsh against $URI, the statement succeeds.
nbdsh_ok () {
  local name=$1 out
  if out=$(timeout 60 nbdsh -u "$URI" -c "$2" 2>&1); then ok "$name"
  else fail "$name"; sed 's/^/#   /' <<<"$out" | head -20; fi
}

############################################################ flags
BASE=$SCRATCH/disk.img EXP=$SCRATCH/expect.img
head -c $((16 * M)) /dev/urandom >"$BASE"
cp "$BASE" "$EXP"
SUM=$(sha256sum <"$BASE")
run_nbdkit flags.sock file "$BASE" || { fail "nbdkit starts"; done_testing; exit; }
check "the export advertises fast zero, FUA and flush" \
  bash -c "timeout 30 nbdinfo '$URI' | grep -q 'can_fast_zero: true' &&
           timeout 30 nbdinfo '$URI' | grep -q 'can_fua: true' &&
           timeout 30 nbdinfo '$URI' | grep -q 'can_flush: true'"

qemu_io_ok "qemu-io: FUA write, flush, fast zero (-z -n), fast zero with unmap (-z -u -n), zero, discard" \
  "write -P 0x11 0 64k" "write -f -P 0x22 100000 5000" "flush" \
  "write -z -n 1M 1M" "write -z -u -n 3145728 12345" "write -z $((5 * M + 7)) 100000" \
  "write -f -z -n $((6 * M + 1)) 3000" "discard 8M 64k" "flush"
mirror "$EXP" 0 65536 0x11; mirror "$EXP" 100000 5000 0x22
mirror "$EXP" $M $M 0; mirror "$EXP" $((3 * M)) 12345 0
mirror "$EXP" $((5 * M + 7)) 100000 0; mirror "$EXP" $((6 * M + 1)) 3000 0
mirror "$EXP" $((8 * M)) 65536 0
qemu_io_ok "qemu-io: the written patterns and zeroes read back" \
  "read -P 0x11 0 64k" "read -P 0x22 100000 5000" "read -P 0 1M 1M" \
  "read -P 0 3145728 12345" "read -P 0 $((5 * M + 7)) 100000" "read -P 0 $((6 * M + 1)) 3000" \
  "read -P 0 8M 64k"

nbdsh_ok "nbdsh: zero with FAST_ZERO, FAST_ZERO|FUA, FUA; pwrite and trim with FUA; flush" "
h.zero(65536, 9 * 1048576 + 3, flags=nbd.CMD_FLAG_FAST_ZERO)
h.zero(4096, 10 * 1048576, flags=nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
h.zero(777, 10 * 1048576 + 8191, flags=nbd.CMD_FLAG_FUA)
h.pwrite(b'\x33' * 10000, 11 * 1048576 + 5, flags=nbd.CMD_FLAG_FUA)
h.trim(8192, 12 * 1048576, flags=nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(65536, 9 * 1048576 + 3) == bytes(65536)
assert h.pread(10000, 11 * 1048576 + 5) == b'\x33' * 10000
"
mirror "$EXP" $((9 * M + 3)) 65536 0; mirror "$EXP" $((10 * M)) 4096 0
mirror "$EXP" $((10 * M + 8191)) 777 0; mirror "$EXP" $((11 * M + 5)) 10000 0x33
mirror "$EXP" $((12 * M)) 8192 0
timeout 60 nbdcopy "$URI" "$SCRATCH/got.img"
check "the whole export equals the base with those writes" cmp "$SCRATCH/got.img" "$EXP"
stopped "flags"
check "the base file is unchanged (sha256)" [ "$(sha256sum <"$BASE")" = "$SUM" ]

# A fast zero is metadata only: 4 GiB - 4 KiB of a 1 TiB export at once
# takes no room in the overlay store (the time it takes is printed, not
# judged).
STORE=$SCRATCH/store-big
mkdir -p "$STORE"
STORE=$(cd "$STORE" && pwd -P)
if TMPDIR=$STORE run_nbdkit big.sock null size=1T; then
  out=$(timeout 60 nbdsh -u "$URI" -c "
import time
h.pwrite(b'\\x44' * 4096, 2**31 + 5)
t = time.monotonic()
h.zero(2**32 - 4096, 4096, flags=nbd.CMD_FLAG_FAST_ZERO)
ms = (time.monotonic() - t) * 1000
assert h.pread(8192, 2**31) == bytes(8192)
print('%.0f' % ms)" 2>&1)
  used=$(store_kib)
  if [[ $out =~ ^[0-9]+$ ]]; then
    ok "nbdsh: one fast zero of 4 GiB - 4 KiB on a 1 TiB export, over data"
    echo "# (it took $out ms)"
    check "... and the overlay store holds no zeroes: ${used} KiB used (<= 1024)" \
      bash -c '[ "$1" != none ] && [ "$1" -le 1024 ]' _ "$used"
  else
    fail "nbdsh: one fast zero of 4 GiB - 4 KiB on a 1 TiB export, over data"; sed 's/^/#   /' <<<"$out"
  fi
  stopped "null 1T"
else fail "nbdkit null size=1T starts"; fi

############################################################ xz
XIMG=$SCRATCH/x.img XZ=$SCRATCH/x.img.xz
{ head -c $((3 * M)) /dev/urandom; head -c $((2 * M)) /dev/zero; head -c $((3 * M + 12345)) /dev/urandom; } >"$XIMG"
xz --check=crc32 --block-size=1MiB -k "$XIMG"
XSUM=$(sha256sum <"$XZ")
XSIZE=$(stat -c %s "$XIMG")
cp "$XIMG" "$EXP"
if run_nbdkit xz.sock --filter=xz file "$XZ" luacow-save="$SCRATCH/xz.qcow2"; then
  check "xz: the export size is the uncompressed size" [ "$(timeout 30 nbdinfo --size "$URI")" = "$XSIZE" ]
  timeout 60 nbdcopy "$URI" "$SCRATCH/got.img"
  check "xz: untouched, the export reads the uncompressed image" cmp "$SCRATCH/got.img" "$XIMG"
  qemu_io_ok "xz: writes (unaligned, across xz blocks), zero, trim are accepted" \
    "write -P 0x55 $((M - 100)) 200" "write -P 0x66 $((4 * M)) 1M" "write -z -n $((6 * M + 3)) 70000" \
    "discard $((7 * M)) 64k" "write -f -P 0x77 $((XSIZE - 10)) 10"
  mirror "$EXP" $((M - 100)) 200 0x55; mirror "$EXP" $((4 * M)) $M 0x66
  mirror "$EXP" $((6 * M + 3)) 70000 0; mirror "$EXP" $((7 * M)) 65536 0
  mirror "$EXP" $((XSIZE - 10)) 10 0x77
  timeout 60 nbdcopy "$URI" "$SCRATCH/got.img"
  check "xz: the export equals the image with the writes" cmp "$SCRATCH/got.img" "$EXP"
  stopped "xz"
  check "xz: the .xz file is unchanged (sha256)" [ "$(sha256sum <"$XZ")" = "$XSUM" ]
  if run_nbdkit xzre.sock --filter=xz file "$XZ" luacow-load="$SCRATCH/xz.qcow2"; then
    timeout 60 nbdcopy "$URI" "$SCRATCH/got.img"
    check "xz: the exit save reloads over the .xz to the same content" cmp "$SCRATCH/got.img" "$EXP"
    stopped "xz reload"
  else fail "xz: reload over the .xz starts"; fi
else
  fail "--filter=luacow --filter=xz file disk.xz starts"
fi

############################################################ error filter
TRIG=$SCRATCH/trigger SAVE=$SCRATCH/err.qcow2
cp "$BASE" "$EXP"
ERR_ARGS=(--filter=error file "$BASE" error-pread-rate=1 error-pread-file="$TRIG")
rm -f "$TRIG"
if run_nbdkit err.sock "${ERR_ARGS[@]}" luacow-save="$SAVE"; then
  qemu_io_ok "error: without the trigger, writes (partial blocks too) work" \
    "write -P 0x11 0 64k" "write -P 0x22 $((M + 100)) 5000" "write -z $((2 * M)) 64k"
  mirror "$EXP" 0 65536 0x11; mirror "$EXP" $((M + 100)) 5000 0x22; mirror "$EXP" $((2 * M)) 65536 0
  touch "$TRIG"
  cat >"$SCRATCH/err.py" <<'EOF'
M = 1048576
def fails(f):
    try:
        f(); return None
    except nbd.Error as e:
        return e.errno
def res(good, what, *info):
    print(("PASS " if good else "FAIL ") + what, *info)
e = fails(lambda: h.pread(4096, 4 * M))
res(e == "EIO", "reading a clean area fails with EIO", e)
e = fails(lambda: h.pread(65536 + 4096, 0))
res(e == "EIO", "a read spanning overlay data and a clean area fails", e)
res(h.pread(65536, 0) == b"\x11" * 65536, "overlay data still reads")
res(h.pread(65536, 2 * M) == bytes(65536), "overlay zeroes still read")
h.pwrite(b"\x44" * 8192, 3 * M)
res(h.pread(8192, 3 * M) == b"\x44" * 8192, "a whole-block write over a clean area works and reads back")
h.pwrite(b"\x55" * 100, 1000)
res(h.pread(100, 1000) == b"\x55" * 100, "a partial write inside overlay data works")
e = fails(lambda: h.pwrite(b"\x66" * 100, 5 * M + 10))
res(e is not None, "a partial write over a clean block (needs the plugin) fails", e)
e = fails(lambda: h.zero(100, 6 * M + 10))
res(e is not None, "a partial zero over a clean block (needs the plugin) fails", e)
h.zero(4096, 7 * M)
res(h.pread(4096, 7 * M) == bytes(4096), "a whole-block zero over a clean area works")
for i in range(50):
    fails(lambda: h.pread(512, 8 * M + 512 * i))
res(h.pread(8192, 3 * M) == b"\x44" * 8192, "after 50 more failed reads the connection still works")
EOF
  out=$(timeout 60 nbdsh -u "$URI" -c "exec(open('$SCRATCH/err.py').read())" 2>&1); rc=$?
  n=0
  while IFS= read -r line; do
    case $line in
      "PASS "*) ok "error: ${line#PASS }"; n=$((n + 1)) ;;
      "FAIL "*) fail "error: ${line#FAIL }"; n=$((n + 1)) ;;
      *) echo "# $line" ;;
    esac
  done <<<"$out"
  [ "$rc" -eq 0 ] && [ "$n" -gt 0 ] || fail "error: nbdsh script ran (rc $rc)"
  mirror "$EXP" $((3 * M)) 8192 0x44; mirror "$EXP" 1000 100 0x55; mirror "$EXP" $((7 * M)) 4096 0
  rm -f "$TRIG"
  timeout 60 nbdcopy "$URI" "$SCRATCH/got.img"
  check "error: once the trigger is gone, the export is exactly the base with the writes that succeeded" \
    cmp "$SCRATCH/got.img" "$EXP"
  qemu_io_ok "error: the writes that failed now work" \
    "write -P 0x66 $((5 * M + 10)) 100" "read -P 0x66 $((5 * M + 10)) 100"
  mirror "$EXP" $((5 * M + 10)) 100 0x66
  stopped "error: after the errors"
  check "error: the exit save checks clean" qemu-img check -q "$SAVE"
else
  fail "luacow over the error filter starts"
fi

# Exit while the plugin fails: the save needs the plugin for the partly
# written 64 KiB clusters, so it fails; the previous save must stay as it
# was, and the overlay goes to a rescue file in the working directory
# (4 KiB clusters, which need nothing from the plugin) holding exactly the
# overlay; nothing else may be left behind.
if [ -s "$SAVE" ] && run_nbdkit err2.sock "${ERR_ARGS[@]}" luacow-load="$SAVE" luacow-save="$SAVE"; then
  timeout 60 nbdcopy "$URI" "$SCRATCH/got.img"
  check "error: the save reloads (over the error filter) to the same content" cmp "$SCRATCH/got.img" "$EXP"
  rm -f "$SCRATCH/got.img"
  PREV=$(sha256sum <"$SAVE")
  hold_open "$URI"            # so the writer's close copies nothing
  qemu_io_ok "error: another partial write" "write -P 0x77 $((9 * M + 5)) 10"
  mirror "$EXP" $((9 * M + 5)) 10 0x77
  before=$(ls -A "$SCRATCH")
  touch "$TRIG"
  kill "$HOLDER"; wait "$HOLDER" 2>/dev/null   # its close copies nothing now
  # nbdkit 1.32 gives a filter no way to change its exit status: any
  # status will do, but not a signal's.
  stopped "error: the exit with a failing plugin" any
  rm -f "$TRIG"
  grep -iE 'luacow.*(fail|lost|rescue)' "$SCRATCH/nbdkit.log" | tail -3 | sed 's/^/# /'
  check "error: the failed exit save is reported in the log" \
    grep -qiE 'luacow: save to .*err.qcow2 failed' "$SCRATCH/nbdkit.log"
  check "error: the previous save is untouched" [ "$(sha256sum <"$SAVE")" = "$PREV" ]
  new=$(comm -13 <(echo "$before") <(ls -A "$SCRATCH"))
  echo "# new files: ${new:-none}"
  if [[ $new =~ ^luacow-rescue-[0-9]+-[0-9]+-[0-9a-f]{16}\.qcow2$ ]]; then
    ok "error: exactly one new file, the rescue file $new"
    check "error: the log names the rescue file" grep -q "rescue file $SCRATCH/$new" "$SCRATCH/nbdkit.log"
    qemu-img rebase -u -b "$BASE" -F raw -f qcow2 "$SCRATCH/$new" &&
      qemu-img convert -f qcow2 -O raw "$SCRATCH/$new" "$SCRATCH/rescued.img"
    check "error: the rescue file + base is exactly the overlay" cmp "$SCRATCH/rescued.img" "$EXP"
    rm -f "$SCRATCH/rescued.img"
  else
    fail "error: exactly one new file, a rescue file luacow-rescue-*.qcow2 (got: ${new:-none})"
  fi
else
  fail "error: second run over the error filter starts"
fi
check "the base file is still unchanged (sha256)" [ "$(sha256sum <"$BASE")" = "$SUM" ]

if grep -qiE 'assert|segfault|sanitizer|abort|core dumped' "$SCRATCH/nbdkit.log"; then
  fail "no crash report in the nbdkit log"; tail -20 "$SCRATCH/nbdkit.log" | sed 's/^/# /'
else ok "no crash report in the nbdkit log (and every nbdkit's exit status was checked)"; fi
done_testing
