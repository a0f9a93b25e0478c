#!/usr/bin/env bash
# Export sizes through luacow: 0, 1, 511, 130000 and 5 GiB (files), and
# 64 TiB (the pattern plugin, whose every 8-byte word is its own offset, so
# a read from the wrong place shows).  Writes and reads at the start, the
# end, and across the 4 GiB and 16 TiB (block 2^32) boundaries, checked
# against the base plus the writes; the exit save reloads to the same
# content; the base files are never written (sha256).  For 64 TiB, after
# 64 MiB of writes: nbdkit's RSS stays within 32 MiB of the bare plugin's
# doing the same reads, and the overlay store (an unlinked file in TMPDIR,
# measured through /proc/PID/fd) holds under 100 MiB of disk while a
# client is connected, and after the last one leaves no more than the exit
# save will hold (the clean rest of each partly written cluster is copied
# in then).
. "$(dirname "$0")/lib.sh"
export PATH=/usr/bin:$PATH
SIZES_PY=$TOP/tests/e2e/src/sizes.py
SEED=${SIZES_SEED:-$(( $(date +%s) % 100000 ))}
echo "# seed $SEED (SIZES_SEED=$SEED to repeat)"
G=$((1024 * 1024 * 1024))
mkdir -p "$SCRATCH/tmp"
export TMPDIR=$SCRATCH/tmp          # nbdkit's overlay store goes here

[ -x "$FILTER" ] || { fail "filter built at $FILTER"; done_testing; exit; }

# nbdsh_tap NAME ENV...: run sizes.py under nbdsh against $URI with the
# given environment; its PASS/FAIL lines become TAP.
nbdsh_tap () {
  local name=$1 out=$SCRATCH/nbdsh.out n rc; shift
  env SIZES_SEED="$SEED" "$@" timeout 300 nbdsh -u "$URI" -c "exec(open('$SIZES_PY').read())" \
    >"$out" 2>&1
  rc=$?
  pass_fail_to_tap "$name" "$out"
  n=$TAP_LINES
  if [ "$rc" -ne 0 ] || [ "$n" -eq 0 ]; then fail "$name: nbdsh script ran (rc $rc, $n results)"; fi
}

# A content fingerprint of a (sparse) file that reads only its data
# extents: sha256 over (offset, length, bytes) of each, plus the size.
# Equal fingerprints <=> equal content for files that keep their holes,
# and a write into a hole changes the extents.  Used for the 5 GiB file,
# where a plain sha256sum reads 5 GiB; small files use sha256sum itself.
sparse_sum () {
  /usr/bin/python3 - "$1" <<'EOF'
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size
h = hashlib.sha256(str(size).encode()); off = 0
while off < size:
    try: d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError: break
    e = os.lseek(fd, d, os.SEEK_HOLE)
    h.update(b"%d+%d:" % (d, e - d)); p = d
    while p < e:
        b = os.pread(fd, min(1 << 24, e - p), p); h.update(b); p += len(b)
    off = e
print(h.hexdigest())
EOF
}

# file_size NAME SIZE POINTS: base file, writes around POINTS, exit save,
# reload and check again, base unchanged.
file_size () {
  local name=$1 size=$2 points=$3
  local base=$SCRATCH/$name.img save=$SCRATCH/$name.qcow2
  truncate -s "$size" "$base"
  if [ "$size" -le $((1024 * 1024)) ]; then
    head -c "$size" /dev/urandom | dd of="$base" conv=notrunc status=none
  else  # sparse, with random data around 4 GiB and at both ends
    for off in 0 $((4 * G - 512 * 1024)) $((size - 1024 * 1024)); do
      head -c $((1024 * 1024)) /dev/urandom |
        dd of="$base" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none
    done
  fi
  local sum; sum=$(sparse_sum "$base")
  [ "$size" -gt $((1024 * 1024)) ] || sum=$(sha256sum <"$base")
  run_nbdkit "$name.sock" file "$base" luacow-save="$save" || { fail "$name: nbdkit starts"; return; }
  check "$name: nbdinfo --size is $size" [ "$(timeout 30 nbdinfo --size "$URI")" = "$size" ]
  if [ "$size" -gt 0 ]; then
    nbdsh_tap "$name" SIZES_BASE="$base" SIZES_POINTS="$points"
  fi
  stop_nbdkit
  check "$name: nbdkit exits cleanly" [ $? -eq 0 ]
  if [ "$size" -gt 0 ]; then
    check "$name: qemu-img check of the exit save" qemu-img check -q "$save"
    if run_nbdkit "$name.re.sock" file "$base" luacow-load="$save"; then
      nbdsh_tap "$name reloaded" SIZES_BASE="$base" SIZES_POINTS="$points" SIZES_MODE=verify
      stop_nbdkit
    else fail "$name: nbdkit reloads the save"; fi
  fi
  local after
  if [ "$size" -gt $((1024 * 1024)) ]; then after=$(sparse_sum "$base"); else after=$(sha256sum <"$base"); fi
  check "$name: the base file is unchanged" [ "$after" = "$sum" ]
  rm -f "$base" "$save"
}

