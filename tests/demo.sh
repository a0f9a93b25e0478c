#!/usr/bin/env bash
# The whole luacow story on a scratch disk (`make demo` runs this after
# building): serve a raw disk writable through the filter, write to it as a
# client would, stop nbdkit, inspect and verify the saved qcow2 with
# qemu-img, attach the base, and reload the overlay in a fresh nbdkit.
#
# Every command that matters is echoed ("+ ...") before it runs.  Exits
# non-zero as soon as a step does not hold.  Everything lives in one
# temporary directory, removed at the end; LUACOW_DEMO_KEEP=1 keeps it (the
# last line says where).  No network; a few seconds.
set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FILTER=$TOP/plugin/nbdkit-luacow-filter.so
POLICY=$TOP/lua/examples/fixed.lua
export PATH=/usr/bin:$PATH          # Debian's tools (nbdsh's python3) first

for tool in nbdkit nbdcopy nbdinfo qemu-img qemu-io sha256sum cmp; do
  command -v "$tool" >/dev/null || { echo "demo: $tool is missing (run: make deps)" >&2; exit 1; }
done
[ -f "$FILTER" ] || { echo "demo: $FILTER is not built (run: make)" >&2; exit 1; }

DEMO=$(mktemp -d "${TMPDIR:-/tmp}/luacow-demo.XXXXXX")
# The overlay's own scratch store goes here too, so nothing lands elsewhere.
export TMPDIR=$DEMO
SOCK=$DEMO/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
NBDKIT_PID=
step=setup

