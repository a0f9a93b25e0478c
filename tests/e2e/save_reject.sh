#!/usr/bin/env bash
# Every file the loader rejects stops nbdkit at startup: non-zero exit,
# exactly one error line on stderr that names the file, and no client is
# ever served.  (A file of the wrong virtual size is found at the first
# client's open, where the export size is known: every client is refused.)  Files: the crafted corpus tests/corpus/bad/* (each with an
# export of the size the file was made for, so that the damage itself is
# what gets rejected), damaged copies of a qemu-img file made here (one per
# reason the brief lists), and good files over an export of another size.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"

CORPUS=$TOP/tests/corpus/bad
GOOD=$TOP/tests/corpus/good

# rejected LABEL FILE SIZE [REASON-ERE]: one TAP line.  nbdkit (no --run)
# with luacow-load=FILE and a client connecting as soon as the socket
# exists: nbdkit exits non-zero with exactly one line on stderr, the luacow
# error naming FILE (and REASON), and the client gets no answer.
#
# Why not `--run true`: nbdkit 1.32 binds the socket and forks the --run
# command before the filters' .after_fork, where the export size is known
# and the file is loaded.  Its exit status is the command's when the
# command ends first (`true` usually wins the race: status 0), and a
# captive client would wait forever on the socket the parent keeps open.
rejected () {
  local label=$1 f=$2 size=$3 reason=${4:-} n i pid rc
  local err=$SCRATCH/rej.log sock=$SCRATCH/rej.sock why=()
  rm -f "$sock"
  ( cd "$SCRATCH" && exec nbdkit -f -U "$sock" --filter="$FILTER" null size="$size" luacow-load="$f" ) 2>"$err" &
  pid=$!
  for i in $(seq 1 200); do [ -S "$sock" ] || ! kill -0 $pid 2>/dev/null && break; sleep 0.01; done
  if timeout 10 nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1; then
    why+=("a client was served")
  fi
  for i in $(seq 1 500); do kill -0 $pid 2>/dev/null || break; sleep 0.02; done
  if kill -0 $pid 2>/dev/null; then why+=("nbdkit still running after 10 s"); kill -KILL $pid; fi
  wait $pid; rc=$?
  [ $rc -ne 0 ] || why+=("nbdkit exited 0")
  n=$(grep -c '' "$err")
  [ "$n" -eq 1 ] || why+=("stderr has $n lines, not 1")
  grep -qF -- "nbdkit: error: luacow: $f: " "$err" || why+=("no 'luacow: $f: ' error line")
  [ -z "$reason" ] || grep -qE -- "$reason" "$err" || why+=("reason is not /$reason/")
  grep -qiE 'segfault|assert|abort|core dumped|sanitizer' "$err" && why+=("crash")
  if [ ${#why[@]} -eq 0 ]; then
    ok "$label: rejected at startup (exit $rc): $(sed "s|.*$f: ||" "$err")"
  else
    fail "$label: ${why[*]}"
    sed 's/^/#   stderr: /' "$err"
  fi
}

# ---------------------------------------------------------------- corpus
ncorpus=$(find "$CORPUS" -maxdepth 1 -type f 2>/dev/null | wc -l)
if [ "$ncorpus" -ge 60 ]; then
  note "corpus: $ncorpus files in tests/corpus/bad"
  # Each with an export of the size the file was made for.
  while read -r size f; do
    [ "$f" = /dev/null ] || rejected "corpus ${f##*/}" "$f" "$size"
  done < <(client exportsize "$CORPUS"/* /dev/null)
else
  fail "tests/corpus/bad has $ncorpus files (expected >= 60); only the files crafted below are checked"
fi

# --------------------------------------------------------- crafted here
# From a qemu-img v3 file (64K clusters, 1 MiB, two data clusters), one
# damaged copy per reason.
C=$SCRATCH/crafted; mkdir -p "$C"
qemu-img create -q -f qcow2 -o cluster_size=65536 "$C/good.qcow2" 1M
qemu-io -f qcow2 -c "write -P 0x11 0 4096" -c "write -P 0x22 524288 65536" "$C/good.qcow2" >/dev/null
"$PY" - "$C" <<'EOF'
import os, struct, sys
d = sys.argv[1]
good = open(os.path.join(d, "good.qcow2"), "rb").read()
l1_off = struct.unpack(">Q", good[40:48])[0]
rt_off = struct.unpack(">Q", good[48:56])[0]
l1e0 = struct.unpack(">Q", good[l1_off:l1_off + 8])[0]
l2_off = l1e0 & 0x00fffffffffffe00
l2e0 = struct.unpack(">Q", good[l2_off:l2_off + 8])[0]
data0 = l2e0 & 0x00fffffffffffe00
assert l2_off and data0, "unexpected layout"

def put(buf, off, fmt, val):
    b = bytearray(buf); struct.pack_into(fmt, b, off, val); return bytes(b)

def save(name, buf):
    open(os.path.join(d, name + ".qcow2"), "wb").write(buf)

incompat = struct.unpack(">Q", good[72:80])[0]
save("bad-magic", put(good, 0, ">I", 0x514649fa))
save("version-4", put(good, 4, ">I", 4))
save("encryption", put(good, 32, ">I", 1))
for bit, name in ((0, "dirty-bit"), (1, "corrupt-bit"), (2, "external-data-file-bit"),
                  (4, "extended-l2-bit"), (5, "unknown-incompatible-bit5"),
                  (40, "unknown-incompatible-bit40")):
    save(name, put(good, 72, ">Q", incompat | (1 << bit)))
save("l1-too-small", put(good, 36, ">I", 0))
save("l2-unaligned", put(good, l1_off, ">Q", l1e0 + 512))
save("l2-past-eof", put(good, l1_off, ">Q", (l1e0 & ~0x00fffffffffffe00) | (len(good) // 65536 + 4) * 65536))
save("l2-on-l1", put(good, l1_off, ">Q", (l1e0 & ~0x00fffffffffffe00) | l1_off))
save("l2-on-refcount-table", put(good, l1_off, ">Q", (l1e0 & ~0x00fffffffffffe00) | rt_off))
save("data-on-header", put(good, l2_off, ">Q", (l2e0 & ~0x00fffffffffffe00) | 0))
save("data-past-eof", put(good, l2_off, ">Q", (l2e0 & ~0x00fffffffffffe00) | (len(good) // 65536 + 8) * 65536))
save("truncated-header", good[:50])
save("truncated-in-l1", good[:l1_off + 4])
save("truncated-in-data", good[:data0 + 100])
save("empty", b"")
EOF
for f in "$C"/*.qcow2; do
  case ${f##*/} in good.qcow2) continue;; esac
  rejected "crafted ${f##*/}" "$f" 1048576
done
checkv "the undamaged original loads (the damage is what is rejected)" \
  bash -c "nbdkit -f -U '$SCRATCH/good.sock' --filter='$FILTER' null size=1048576 luacow-load='$C/good.qcow2' \
           --run 'nbdinfo --size \"\$uri\"' 2>&1 | grep -qx 1048576"

# The --run form works when the command outlives the startup: nbdkit then
# reports its own failure as the exit status.
run_nb run-form null size=1048576 luacow-load="$C/bad-magic.qcow2" -- "sleep 3"
checkv "--run 'sleep 3' with a bad file: exit status non-zero, the one error line" \
  bash -c "[ $NB_RC -ne 0 ] && [ \$(grep -c '' '$NB_LOG') = 1 ] && grep -q 'luacow: $C/bad-magic.qcow2: qcow2: bad magic' '$NB_LOG'"

# ----------------------------------------------- virtual size != export
# The export size is known at the first client's open (luacow opens the
# plugin no earlier): every client is refused, and the file is untouched.
size_refused () {
  local label=$1 f=$2 size=$3 reason=$4 sum
  sum=$(sha256sum < "$f")
  checkv "$label: every client refused, the file untouched" \
    refused_at_open size-mismatch "luacow: $f: " "$reason" -- null size="$size" luacow-load="$f" luacow-save="$f"
  checkv "$label: the file is unchanged after exit" test "$(sha256sum < "$f")" = "$sum"
}
size_refused "export larger than the file's virtual size" "$C/good.qcow2" 2097152 \
  'virtual size 1048576 differs from the export size 2097152'
size_refused "export smaller than the file's virtual size" "$C/good.qcow2" 1048064 \
  'virtual size 1048576 differs from the export size 1048064'
if [ -f "$GOOD/enc-1k-odd-deflate.qcow2" ]; then
  s=$(client exportsize "$GOOD/enc-1k-odd-deflate.qcow2")
  cp "$GOOD/enc-1k-odd-deflate.qcow2" "$SCRATCH/odd.qcow2"
  size_refused "luacow's exact size is checked, not the 512-rounded header size" \
    "$SCRATCH/odd.qcow2" "$(( (s + 511) / 512 * 512 ))" "differs from the export size"
fi
# A path that does not exist, a directory: named in the error too.  (The
# default policy only loads a luacow-load= file that exists, so these go
# through a policy.)
for what in missing adir; do
  [ $what = adir ] && mkdir -p "$SCRATCH/adir.qcow2"
  echo "return { load = \"$SCRATCH/$what.qcow2\" }" > "$SCRATCH/$what.lua"
  startup_fails "$what" null size=1M luacow-script="$SCRATCH/$what.lua"
  checkv "load path $what: non-zero exit, one error line naming it" \
    failed_at_startup "nbdkit: error: luacow: $SCRATCH/$what.qcow2: "
done

done_testing