file_size size0 0 ""
file_size size1 1 "0"
file_size size511 511 "0 255 -1"
file_size size130000 130000 "0 4095 4096 65536 129999 -1"
file_size size5G $((5 * G)) "0 $((4 * G - 1)) $((4 * G)) $((4 * G + 1)) $((4 * G + 4096)) -1"

############################################################ 64 TiB
T64=$((64 * 1024 * G))
rss_kb () { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# The overlay store: the unlinked file in $TMPDIR that nbdkit holds open.
store_fd () {
  local fd link
  for fd in /proc/"$1"/fd/*; do
    link=$(readlink "$fd") || continue
    # The journal (a save is configured), or an unlinked file in TMPDIR.
    case $link in *.journal|"$SCRATCH/tmp/"*"(deleted)") echo "$fd"; return 0 ;; esac
  done
  return 1
}

# The bare plugin doing the same reads.
nbdkit -f -U "$SCRATCH/bare.sock" pattern size="$T64" 2>>"$SCRATCH/nbdkit.log" &
BARE_PID=$!; _pids+=("$BARE_PID")
for _ in $(seq 1 100); do [ -S "$SCRATCH/bare.sock" ] && break; sleep 0.05; done
URI="nbd+unix:///?socket=$SCRATCH/bare.sock"
nbdsh_tap "64T bare pattern" SIZES_BASE=pattern SIZES_64T=1 SIZES_MODE=read
BARE_RSS=$(rss_kb "$BARE_PID")
kill "$BARE_PID"; wait "$BARE_PID" 2>/dev/null

SAVE64=$SCRATCH/t64.qcow2
if run_nbdkit t64.sock pattern size="$T64" luacow-save="$SAVE64"; then
  check "64T: nbdinfo --size is $T64" [ "$(timeout 30 nbdinfo --size "$URI")" = "$T64" ]
  # A second client stays connected, so that the writer's close is not the
  # export's last: that one copies the clean rest of every partly written
  # cluster into the store (save_settle), which a measurement must not race.
  hold_open "$URI"
  nbdsh_tap "64T" SIZES_BASE=pattern SIZES_64T=1
  RSS=$(rss_kb "$NBDKIT_PID")
  echo "# VmRSS: luacow $RSS KiB, bare plugin $BARE_RSS KiB"
  check "64T: nbdkit's RSS ($((RSS / 1024)) MiB) is under the bare plugin's ($((BARE_RSS / 1024)) MiB) + 32 MiB" \
    [ "$RSS" -lt $((BARE_RSS + 32 * 1024)) ]
  if fd=$(store_fd "$NBDKIT_PID"); then
    read -r blocks bsize < <(stat -L -c '%b %B' "$fd")
    bytes=$((blocks * bsize))
    echo "# store $(readlink "$fd"): $((bytes / 1024)) KiB on disk"
    check "64T: the overlay store uses $((bytes / 1024 / 1024)) MiB of disk (>= 64, < 100 MiB)" \
      [ "$bytes" -ge $((64 * 1024 * 1024)) -a "$bytes" -lt $((100 * 1024 * 1024)) ]
    # The last close copies at most the rest of one 64 KiB cluster per
    # write (4149 writes): what the exit save will hold, no more.
    kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
    prev=-1
    for _ in $(seq 1 100); do   # until two readings 0.2 s apart agree
      cur=$(stat -L -c %b "$fd"); [ "$cur" = "$prev" ] && break; prev=$cur; sleep 0.2
    done
    settled=$((cur * bsize))
    check "64T: after the last close the store uses $((settled / 1024 / 1024)) MiB (<= 100 MiB + 4149 x 64 KiB)" \
      [ "$settled" -ge "$bytes" -a "$settled" -le $(((100 << 20) + 4149 * 65536)) ]
  else
    fail "64T: the overlay store (the journal) is held open by nbdkit"
    ls -l /proc/"$NBDKIT_PID"/fd | sed 's/^/# /'
    kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
  fi
  check "64T: nothing but the store is left in TMPDIR" [ -z "$(ls -A "$SCRATCH/tmp")" ]
  start=$(date +%s%N)
  stop_nbdkit
  check "64T: nbdkit exits cleanly" [ $? -eq 0 ]
  echo "# exit with save: $(( ($(date +%s%N) - start) / 1000000 )) ms, $(du -k "$SAVE64" | cut -f1) KiB"
  check "64T: qemu-img check of the exit save" qemu-img check -q "$SAVE64"
  if run_nbdkit t64re.sock pattern size="$T64" luacow-load="$SAVE64"; then
    nbdsh_tap "64T reloaded" SIZES_BASE=pattern SIZES_64T=1 SIZES_MODE=verify
    stop_nbdkit
  else fail "64T: nbdkit reloads the save"; fi
else
  fail "64T: nbdkit starts"
fi

no_crash
done_testing
