#!/usr/bin/env bash
# Regression test, run by make check (tests/run.sh runs tests/stress/repro/*):
# the exit save completes partly written clusters by reading the layer
# below.  When that layer fails reads during shutdown -- here nbdkit's
# delay filter, whose nbdkit_nanosleep aborts once the server is shutting
# down; likewise rate/retry filters or a network plugin whose server has
# gone -- the exit save fails, and so once did both rescue saves (same
# cluster size, same reads): every write was lost,
#   luacow: save to .../out.qcow2 failed: reading cluster 0 ...; no rescue
#   file could be written: the overlay is lost
# Fixed in plugin/events.c rescue(): the rescue is saved with the
# overlay's block size as cluster size first, which needs no read from
# below (partial blocks are completed when written).  Prints TAP.
set -u
TOP=$(cd "$(dirname "$0")/../../.." && pwd)
FILTER=${LUACOW_FILTER:-$TOP/plugin/nbdkit-luacow-filter.so}
export PATH=/usr/bin:$PATH
d=$(mktemp -d "${TMPDIR:-/tmp}/luacow-repro.XXXXXX"); trap 'rm -rf "$d"' EXIT
mkdir "$d/tmp"
cd "$d" || exit 1
n=0 failed=0
check () {  # DESCRIPTION COMMAND...
  local what=$1; shift
  n=$((n + 1))
  if "$@"; then echo "ok $n - $what"; else echo "not ok $n - $what"; failed=$((failed + 1)); fi
}

TMPDIR=$d/tmp nbdkit -f -U "$d/sock" --filter="$FILTER" --filter=delay pattern size=1M delay-read=1 \
  luacow-save="$d/out.qcow2" 2>"$d/nbdkit.log" &
pid=$!
for _ in $(seq 100); do [ -S "$d/sock" ] && break; sleep 0.1; done
# One partial-block write: its read-modify-write reads below once (1 s).
timeout 60 nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"B" * 100, 10)'
check "the client's partial write is acknowledged" [ $? -eq 0 ]
kill -TERM "$pid"; wait "$pid"; rc=$?
sed 's/^/# /' "$d/nbdkit.log"
check "nbdkit exits without a crash (status $rc; above 128 is a signal)" [ "$rc" -lt 128 ]
check "the failed exit save is reported" grep -q 'luacow: save to .*out.qcow2 failed' "$d/nbdkit.log"
rescue=$(ls "$d"/luacow-rescue-*.qcow2 "$d"/tmp/luacow-rescue-*.qcow2 2>/dev/null)
check "exactly one rescue file was written (${rescue:-none})" [ "$(printf '%s' "$rescue" | grep -c .)" -eq 1 ]
holds () {
  local f=$1 out
  qemu-img check -q "$f" || return 1
  out=$(qemu-io -f qcow2 -c 'read -P 0x42 10 100' "$f" 2>&1) && ! grep -qi 'fail' <<<"$out" ||
    { echo "# $out"; return 1; }
}
check "the rescue file passes qemu-img check and holds the write" holds "${rescue:-/nonexistent}"
echo "1..$n"
[ "$failed" -eq 0 ]
