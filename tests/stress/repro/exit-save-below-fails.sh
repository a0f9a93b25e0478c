#!/usr/bin/env bash
# Reproducer (reported, not fixed): the exit save completes partly written
# clusters by reading the layer below.  When that layer fails reads during
# shutdown -- here nbdkit's delay filter, whose nbdkit_nanosleep aborts
# once the server is shutting down; likewise rate/retry filters or a
# network plugin whose server has gone -- the exit save fails, and so do
# both rescue saves (same cluster size, same reads), and every write is
# lost:
#   luacow: save to .../out.qcow2 failed: reading cluster 0 ...; no rescue
#   file could be written: the overlay is lost
# A rescue saved with the overlay's block size as cluster size would need
# no read from below (partial blocks are completed when written).
# Exit 0: the overlay was saved; 1: it was lost.
set -u
TOP=$(cd "$(dirname "$0")/../../.." && pwd)
FILTER=${LUACOW_FILTER:-$TOP/plugin/nbdkit-luacow-filter.so}
d=$(mktemp -d "${TMPDIR:-/tmp}/luacow-repro.XXXXXX"); trap 'rm -rf "$d"' EXIT
cd "$d" || exit 1
nbdkit -f -U "$d/sock" --filter="$FILTER" --filter=delay pattern size=1M delay-read=1 \
  luacow-save="$d/out.qcow2" 2>"$d/nbdkit.log" &
pid=$!
for _ in $(seq 100); do [ -S "$d/sock" ] && break; sleep 0.1; done
# One partial-block write: its read-modify-write reads below once (1 s).
PATH=/usr/bin:$PATH nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"B" * 100, 10)'
kill -TERM "$pid"; wait "$pid"
sed 's/^/  /' "$d/nbdkit.log"
if [ -f "$d/out.qcow2" ] || ls "$d"/luacow-rescue-* >/dev/null 2>&1; then
  echo "saved"; exit 0
fi
echo "the overlay was lost"; exit 1