finish () {
  local rc=$?
  if [ -n "$NBDKIT_PID" ]; then kill "$NBDKIT_PID" 2>/dev/null; wait "$NBDKIT_PID" 2>/dev/null; fi
  echo
  if [ "$rc" -ne 0 ]; then
    echo "DEMO FAILED in step: $step"
    if [ -s "$DEMO/nbdkit.log" ]; then echo "nbdkit's log:"; sed 's/^/    /' "$DEMO/nbdkit.log" | tail -n 20; fi
  fi
  if [ "${LUACOW_DEMO_KEEP:-}" = 1 ]; then
    rm -f "$SOCK"
    echo "Kept the demo's files in $DEMO (remove it with: rm -r $DEMO)"
  else
    rm -rf "$DEMO"
    echo "Removed the demo directory $DEMO; nothing else was created (LUACOW_DEMO_KEEP=1 keeps it)."
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# Shell-quote one word only when needed, so echoed commands can be pasted.
quote () {
  case $1 in
    ''|*[!A-Za-z0-9_./:=@%+,\[\]-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}
show () { local a s='+'; for a in "$@"; do s+=" $(quote "$a")"; done; echo "$s"; }
run () { show "$@"; "$@"; }
say () { echo; echo "$*"; }
step () { step=$1; echo; echo "=== $1"; }
ok () { echo "    ok: $*"; }
die () { echo "    NOT OK: $*" >&2; exit 1; }

start_nbdkit () {  # ARGS... (after nbdkit): in the foreground, in the background
  rm -f "$SOCK"
  echo "$(show nbdkit "$@") &"
  nbdkit "$@" 2>>"$DEMO/nbdkit.log" &
  NBDKIT_PID=$!
  for _ in $(seq 1 100); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$NBDKIT_PID" 2>/dev/null || break
    sleep 0.05
  done
  die "nbdkit did not start"
}

stop_nbdkit () {  # SIGTERM: nbdkit runs the filter's .cleanup, which saves
  run kill -TERM "$NBDKIT_PID"
  local rc=0
  wait "$NBDKIT_PID" || rc=$?
  NBDKIT_PID=
  [ "$rc" -eq 0 ] || die "nbdkit exited with status $rc"
}

cd "$DEMO"
echo "luacow demo in $DEMO"
echo "filter: $FILTER"

step "1. Serve a raw disk through luacow"
say "A 64 MiB raw disk with a recognizable pattern (each 8-byte word holds its own"
echo "offset), made by nbdkit's pattern plugin.  Its checksum, to show later that"
echo "luacow never writes to it:"
run nbdcopy -- [ nbdkit pattern size=64M ] base.img
base_sum=$(sha256sum base.img | cut -d' ' -f1)
echo "    sha256 $base_sum"
say "Serve it writable.  The policy lua/examples/fixed.lua reloads overlay.qcow2"
echo "at start if it exists, and saves the overlay there at exit if anything was"
echo "written (-f keeps nbdkit in the foreground so this script can stop it):"
start_nbdkit -f -U "$SOCK" --filter="$FILTER" file base.img \
  script="$POLICY" luacow-save=overlay.qcow2
ok "nbdkit is serving $URI"

step "2. Write, zero and trim as a client would"
say "qemu-io: 3 MiB of 0x55 at 1 MiB, 5000 unaligned bytes of 0x66 at offset 10000,"
echo "2 MiB of zeroes at 8 MiB (NBD WRITE_ZEROES), a 1 MiB trim at 16 MiB (NBD TRIM),"
echo "and the last 1000 bytes of the disk:"
run qemu-io -f raw "$URI" \
  -c "write -P 0x55 1M 3M" -c "write -P 0x66 10000 5000" -c "write -z 8M 2M" \
  -c "discard 16M 1M" -c "write -P 0x77 67107864 1000" | grep -v ' ops; '
say "What the client now sees, as extents and as a full copy:"
run nbdinfo --map "$URI"
run nbdcopy "$URI" seen.raw
# The same operations applied to a copy of the base give what it should see.
cp base.img expected.raw
qemu-io -f raw expected.raw -c "write -P 0x55 1M 3M" -c "write -P 0x66 10000 5000" \
  -c "write -z 8M 2M" -c "write -z 16M 1M" -c "write -P 0x77 67107864 1000" >/dev/null
cmp -s expected.raw seen.raw || die "the client does not read back what it wrote"
rm expected.raw
ok "the client reads back exactly what it wrote, zeroed and trimmed"

step "3. Stop nbdkit: the overlay is saved as qcow2"
stop_nbdkit
echo "nbdkit said:"
sed 's/^/    /' nbdkit.log
grep -q 'luacow: saved .*overlay.qcow2 (exit)' nbdkit.log || die "no save was logged"
: >nbdkit.log
say "A qcow2 v3 file (compat 1.1) holding only what changed:"
run qemu-img info overlay.qcow2
say "Data clusters where the client wrote (a partly written cluster is completed"
echo "from the base), zero clusters where it zeroed or trimmed (\"present\": true,"
echo "\"zero\": true), nothing elsewhere:"
run qemu-img map --output=json overlay.qcow2 | tee map.json
extent () { grep -q "\"start\": $1, \"length\": $2, \"depth\": 0, \"present\": true, \"zero\": $3, \"data\": $4" map.json \
            || die "qemu-img map does not show $5"; }
extent 0 65536 false true "the partly written first cluster as data"
extent 1048576 3145728 false true "1M..4M as data"
extent 8388608 2097152 true false "the zeroed 8M..10M as zero clusters"
extent 16777216 1048576 true false "the trimmed 16M..17M as zero clusters"
extent 67043328 65536 false true "the last cluster as data"
[ "$(grep -c '"present": true' map.json)" -eq 5 ] || die "qemu-img map shows more than what was written"
rm map.json
ok "the map holds exactly the written, zeroed and trimmed clusters"
run qemu-img check overlay.qcow2 | tee check.out
grep -q '^No errors were found on the image.$' check.out || die "qemu-img check found problems"
grep -qi leak check.out && die "qemu-img check reports leaked clusters"
rm check.out
ok "qemu-img check: no errors, no leaks"

step "4. Attach the base and compare with what the client saw"
say "The file has no backing file; this records base.img in its header (-u: no"
echo "data is copied, the file is only relabelled), after which qemu opens it as"
echo "the whole disk:"
run qemu-img rebase -u -b base.img -F raw overlay.qcow2
run qemu-img compare overlay.qcow2 seen.raw
run sha256sum base.img
[ "$(sha256sum base.img | cut -d' ' -f1)" = "$base_sum" ] || die "base.img changed"
ok "base + overlay = what the client saw; base.img is unchanged"

step "5. Start again with the same policy: the overlay is reloaded"
say "Same command (-v only so that the log shows luacow's reload line).  The"
echo "backing file name recorded in step 4 is ignored: the plugin is the base."
start_nbdkit -v -f -U "$SOCK" --filter="$FILTER" file base.img \
  script="$POLICY" luacow-save=overlay.qcow2
say "The client's data is back (reloaded when the first client connected):"
run qemu-img compare -f raw -F raw "$URI" seen.raw
grep 'luacow: reloaded' nbdkit.log | sed 's/^/    /' || die "nbdkit did not reload overlay.qcow2"
stop_nbdkit
! grep -q 'nbdkit: luacow: saved' nbdkit.log || die "an unchanged reloaded overlay was saved again"
say "Nothing was written since the reload, so the exit save was skipped: the"
echo "file keeps the backing name recorded in step 4 and is still usable as is."
run qemu-img compare -q overlay.qcow2 seen.raw || die "overlay.qcow2 is not what the client saw"
[ "$(sha256sum base.img | cut -d' ' -f1)" = "$base_sum" ] || die "base.img changed"
ok "overlay.qcow2 untouched by the second run; base.img unchanged"

step "done"
echo "All steps held."
