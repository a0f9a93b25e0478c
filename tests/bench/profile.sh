#!/usr/bin/env bash
# Where does nbdkit spend its time under one bench job?
#
#   tests/bench/profile.sh [JOB] [CONFIG]
#
# JOB: randwrite-4k | randread-4k | write-1m | read-1m (default write-1m);
# CONFIG: luacow | cow | bare (default luacow).  Serves a 1 GiB file of
# random data (PROFILE_DIR, default a new directory in /var/tmp), runs the
# fio job for PROFILE_SECONDS (default 6) under `perf record` of the nbdkit
# process, and prints the share per object (kernel, libc, the filter...)
# and the top symbols.  Without perf, `strace -c -f` counts syscalls.
set -u
TOP=$(cd "$(dirname "$0")/../.." && pwd)
FILTER=$TOP/plugin/nbdkit-luacow-filter.so
JOB=${1:-write-1m} CONFIG=${2:-luacow}
SECS=${PROFILE_SECONDS:-6}
case $JOB in
  randwrite-4k) ARGS=(--rw=randwrite --bs=4k --iodepth=16) ;;
  randread-4k) ARGS=(--rw=randread --bs=4k --iodepth=16) ;;
  write-1m) ARGS=(--rw=write --bs=1m --iodepth=4) ;;
  read-1m) ARGS=(--rw=read --bs=1m --iodepth=4) ;;
  *) echo "unknown job $JOB" >&2; exit 2 ;;
esac
WORK=${PROFILE_DIR:-$(mktemp -d /var/tmp/luacow-profile.XXXXXX)}
mkdir -p "$WORK/tmp"
export TMPDIR=$WORK/tmp
[ -f "$WORK/base.img" ] || head -c $((1024 * 1024 * 1024)) /dev/urandom >"$WORK/base.img"
cat "$WORK/base.img" >/dev/null
file=$WORK/base.img
filt=()
case $CONFIG in
  luacow) filt=(--filter="$FILTER") ;;
  cow) filt=(--filter=cow) ;;
  bare) cp "$WORK/base.img" "$WORK/copy.img"; sync "$WORK/copy.img"; file=$WORK/copy.img ;;
esac
SOCK=$WORK/nbd.sock
rm -f "$SOCK"
nbdkit -f -U "$SOCK" -t 16 "${filt[@]}" file "$file" 2>"$WORK/nbdkit.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; [ -n "${PROFILE_DIR:-}" ] || rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.05; done

if command -v perf >/dev/null && perf record -o /dev/null -- true >/dev/null 2>&1; then
  perf record -g -o "$WORK/perf.data" -p "$PID" -- sleep $((SECS + 1)) >/dev/null 2>&1 &
  REC=$!
  fio --name="$JOB" --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --size=1g \
      --runtime="$SECS" --time_based "${ARGS[@]}" | grep -E 'IOPS='
  wait "$REC"
  echo "== share by object"
  perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -8
  echo "== top symbols"
  perf report -i "$WORK/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
    grep '%' | head -25
else
  echo "(no perf: counting syscalls with strace -c)"
  strace -c -f -p "$PID" -o "$WORK/strace.txt" &
  REC=$!
  sleep 0.5
  fio --name="$JOB" --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --size=1g \
      --runtime="$SECS" --time_based "${ARGS[@]}" | grep -E 'IOPS='
  kill -INT "$REC"; wait "$REC"
  head -25 "$WORK/strace.txt"
fi
