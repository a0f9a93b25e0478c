#!/usr/bin/env bash
# make bench: the same 1 GiB file-backed export served three ways -- bare
# `nbdkit file`, `--filter=cow`, `--filter=luacow` -- measured with fio's
# nbd engine; then exit-save and reload timings.  Prints a Markdown report
# and writes it to tests/bench/last.md.
#
#   BENCH_SECONDS      runtime of each fio job (default 8)
#   BENCH_RUNS         runs of each (job, configuration); the median is
#                      reported (default 3; the machine may be shared)
#   BENCH_DIR          where the work files go (default: a new directory in
#                      /var/tmp, removed at exit); needs ~6 GiB free
#   BENCH_COW_TIMEOUT  cap in seconds for the cow filter's qemu-img recipe
#                      on the 1 TiB export (default 60)
#   BENCH_QUICK=1      fio jobs only (no save / reload timings)
#   BENCH_ONLY=flush   only the flush latency section, written to
#                      tests/bench/last-flush.md (last.md is left alone)
#   BENCH_ONLY=durable only the durable jobs (and the base they need),
#                      written to tests/bench/last-durable.md
#   BENCH_FLUSH_ROUNDS write+flush rounds per flush latency run (default 2000)
#   BENCH_FILTER       the luacow filter to measure (default: the one built here)
#
# Every fio job of every configuration gets a fresh nbdkit (default 16
# threads); writes never reach the pristine base: the bare configuration
# writes into a fresh copy of it, the filters open it read-only.  The base
# holds random data and is in the page cache.  Targets (from the issue):
# 4K random write >= 0.8x bare, 4K random reads >= 0.9x bare, 1 MiB
# sequential >= 0.9x bare, with luacow's journal on.  Then the durable
# jobs (fio --fsync) against bare, luacow with and without a journal and
# qemu-nbd over a qcow2 overlay (targets: luacow with a journal >= 0.8x
# bare and >= 2x qemu-nbd), flush latency at 64 MiB and 2 GiB of overlay
# (p50/p99, runs of the two sizes interleaved; target: at 2 GiB <= 1.5x at
# 64 MiB), write latency during a
# checkpoint save of 2 GiB, and recovery of a journal of 2 GiB (< 2 s).  Exits 0 when it ran (targets missed or not);
# non-zero only when something could not be measured.
set -u
TOP=$(cd "$(dirname "$0")/../.." && pwd)
FILTER=${BENCH_FILTER:-$TOP/plugin/nbdkit-luacow-filter.so}
SECS=${BENCH_SECONDS:-8}
RUNS=${BENCH_RUNS:-3}
COW_TIMEOUT=${BENCH_COW_TIMEOUT:-60}
OUT=$TOP/tests/bench/last.md
export PATH=/usr/bin:$PATH

for tool in nbdkit fio qemu-img qemu-nbd cc python3 nbdsh; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (make deps)" >&2; exit 1; }
done
[ -x "$FILTER" ] || { echo "bench: $FILTER is not built (make)" >&2; exit 1; }
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench: this fio has no nbd engine" >&2; exit 1; }

if [ -n "${BENCH_DIR:-}" ]; then WORK=$BENCH_DIR; mkdir -p "$WORK"; KEEP=1
else WORK=$(mktemp -d /var/tmp/luacow-bench.XXXXXX); KEEP=0; fi
mkdir -p "$WORK/tmp"
export TMPDIR=$WORK/tmp             # the cow and luacow overlays live here
SOCK=$WORK/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
PID=
cleanup () {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ "$KEEP" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
LOG=$WORK/nbdkit.log

now_ns () { date +%s%N; }
ms_since () { echo $(( ($(now_ns) - $1) / 1000000 )); }
secs () { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }
say () { echo "$*" >&2; }

# launch CONFIG FILE [ARGS...]: a fresh nbdkit on $SOCK, not waited for.
launch () {
  local config=$1 file=$2; shift 2
  local filt=() extra=()
  rm -f "$SOCK"
  case $config in
    bare) ;;
    cow) filt=(--filter=cow) ;;
    # luacow's overlay in a journal (the default whenever a save is named)
    luacow) filt=(--filter="$FILTER"); extra=(luacow-journal="$TMPDIR/bench.journal") ;;
    luacow-nj) filt=(--filter="$FILTER"); extra=(luacow-journal=off) ;;
    qemu-nbd)                       # a qcow2 overlay over the same raw base
      rm -f "$TMPDIR/ov.qcow2"
      qemu-img create -q -f qcow2 -b "$file" -F raw "$TMPDIR/ov.qcow2"
      qemu-nbd -t -k "$SOCK" -f qcow2 "$TMPDIR/ov.qcow2" 2>>"$LOG" &
      PID=$!
      return ;;
  esac
  nbdkit -f -U "$SOCK" -t 16 "${filt[@]}" file "$file" "${extra[@]}" "$@" 2>>"$LOG" &
  PID=$!
}
# start CONFIG FILE [ARGS...]: launch, and wait for the socket.
start () {
  launch "$@"
  for _ in $(seq 1 200); do [ -S "$SOCK" ] && return 0; sleep 0.05; done
  say "bench: nbdkit ($config) did not start:"; tail -5 "$LOG" >&2
  exit 1
}
# stop: SIGTERM and wait (luacow saves here).
stop () { kill -TERM "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; local rc=$?; PID=; return $rc; }

# fio_iops NAME FIO-ARGS...: runs one fio job against $URI, prints its
# IOPS and its number of I/Os.
fio_iops () {
  local name=$1; shift
  local json=$WORK/fio-$name.json
  if ! fio --name="$name" --ioengine=nbd --uri="$URI" --output-format=json \
       --output="$json" "$@" >/dev/null 2>"$WORK/fio.err"; then
    say "bench: fio $name failed:"; cat "$WORK/fio.err" >&2; exit 1
  fi
  python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print("%.0f %d" % (j["read"]["iops"] + j["write"]["iops"],
                   j["read"]["total_ios"] + j["write"]["total_ios"]))' "$json"
}
# cpu_ticks PID: user + system CPU time of the process, in clock ticks.
cpu_ticks () { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

median () { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
best () { printf '%s\n' "$@" | sort -n | tail -1; }
ratio () { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

############################################################ flush latency
# Flush latency after a 4 KiB write, with 64 MiB and with 2 GiB of overlay
# (filled by 1 MiB writes into a sparse 8 GiB export).  Runs of the two
# sizes interleave (64M, 2G, 64M, 2G...), each a fresh nbdkit, so that
# load from elsewhere hits both alike.  Both get the same settling before
# their rounds: one flush commits the fill (its cost is the fill's), then
# `sync` and a wait for the kernel's writeback, so that the first rounds do
# not pay for the fill's dirty pages.  Sets F64_P50 F64_P99 F2G_P50
# F2G_P99 (medians over runs of each run's median and p99) and FLUSH_RUNS_*.
FLUSH_ROUNDS=${BENCH_FLUSH_ROUNDS:-2000}
settle_writeback () {   # until Dirty + Writeback < 16 MiB, at most 10 s
  sync
  for _ in $(seq 1 100); do
    awk '/^(Dirty|Writeback):/ { kb += $2 } END { exit !(kb < 16384) }' /proc/meminfo && return
    sleep 0.1
  done
}
flush_run () {  # OVERLAY-BYTES: "median p99" (ms) of FLUSH_ROUNDS write+flush rounds
  rm -rf "${TMPDIR:?}"/* 2>/dev/null
  start luacow "$WORK/sparse.img"
  fio_iops fill --rw=write --bs=1m --iodepth=4 --size="$1" --refill_buffers=1 >/dev/null
  nbdsh -u "$URI" -c 'h.flush()' || exit 1
  settle_writeback
  "$WORK/latency" flush "$SOCK" "$FLUSH_ROUNDS" "$1" || exit 1
  stop
}
flush_section () {
  cc -O2 -o "$WORK/latency" "$TOP/tests/bench/src/latency.c" -lnbd -lpthread || exit 1
  rm -f "$WORK/sparse.img"; truncate -s $((8 * 1024 * 1024 * 1024)) "$WORK/sparse.img"
  local a50=() a99=() b50=() b99=() m p run
  FLUSH_RUNS_64=; FLUSH_RUNS_2G=
  FLUSH_LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  for run in $(seq 1 "$RUNS"); do
    read -r m p < <(flush_run $((64 << 20)))
    [ -n "$p" ] || { say "bench: flush latency (64 MiB) could not be measured"; exit 1; }
    a50+=("$m"); a99+=("$p"); FLUSH_RUNS_64="$FLUSH_RUNS_64 $m/$p"
    say "bench: flush latency run $run, 64 MiB: median $m ms, p99 $p ms"
    read -r m p < <(flush_run $((2 << 30)))
    [ -n "$p" ] || { say "bench: flush latency (2 GiB) could not be measured"; exit 1; }
    b50+=("$m"); b99+=("$p"); FLUSH_RUNS_2G="$FLUSH_RUNS_2G $m/$p"
    say "bench: flush latency run $run, 2 GiB: median $m ms, p99 $p ms"
  done
  FLUSH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
  F64_P50=$(median "${a50[@]}"); F64_P99=$(median "${a99[@]}")
  F2G_P50=$(median "${b50[@]}"); F2G_P99=$(median "${b99[@]}")
}
flush_rows () {  # the table rows (| what | value | target |)
  local r50 r99 met
  r50=$(ratio "$F2G_P50" "$F64_P50") r99=$(ratio "$F2G_P99" "$F64_P99")
  met=$(awk -v a="$r50" -v b="$r99" 'BEGIN { print (a + 0 <= 1.5 && b + 0 <= 1.5) ? "met" : "**not met**" }')
  echo "| flush after a 4 KiB write, 64 MiB of overlay: median / p99 | $F64_P50 / $F64_P99 ms | |"
  echo "| flush after a 4 KiB write, 2 GiB of overlay: median / p99 | $F2G_P50 / $F2G_P99 ms | |"
  echo "| 2 GiB over 64 MiB, median / p99 | $r50 / $r99 | <= 1.5 ($met) |"
}
flush_note () {
  echo "Flush latency: $RUNS runs of each size, interleaved (64 MiB, 2 GiB, 64 MiB, ...), each a"
  echo "fresh nbdkit; a run is $FLUSH_ROUNDS rounds of a 4 KiB write at a random offset in the filled"
  echo "range, then a flush timed from sending to its reply; before its rounds, each run flushes"
  echo "once (committing the fill), then \`sync\` and waits for the kernel's writeback.  Values are"
  echo "the medians over runs of each run's median and p99.  Load average before / after:"
  echo "$FLUSH_LOAD_BEFORE / $FLUSH_LOAD_AFTER.  Runs (median/p99 ms), 64 MiB:$FLUSH_RUNS_64;"
  echo "2 GiB:$FLUSH_RUNS_2G."
}
if [ "${BENCH_ONLY:-}" = flush ]; then
  say "bench: flush latency only ($(uptime))"
  flush_section
  {
    echo "# luacow benchmark: flush latency only (BENCH_ONLY=flush)"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, nbdkit $(nbdkit --version | awk '{print $2}'),"
    echo "luacow: $FILTER ($(stat -c %y "$FILTER" | cut -d. -f1)), with its journal on."
    echo
    echo "| what | value | target |"
    echo "|---|---:|---:|"
    flush_rows
    echo
    flush_note
  } >"$WORK/table.md"
  cp "$WORK/table.md" "$TOP/tests/bench/last-flush.md"
  cat "$WORK/table.md"
  exit 0
elif [ -n "${BENCH_ONLY:-}" ] && [ "$BENCH_ONLY" != durable ]; then
  say "bench: BENCH_ONLY=$BENCH_ONLY: only 'flush' and 'durable' are known"; exit 2
fi

############################################################ the base
say "bench: 1 GiB base of random data in $WORK"
BASE=$WORK/base.img
head -c $((1024 * 1024 * 1024)) /dev/urandom >"$BASE"
sync "$BASE"
cat "$BASE" >/dev/null                # warm the page cache
COPY=$WORK/copy.img
dd_rate () { dd if=/dev/zero of="$1" bs=1M count=1024 "${@:2}" 2>&1 | tail -1 | awk '{ print $(NF-1), $NF }'; }
CAL_NEW=$(dd_rate "$WORK/cal.img")
CAL_OVER=$(dd_rate "$WORK/cal.img" conv=notrunc)
rm -f "$WORK/cal.img"

# The jobs: name, whether it writes, whether it needs a prefill, fio args.
TIMED=(--runtime="$SECS" --time_based --randrepeat=1)
JOBS=(randwrite-4k randread-4k-untouched randread-4k-overwritten write-1m read-1m)
declare -A DESC ARGS WRITES PREFILL TARGET
DESC[randwrite-4k]="4 KiB random write, iodepth 16"
ARGS[randwrite-4k]="--rw=randwrite --bs=4k --iodepth=16 --size=1g"
WRITES[randwrite-4k]=1; TARGET[randwrite-4k]=0.8
DESC[randread-4k-untouched]="4 KiB random read, untouched data, iodepth 16"
ARGS[randread-4k-untouched]="--rw=randread --bs=4k --iodepth=16 --size=1g"
WRITES[randread-4k-untouched]=0; TARGET[randread-4k-untouched]=0.9
DESC[randread-4k-overwritten]="4 KiB random read, overwritten data (256 MiB written first), iodepth 16"
ARGS[randread-4k-overwritten]="--rw=randread --bs=4k --iodepth=16 --size=256m"
WRITES[randread-4k-overwritten]=1; PREFILL[randread-4k-overwritten]=1; TARGET[randread-4k-overwritten]=0.9
DESC[write-1m]="1 MiB sequential write, iodepth 4"
ARGS[write-1m]="--rw=write --bs=1m --iodepth=4 --size=1g"
WRITES[write-1m]=1; TARGET[write-1m]=0.9
DESC[read-1m]="1 MiB sequential read, iodepth 4"
ARGS[read-1m]="--rw=read --bs=1m --iodepth=4 --size=1g"
WRITES[read-1m]=0; TARGET[read-1m]=0.9

[ "${BENCH_ONLY:-}" = durable ] && JOBS=()   # straight to the durable jobs
declare -A IOPS BEST RES CPU CPUM
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for job in "${JOBS[@]}"; do
  # Runs interleave the configurations, so that a burst of load from
  # elsewhere hits all three alike.
  for run in $(seq 1 "$RUNS"); do
    for config in bare cow luacow; do
      file=$BASE
      if [ "$config" = bare ] && [ "${WRITES[$job]}" = 1 ]; then
        cp "$BASE" "$COPY" && sync "$COPY"   # fresh copy; bare writes into it
        file=$COPY
      fi
      rm -rf "${TMPDIR:?}"/* 2>/dev/null
      start "$config" "$file"
      if [ -n "${PREFILL[$job]:-}" ]; then
        fio_iops prefill --rw=write --bs=1m --iodepth=4 --size=256m >/dev/null
      fi
      c0=$(cpu_ticks "$PID")
      # shellcheck disable=SC2086
      read -r iops ios < <(fio_iops "$job-$config" "${TIMED[@]}" ${ARGS[$job]})
      c1=$(cpu_ticks "$PID")
      stop
      # nbdkit's CPU time per I/O, in microseconds: a measure that load
      # from elsewhere disturbs far less than throughput.
      us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$ios" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
      RES[$job,$config]="${RES[$job,$config]:-} $iops"
      CPU[$job,$config]="${CPU[$job,$config]:-} $us"
      say "bench: $job $config run $run: $iops IOPS, nbdkit CPU $us us/op"
    done
  done
  for config in bare cow luacow; do
    # shellcheck disable=SC2086
    IOPS[$job,$config]=$(median ${RES[$job,$config]})
    # shellcheck disable=SC2086
    BEST[$job,$config]=$(best ${RES[$job,$config]})
    # shellcheck disable=SC2086
    CPUM[$job,$config]=$(median ${CPU[$job,$config]})
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
rm -f "$COPY"

{
  echo "# luacow benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, nbdkit $(nbdkit --version | awk '{print $2}'),"
  echo "fio $(fio --version | sed 's/fio-//'), ioengine=nbd over a Unix socket, 1 GiB file export of random data,"
  echo "nbdkit -t 16, ${SECS} s per job, $RUNS run(s) each (configurations interleaved), a fresh"
  echo "nbdkit for every run.  Load average before / after: $LOAD_BEFORE / $LOAD_AFTER."
  echo "luacow: $FILTER ($(stat -c %y "$FILTER" | cut -d. -f1)), with its journal on."
  echo
  echo "IOPS are medians; \"best\" is luacow's best run over bare's best run (load from"
  echo "elsewhere only ever lowers throughput).  \"met\": yes when the median ratio reaches the"
  echo "target, \"best only\" when only the best runs do.  CPU: nbdkit's user+system time per I/O."
  echo
  echo "| job | bare IOPS | cow IOPS | luacow IOPS | luacow/cow | luacow/bare | best | target | met | CPU us/op bare / cow / luacow |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|"
  for job in "${JOBS[@]}"; do
    b=${IOPS[$job,bare]} c=${IOPS[$job,cow]} l=${IOPS[$job,luacow]}
    r=$(ratio "$l" "$b") rb=$(ratio "${BEST[$job,luacow]}" "${BEST[$job,bare]}")
    met=$(awk -v r="$r" -v rb="$rb" -v t="${TARGET[$job]}" \
      'BEGIN { print (r + 0 >= t) ? "yes" : (rb + 0 >= t) ? "best only" : "**no**" }')
    echo "| ${DESC[$job]} | $b | $c | $l | $(ratio "$l" "$c") | $r | $rb | ${TARGET[$job]} | $met | ${CPUM[$job,bare]} / ${CPUM[$job,cow]} / ${CPUM[$job,luacow]} |"
  done
  echo
  echo "All runs (IOPS, bare / cow / luacow):"
  echo
  for job in "${JOBS[@]}"; do
    echo "- $job:${RES[$job,bare]} /${RES[$job,cow]} /${RES[$job,luacow]}"
  done
  echo
  echo "Page cache calibration on this machine (dd, 1 MiB blocks, 1 GiB): writing a new file"
  echo "$CAL_NEW, overwriting a cached file $CAL_OVER.  The bare plugin overwrites its"
  echo "cached copy in place; cow and luacow write new data into a new (temporary) file."
} >"$WORK/table.md"
cat "$WORK/table.md"

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  cp "$WORK/table.md" "$OUT"
  exit 0
fi

############################################################ durable jobs
# fio with --fsync: every N writes an NBD flush, after 1 GiB was written.
DJOBS=(sync1 sync16)
DESC[sync1]="4 KiB random write, iodepth 1, flush every 64 writes"
ARGS[sync1]="--rw=randwrite --bs=4k --iodepth=1 --fsync=64 --size=1g"
DESC[sync16]="4 KiB random write, iodepth 16, flush every 32 writes"
ARGS[sync16]="--rw=randwrite --bs=4k --iodepth=16 --fsync=32 --size=1g"
DCONF=(bare luacow luacow-nj qemu-nbd)
for job in "${DJOBS[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for config in "${DCONF[@]}"; do
      file=$BASE
      if [ "$config" = bare ]; then cp "$BASE" "$COPY" && sync "$COPY"; file=$COPY; fi
      rm -rf "${TMPDIR:?}"/* 2>/dev/null
      start "$config" "$file"
      fio_iops prefill --rw=write --bs=1m --iodepth=4 --size=1g >/dev/null
      # shellcheck disable=SC2086
      read -r iops _ < <(fio_iops "$job-$config" "${TIMED[@]}" ${ARGS[$job]})
      stop
      RES[$job,$config]="${RES[$job,$config]:-} $iops"
      say "bench: $job $config run $run: $iops IOPS"
    done
  done
  for config in "${DCONF[@]}"; do
    # shellcheck disable=SC2086
    IOPS[$job,$config]=$(median ${RES[$job,$config]})
  done
done
rm -f "$COPY"
{
  echo
  echo "## Durable writes (fio --fsync, after 1 GiB was written)"
  echo
  echo "bare: \`nbdkit file\` (flush = fdatasync).  luacow: with its journal (flush = journal commit)"
  echo "and without (flush makes nothing durable).  qemu-nbd: \`qemu-img create -f qcow2 -b base.img -F raw"
  echo "ov.qcow2; qemu-nbd -t -k SOCK -f qcow2 ov.qcow2\`.  Medians of $RUNS runs; targets: luacow with"
  echo "a journal >= 0.8x bare and >= 2x qemu-nbd."
  echo
  echo "| job | bare | luacow journal | luacow no journal | qemu-nbd qcow2 | journal/bare | journal/qemu-nbd | met |"
  echo "|---|---:|---:|---:|---:|---:|---:|:---:|"
  for job in "${DJOBS[@]}"; do
    b=${IOPS[$job,bare]} l=${IOPS[$job,luacow]} n=${IOPS[$job,luacow-nj]} q=${IOPS[$job,qemu-nbd]}
    rb=$(ratio "$l" "$b") rq=$(ratio "$l" "$q")
    met=$(awk -v a="$rb" -v c="$rq" 'BEGIN { print (a + 0 >= 0.8 && c + 0 >= 2) ? "yes" : "**no**" }')
    echo "| ${DESC[$job]} | $b | $l | $n | $q | $rb | $rq | $met |"
  done
  echo
  for job in "${DJOBS[@]}"; do
    echo "- $job:${RES[$job,bare]} /${RES[$job,luacow]} /${RES[$job,luacow-nj]} /${RES[$job,qemu-nbd]}"
  done
  echo
  echo "The no-journal column is a ceiling for any durable design: there a flush does nothing."
  for job in "${DJOBS[@]}"; do
    echo "$job: 2x qemu-nbd is $((2 * ${IOPS[$job,qemu-nbd]})) IOPS, $(ratio $((2 * ${IOPS[$job,qemu-nbd]})) "${IOPS[$job,luacow-nj]}")x that ceiling and $(ratio $((2 * ${IOPS[$job,qemu-nbd]})) "${IOPS[$job,bare]}")x bare."
  done
} >>"$WORK/table.md"
if [ "${BENCH_ONLY:-}" = durable ]; then
  {
    echo "# luacow benchmark: durable jobs only (BENCH_ONLY=durable)"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, nbdkit $(nbdkit --version | awk '{print $2}'), fio $(fio --version | sed 's/fio-//'),"
    echo "$SECS s per job, $RUNS run(s) each, configurations interleaved, a fresh nbdkit for every run."
    echo "luacow: $FILTER ($(stat -c %y "$FILTER" | cut -d. -f1))."
    echo
    sed -n '/^## Durable/,$p' "$WORK/table.md"
  } >"$TOP/tests/bench/last-durable.md"
  cat "$TOP/tests/bench/last-durable.md"
  exit 0
fi

############################################################ latencies
say "bench: flush latency"
flush_section
cc -O2 -o "$WORK/firstread" "$TOP/tests/bench/src/firstread.c" -lnbd || exit 1
sparse=$WORK/sparse.img

say "bench: write latency during a checkpoint save of 2 GiB"
cat >"$WORK/flushsave.lua" <<LUA
return { events = { "flush" }, name = "$WORK/ckpt.qcow2",
         save = function (ctx) return ctx.event == "flush" end }
LUA
rm -rf "${TMPDIR:?}"/* 2>/dev/null
start luacow "$sparse" luacow-script="$WORK/flushsave.lua"
fio_iops fill --rw=write --bs=1m --iodepth=4 --size=2g --refill_buffers=1 >/dev/null
read -r CK_P99 CK_MAX CK_N CK_SAVE_MS < <("$WORK/latency" checkpoint "$SOCK" $((2 << 30)))
stop

say "bench: recovery of a journal holding 2 GiB of 4 KiB writes"
rm -rf "${TMPDIR:?}"/* 2>/dev/null
start luacow "$sparse"
fio_iops fill4k --rw=write --bs=4k --iodepth=16 --size=2g --end_fsync=1 --refill_buffers=1 >/dev/null
kill -KILL "$PID"; wait "$PID" 2>/dev/null; PID=
JSIZE=$(du -m "$TMPDIR/bench.journal" | cut -f1)
t0=$(now_ns)
launch luacow "$sparse"
"$WORK/firstread" "$SOCK" 60000 || exit 1
REC_MS=$(ms_since "$t0")
stop
REC_LINE=$(grep 'recovered journal' "$LOG" | tail -1 | sed 's/.*recovered journal [^:]*: //')
{
  echo
  echo "## Latencies and recovery (luacow with its journal)"
  echo
  echo "| what | value | target |"
  echo "|---|---:|---:|"
  flush_rows
  echo "| 4 KiB writes sent during a checkpoint save of 2 GiB ($CK_N writes, save $CK_SAVE_MS ms): p99 / max | $CK_P99 / $CK_MAX ms | a few ms |"
  echo "| recovery of a journal of 2 GiB of 4 KiB writes (${JSIZE} MiB): nbdkit start to first read answered | $(secs "$REC_MS") s | < 2 s |"
  echo "| its log line | $REC_LINE | |"
  echo
  flush_note
} >>"$WORK/table.md"

############################################################ save timings
# write_random SIZE SEED: 256 MiB in random 4 KiB..1 MiB pieces (4 KiB
# aligned, random offsets) through $URI.
write_random () {
  nbdsh -u "$URI" -c "
import os, random
r = random.Random($2); size = $1; total = 0
while total < 256 * 1048576:
    n = min(4096 * r.randint(1, 256), 256 * 1048576 - total)
    h.pwrite(os.urandom(n), 4096 * r.randrange(0, (size - n) // 4096 + 1))
    total += n"
}
# luacow_save SIZE: ms from SIGTERM until nbdkit has saved and exited.
luacow_save () {
  local base=$WORK/sparse.img save=$WORK/luacow.qcow2
  rm -rf "$base" "$save" "${TMPDIR:?}"/*; truncate -s "$1" "$base"
  start luacow "$base" luacow-save="$save"
  write_random "$1" 1
  local t0; t0=$(now_ns)
  stop
  LUACOW_MS=$(ms_since "$t0")
  LUACOW_BYTES=$(stat -c %s "$save")
  LUACOW_LOGLINE=$(grep 'luacow: saved' "$LOG" | tail -1 | sed 's/.*(exit): //; s/; attach.*//')
}
# cow_save SIZE: the nbdkit-cow-filter(1) recipe, ms (or "timeout").
cow_save () {
  local base=$WORK/sparse.img diff=$WORK/cow-diff.qcow2
  rm -f "$base" "$diff"; truncate -s "$1" "$base"
  start cow "$base"
  write_random "$1" 1
  local t0; t0=$(now_ns)
  if timeout "$COW_TIMEOUT" qemu-img create -q -F raw -b "$URI" -f qcow2 "$diff" &&
     timeout "$COW_TIMEOUT" qemu-img rebase -F raw -b "$base" -f qcow2 "$diff"; then
    COW_MS=$(ms_since "$t0")
    COW_BYTES=$(stat -c %s "$diff")
  else
    COW_MS="timeout"; COW_BYTES="-"
  fi
  stop
}
cp_time () {
  head -c $((256 * 1024 * 1024)) /dev/urandom >"$WORK/src.bin"
  sync "$WORK/src.bin"; cat "$WORK/src.bin" >/dev/null
  local t0; t0=$(now_ns)
  cp "$WORK/src.bin" "$WORK/dst.bin" && sync "$WORK/dst.bin"
  CP_MS=$(ms_since "$t0")
  rm -f "$WORK/src.bin" "$WORK/dst.bin"
}

say "bench: save timings"
cp_time
{
  echo
  echo "## Saving 256 MiB written in random 4 KiB..1 MiB pieces"
  echo
  echo "luacow: SIGTERM until nbdkit exited after its exit save (fsync'd qcow2, 64 KiB clusters)."
  echo "cow: the nbdkit-cow-filter(1) recipe, \`qemu-img create -F raw -b nbd+unix:///?socket=... -f qcow2 diff.qcow2\`"
  echo "then \`qemu-img rebase -F raw -b base.img -f qcow2 diff.qcow2\` while nbdkit runs (capped at ${COW_TIMEOUT} s)."
  echo "cp: \`cp\` of a 256 MiB file from the page cache, then \`sync\` of the copy: ${CP_MS} ms."
  echo
  echo "| export | luacow save | luacow file | luacow/cp | cow recipe | cow file | luacow says |"
  echo "|---|---:|---:|---:|---:|---:|---|"
} >>"$WORK/table.md"
for spec in "8 GiB:$((8 * 1024 * 1024 * 1024))" "1 TiB:$((1024 * 1024 * 1024 * 1024))"; do
  label=${spec%%:*} size=${spec#*:}
  luacow_save "$size"
  cow_save "$size"
  say "bench: $label: luacow $LUACOW_MS ms, cow $COW_MS ms, cp $CP_MS ms"
  cow_col=$([ "$COW_MS" = timeout ] && echo "> ${COW_TIMEOUT} s" || echo "$(secs "$COW_MS") s")
  cow_file=$([ "$COW_BYTES" = - ] && echo - || echo "$((COW_BYTES / 1048576)) MiB")
  echo "| $label sparse | $(secs "$LUACOW_MS") s | $((LUACOW_BYTES / 1048576)) MiB | $(ratio "$LUACOW_MS" "$CP_MS") | $cow_col | $cow_file | $LUACOW_LOGLINE |" \
    >>"$WORK/table.md"
done

############################################################ reload timing
say "bench: reload timing (2 GiB save)"
base=$WORK/sparse.img save=$WORK/big.qcow2
rm -rf "$base" "$save" "${TMPDIR:?}"/*; truncate -s $((8 * 1024 * 1024 * 1024)) "$base"
start luacow "$base" luacow-save="$save"
fio_iops fill2g --rw=write --bs=1m --iodepth=4 --size=2g --refill_buffers=1 >/dev/null
t0=$(now_ns); stop; SAVE2G_MS=$(ms_since "$t0")
first_read () {  # ARGS for launch: ms from starting nbdkit to the first read answered
  local t0; t0=$(now_ns)
  launch "$@"
  "$WORK/firstread" "$SOCK" 60000 || exit 1   # polls every millisecond
  ms_since "$t0"
  stop
}
BARE_MS=$(first_read bare "$base")
RELOAD_MS=$(first_read luacow "$base" luacow-load="$save")
{
  echo
  echo "## Reloading a save holding 2 GiB of data"
  echo
  echo "| what | time |"
  echo "|---|---:|"
  echo "| exit save of 2 GiB written sequentially (8 GiB export), $(( $(stat -c %s "$save") / 1048576 )) MiB file | $(secs "$SAVE2G_MS") s |"
  echo "| nbdkit start to first 4 KiB read answered, bare file plugin | $(secs "$BARE_MS") s |"
  echo "| nbdkit start to first 4 KiB read answered, luacow-load= of that save | $(secs "$RELOAD_MS") s |"
} >>"$WORK/table.md"

cp "$WORK/table.md" "$OUT"
echo
sed -n '/^## Saving/,$p' "$WORK/table.md"
say "bench: written to $OUT"
