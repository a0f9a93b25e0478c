#!/usr/bin/env bash
# Usage: tests/stress/stress.sh [OPTIONS] [SECONDS]      (default 20 s)
#
# Concurrency stress of the luacow filter under checkpoints, with an exact
# model of every acknowledged write:
#
#   nbdkit pattern size=SIZE --filter=luacow, policy: events {"flush",
#   "interval"}, interval = 1, save on every event, always to one path,
#   the overlay in a journal (flushes durable in it, removed at exit);
#   tests/stress/stress.c: CONNS connections doing random unaligned writes,
#   zeroes, trims, reads (checked at once), block status and flushes for
#   SECONDS, each connection owning a rotating disjoint set of regions;
#   a mid-run flush checkpoint is kept with its model;
#   every other save (each to a file of its own) is checked to be a
#   point-in-time image: the export after every request acknowledged
#   before one instant of the save's window and none sent after it
#   (tests/stress/cut.c, from the client's record of every request);
#   SIGTERM -> the exit save; then each checkpoint is checked with
#   qemu-img check, reloaded (luacow-load=) into a fresh nbdkit over the
#   same base and compared byte for byte with its model.
#   Round 2 (--rounds) starts a filter that reloads round 1's final
#   checkpoint (data read from the file on demand), stresses it the same
#   way from round 1's model for half the time, saving compressed
#   checkpoints (zstd; see --compress), and checks those the same way.
#   The kill round (SECONDS/2, from the base) sends nbdkit SIGTERM halfway
#   while every connection has a request in flight: the exit save must
#   hold every acknowledged request; a request in flight may have
#   happened wholly, partly or not at all (byte by byte).
#   The client runs under a timeout and nbdkit gets 120 s to exit, so a
#   deadlock fails the test instead of hanging it.
#
# Options (environment variable in brackets):
#   --mode plain|valgrind|asan  [STRESS_MODE]  default plain
#       valgrind: every nbdkit runs under valgrind memcheck with
#         tests/stress/valgrind.supp; reports whose stack involves the
#         filter fail the test, others are printed as comments.
#       asan: the filter is rebuilt from a copy of the tree with clang
#         -fsanitize=address,undefined and run with the ASan runtime
#         preloaded into nbdkit (LeakSanitizer on at exit).
#   --conns N         [STRESS_CONNS]        default 8
#   --size BYTES      [STRESS_SIZE]         default 16 MiB + 1536 (4 MiB + 1536 under valgrind)
#   --rate OPS/S      [STRESS_RATE]         total cap, default none (300 under valgrind)
#   --flush-one-in N  [STRESS_FLUSH_ONE_IN] a request is a flush with odds 1/N, default 2000
#   --seed N          [STRESS_SEED]         default: time
#   --region BYTES    [STRESS_REGION]       unit of ownership, default 37965 (not a
#                                           multiple of 4 KiB: owners share blocks)
#   --rounds N        [STRESS_ROUNDS]       default 2: round R > 1 reloads round R-1's
#                                           final checkpoint (and its model) and runs
#                                           for SECONDS/2
#   --compress LIST   [STRESS_COMPRESS]     compression of rounds 2, 3, ... in turn,
#                                           of zstd, deflate, none; default
#                                           "zstd,deflate,none" ("none" under valgrind,
#                                           where compressing is slow)
#   --no-kill         [STRESS_KILL=0]       skip the kill round (below)
#   --cluster BYTES   [STRESS_CLUSTER]      qcow2 cluster size of the saves (512 to
#                                           2M; the overlay block is min(this, 4 KiB)),
#                                           default 64 KiB
#   --keep            [STRESS_KEEP=1]       keep the scratch directory
# Also: LUACOW_FILTER (the filter to test, default plugin/nbdkit-luacow-filter.so;
# --mode asan builds its own from STRESS_SRC, default this tree),
# STRESS_TMPDIR (scratch location; default /dev/shm when it has 4 GiB free
# and the machine 6 GiB available, so that the saves' fsyncs do not
# dominate, else TMPDIR or /tmp).  Every save of a round is kept until
# the round's cut check: up to SIZE bytes per save, about 10 saves a
# second of the round.
#
# The export size is a multiple of 512 but not of 4096, so the last overlay
# block and the last qcow2 cluster are short.  Prints TAP; exits non-zero
# when anything failed.
set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH=/usr/bin:$PATH

mode=${STRESS_MODE:-plain}
conns=${STRESS_CONNS:-8}
size=${STRESS_SIZE:-}
rate=${STRESS_RATE:-}
flush_one_in=${STRESS_FLUSH_ONE_IN:-2000}
seed=${STRESS_SEED:-}
region=${STRESS_REGION:-37965}
rounds=${STRESS_ROUNDS:-2}
compress=${STRESS_COMPRESS-}
kill_round=${STRESS_KILL:-1}
cluster=${STRESS_CLUSTER:-}
keep=${STRESS_KEEP:-0}
secs=
while [ $# -gt 0 ]; do
  case $1 in
    --mode) mode=$2; shift 2 ;;
    --mode=*) mode=${1#*=}; shift ;;
    --conns) conns=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --flush-one-in) flush_one_in=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --region) region=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    --no-kill) kill_round=0; shift ;;
    --cluster) cluster=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) secs=$1; shift ;;
    *) echo "stress.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
secs=${secs:-20}
case $mode in
  plain) ;;
  valgrind) size=${size:-$((4 * 1048576 + 1536))}; rate=${rate:-300}; compress=${compress:-none} ;;
  asan) ;;
  *) echo "stress.sh: --mode must be plain, valgrind or asan" >&2; exit 2 ;;
esac
size=${size:-$((16 * 1048576 + 1536))}
rate=${rate:-0}
seed=${seed:-$(date +%s)}

n=0 failed=0
ok ()     { n=$((n + 1)); echo "ok $n - [$mode] $*"; }
not_ok () { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - [$mode] $*"; }
finish () { echo "1..$n"; [ "$failed" -eq 0 ]; exit; }
comment () { sed 's/^/# /'; }

base=${STRESS_TMPDIR:-}
if [ -z "$base" ]; then
  shm_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
  avail_kib=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo 2>/dev/null)
  if [ -w /dev/shm ] && [ "${shm_kib:-0}" -ge 4194304 ] && [ "${avail_kib:-0}" -ge 6291456 ]; then
    base=/dev/shm
  else
    base=${TMPDIR:-/tmp}
  fi
fi
dir=$(mktemp -d "$base/luacow-stress.XXXXXX") || { not_ok "mktemp in $base"; finish; }
pids=()
cleanup () {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if [ "$keep" = 1 ]; then echo "# scratch directory kept: $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

echo "# mode $mode, $secs s, $conns connections, size $size, rate ${rate/#0/unlimited}, flush 1/$flush_one_in, region $region, cluster ${cluster:-65536}, seed $seed, scratch $dir"

# ---------------------------------------------------------------- build
if cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -o "$dir/stress" "$TOP"/tests/stress/{stress,record,cut}.c \
     $(pkg-config --cflags --libs libnbd 2>/dev/null || echo -lnbd) -lpthread >"$dir/cc.log" 2>&1; then
  :   # building is no test: a failure is one
else
  not_ok "build the libnbd stress client"; comment <"$dir/cc.log"; finish
fi

# A dlclose that does nothing: the filter stays mapped after nbdkit unloads
# it, so that leak reports made at exit can still name its functions.
printf 'int dlclose (void *h);\nint dlclose (void *h) { (void) h; return 0; }\n' >"$dir/nodlclose.c"
cc -shared -fPIC -o "$dir/nodlclose.so" "$dir/nodlclose.c" || { not_ok "build the dlclose shim"; finish; }

filter=${LUACOW_FILTER:-$TOP/plugin/nbdkit-luacow-filter.so}
wrap=() wrap_light=() nbdkit_opts=()
case $mode in
  plain|valgrind)
    if [ ! -f "$filter" ]; then not_ok "the filter $filter is built (run make)"; finish; fi
    if [ "$mode" = valgrind ]; then
      if ! command -v valgrind >/dev/null; then not_ok "valgrind is installed"; finish; fi
      # %p: one log per process; nbdkit does not fork with -f.
      wrap=(env "LD_PRELOAD=$dir/nodlclose.so" valgrind --tool=memcheck --leak-check=full
            --errors-for-leak-kinds=definite,possible --error-exitcode=99 --num-callers=40
            --fair-sched=yes --suppressions="$TOP/tests/stress/valgrind.supp"
            --log-file="$dir/vg-%q{LUACOW_RUN}.%p.log")
      # Each connection is used synchronously: 2 threads per connection
      # instead of 16 make connecting under valgrind take 1 s, not 10.
      nbdkit_opts=(--threads=2)
    fi ;;
  asan)
    asan_rt=$(clang -print-file-name=libclang_rt.asan-x86_64.so 2>/dev/null)
    if ! command -v clang >/dev/null || [ ! -f "$asan_rt" ]; then
      not_ok "clang and libclang_rt.asan-x86_64.so are installed"; finish
    fi
    mkdir -p "$dir/tree"
    src=${STRESS_SRC:-$TOP}
    cp -r "$src/Makefile" "$src/plugin" "$src/lua" "$src/tools" "$dir/tree/" 2>"$dir/build.log"
    rm -f "$dir"/tree/plugin/*.o "$dir"/tree/plugin/*.so
    if make -s -j2 -C "$dir/tree" CC=clang CFLAGS="-O1 -g -Wno-error" \
         SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
         plugin/nbdkit-luacow-filter.so >>"$dir/build.log" 2>&1; then
      echo "# built the filter with clang -fsanitize=address,undefined"
    else
      not_ok "build the filter with clang -fsanitize=address,undefined"; tail -30 "$dir/build.log" | comment; finish
    fi
    filter=$dir/tree/plugin/nbdkit-luacow-filter.so
    wrap=(env "LD_PRELOAD=$asan_rt $dir/nodlclose.so"
          "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:exitcode=98:log_path=$dir/asan"
          "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$dir/asan"
          "LSAN_OPTIONS=log_path=$dir/asan")
    if command -v llvm-symbolizer >/dev/null; then
      wrap+=("ASAN_SYMBOLIZER_PATH=$(command -v llvm-symbolizer)")
    fi
    # The instrumented filter cannot load without the runtime: the light
    # variant only skips the (slow) leak check at exit.
    wrap_light=("${wrap[@]}" "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$dir/asan")
    # Threads are costly under ASan too, and each connection is used
    # synchronously.
    nbdkit_opts=(--threads=2) ;;
esac

cat >"$dir/policy.lua" <<'EOF'
-- Save on every event: the exit save to luacow-save=, the others each to
-- a file of its own (PATH.N.qcow2, checked by the client's cut mode);
-- log each save with its path and ctx.now (touching last_save, so the
-- saved hook sees the previous checkpoint).  Reload luacow-load= if
-- given; compress as luacow-compress= says; clusters of luacow-cluster=
-- bytes (default 64 KiB).
local n = 0
return {
  events = { "flush", "interval" },
  interval = 1,
  cluster_size = function (disk) return disk.params.cluster or 65536 end,
  journal = function (disk) return disk.params.journal or false end,
  load = function (disk) return disk.params.load end,
  save = function (ctx) return true end,
  name = function (ctx)
    if ctx.event == "exit" then return ctx.params.save end
    n = n + 1
    return string.format("%s.%d.qcow2", ctx.params.save, n)
  end,
  compress = function (ctx) return ctx.params.compress or false end,
  saved = function (ctx, r)
    local f = assert(io.open(ctx.params.log, "a"))
    f:write(string.format("%s %d %d %.3f %s %s %.6f\n", ctx.event, r.data_clusters,
                          r.zero_clusters, r.seconds,
                          ctx.last_save and ctx.last_save.path or "-", r.path, ctx.now))
    f:close()
  end,
}
EOF

# start NAME SOCK ARGS...: nbdkit (wrapped per mode; with unwrapped=1,
# without valgrind or without LeakSanitizer) in the background; sets PID.
# Waits for the socket (valgrind starts slowly).
start () {
  local name=$1 sock=$2 w=("${wrap[@]}"); shift 2
  [ "${unwrapped:-0}" = 1 ] && w=("${wrap_light[@]}")
  rm -f "$sock"
  LUACOW_RUN=$name TMPDIR=$dir "${w[@]}" nbdkit -f "${nbdkit_opts[@]}" -U "$sock" --filter="$filter" \
    pattern size="$size" "$@" 2>"$dir/nbdkit-$name.log" &
  PID=$!
  pids+=("$PID")
  for _ in $(seq 1 600); do
    [ -S "$sock" ] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "# nbdkit ($name) did not start:"; comment <"$dir/nbdkit-$name.log"
  return 1
}
# stop [nosignal]: SIGTERM (unless sent already), wait; sets RC.  An
# nbdkit still there after 120 s is hung: it gets SIGKILL (RC 137).
stop () {
  [ "${1:-}" = nosignal ] || kill -TERM "$PID" 2>/dev/null
  local i
  for ((i = 0; i < 1200; i++)); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$PID" 2>/dev/null; then
    echo "# nbdkit (pid $PID) did not exit within 120 s of SIGTERM: hung, killed"
    kill -KILL "$PID" 2>/dev/null
  fi
  wait "$PID"; RC=$?
  # Reaped: forget it, so that cleanup never signals a reused pid.
  local keep_pids=() p
  for p in "${pids[@]}"; do [ "$p" = "$PID" ] || keep_pids+=("$p"); done
  pids=("${keep_pids[@]}")
}
# client ARGS...: the stress client, with a timeout (a deadlocked filter
# must fail the test, not hang it).
client () {
  timeout -k 10 $((${secs%.*} * 4 + 180)) "$dir/stress" "$@"
}
# exit_ok NAME: ok if nbdkit exited 0; under a checker, its own exit code
# (99 valgrind; LeakSanitizer at exit: 98, or 134 with abort_on_error) is
# judged by the report checks instead.
exit_ok () {
  local what="nbdkit ($1) exited cleanly after SIGTERM"
  if [ "$RC" -eq 0 ] || { [ "$mode" = valgrind ] && [ "$RC" -eq 99 ]; } ||
     { [ "$mode" = asan ] && { [ "$RC" -eq 98 ] || [ "$RC" -eq 134 ]; } &&
       grep -qs 'ERROR: LeakSanitizer' "$dir/asan.$PID"; }; then
    if [ "$RC" -eq 0 ]; then ok "$what"
    else ok "$what (exit status $RC: see the $mode report checks)"; fi
  else
    not_ok "$what (exit status $RC)"; tail -20 "$dir/nbdkit-$1.log" | comment
  fi
}

# check_ckpt NAME FILE MODEL [PENDING]: qemu-img check, reload (default
# policy, luacow-load=) over the same base, compare every byte with MODEL
# (bytes of requests in PENDING may also hold their outcome).
check_ckpt () {
  local name=$1 file=$2 model=$3 pending=${4:-}
  if [ ! -f "$file" ] || [ ! -f "$model" ]; then
    not_ok "the $name checkpoint and its model exist"; return
  fi
  if qemu-img check -q -f qcow2 "$file" >"$dir/check-$name.log" 2>&1; then
    ok "qemu-img check of the $name checkpoint"
  else
    not_ok "qemu-img check of the $name checkpoint"; comment <"$dir/check-$name.log"
  fi
  if ! start "reload-$name" "$dir/sock-$name" luacow-load="$file"; then
    not_ok "reload the $name checkpoint"; return
  fi
  if client -V -s "$dir/sock-$name" -i "$model" ${pending:+-A "$pending"} >"$dir/verify-$name.log" 2>&1; then
    ok "the reloaded $name checkpoint matches its model byte for byte ($size bytes)"
  else
    not_ok "the reloaded $name checkpoint matches its model byte for byte"
    head -20 "$dir/verify-$name.log" | sed 's/^\([^#]\)/# \1/'
  fi
  stop
  exit_ok "reload-$name"
}

# cut_check WHAT SAVELOG HISTORY [INITIAL]: every save but the exit save
# is a point-in-time image: the export after every request acknowledged
# before one instant of the save's window and none sent after it
# (tests/stress/cut.c).  Saves that pass are deleted.
cut_check () {
  local what=$1 log=$2 history=$3 initial=${4:-} out summary kf=()
  out=$dir/cut-${what// /-}.log
  [ "$keep" = 1 ] && kf=(-Q)
  client -C "$history" -l "$log" -D "$dir" ${initial:+-I "$initial"} "${kf[@]}" >"$out" 2>&1
  local crc=$? checked
  summary=$(grep '^cut: ' "$out")
  checked=$(sed -n 's/^cut: \([0-9]*\) saves checked.*/\1/p' "$out")
  if [ "$crc" -eq 0 ] && [ "${checked:-0}" -ge 1 ]; then
    ok "$what: every save taken under load is a point-in-time image of the acknowledged requests (${summary#cut: })"
  else
    not_ok "$what: every save taken under load is a point-in-time image of the acknowledged requests (exit status $crc; ${summary:-no summary})"
    grep -v '^cut: ' "$out" | head -40 | sed 's/^\([^#]\)/# \1/'
  fi
}

# round R SECONDS [LOAD MODEL COMPRESS]: one stress run, from the base
# (round 1) or from the previous round's reloaded checkpoint, then its
# final and mid-run checkpoints checked.
round () {
  local r=$1 t=$2 load=${3:-} initial=${4:-} compress=${5:-}
  local ckpt=$dir/checkpoint$r.qcow2 args=() from="the pattern base"
  args=(luacow-script="$dir/policy.lua" luacow-save="$ckpt" luacow-log="$dir/saves$r.log"
        luacow-journal="$dir/stress$r.journal" ${cluster:+luacow-cluster="$cluster"})
  if [ -n "$load" ]; then
    args+=(luacow-load="$load"); from="reloaded round $((r - 1))"
  fi
  [ -n "$compress" ] && args+=(luacow-compress="$compress")
  local what="round $r (from $from${compress:+, saves compressed with $compress})"
  if ! start "stress$r" "$dir/sock" "${args[@]}"; then
    not_ok "$what: start nbdkit with the filter"; return 1
  fi
  echo "# $what: nbdkit with the filter started (pid $PID)"
  client -s "$dir/sock" -t "$t" -c "$conns" -r "$rate" -S "$((seed + r))" -R "$region" \
    -F "$flush_one_in" -o "$dir/final$r.model" -l "$dir/saves$r.log" -H "$dir/history$r" \
    -m "$dir/mid$r" ${initial:+-I "$initial"} >"$dir/client$r.log" 2>&1
  local crc=$?
  if [ "$crc" -eq 0 ]; then
    ok "round $r: $conns connections of random I/O for $t s, every read and the read-back match the model"
  else
    not_ok "round $r: $conns connections of random I/O for $t s (client exit status $crc)"
    grep -v '^# stress:' "$dir/client$r.log" | head -40 | sed 's/^\([^#]\)/# \1/'
  fi
  grep -E '^# [0-9]+ ops in' "$dir/client$r.log"
  stop
  exit_ok "stress$r"
  if [ -e "$dir/stress$r.journal" ]; then
    not_ok "round $r: the exit save removed the journal"
  else
    ok "round $r: the journal (flushes durable in it) was removed by the exit save"
  fi
  local nflush ninterval nexit
  nflush=$(grep -c '^flush ' "$dir/saves$r.log" 2>/dev/null)
  ninterval=$(grep -c '^interval ' "$dir/saves$r.log" 2>/dev/null)
  nexit=$(grep -c '^exit ' "$dir/saves$r.log" 2>/dev/null)
  if [ "${nflush:-0}" -ge 1 ] && [ "${ninterval:-0}" -ge 1 ] && [ "${nexit:-0}" -eq 1 ]; then
    ok "round $r: checkpoints saved on flush ($nflush), interval ($ninterval) and exit ($nexit)"
  else
    not_ok "round $r: checkpoints saved on flush (${nflush:-0}), interval (${ninterval:-0}) and exit (${nexit:-0})"
    comment <"$dir/nbdkit-stress$r.log" | tail -20
  fi
  awk '{ n++; t += $4; if ($4 > m) m = $4 } END { if (n) printf "# %d saves, %.3f s mean, %.3f s max\n", n, t / n, m }' \
    "$dir/saves$r.log" 2>/dev/null
  cut_check "round $r" "$dir/saves$r.log" "$dir/history$r" "$initial"
  check_ckpt "final$r" "$ckpt" "$dir/final$r.model"
  # Under valgrind or ASan, reloading is checked with the final checkpoint
  # already: the mid-run one is reloaded without valgrind or without the
  # leak check at exit, to save time.
  [ "$mode" != plain ] && unwrapped=1
  check_ckpt "mid-run$r" "$dir/mid$r.qcow2" "$dir/mid$r.model"
  unwrapped=0
}

# kill_round SECONDS: from the base; SIGTERM to nbdkit halfway while all
# connections are busy.  The exit save must hold every acknowledged
# request (and each request in flight wholly, partly or not at all).
kill_round () {
  local t=$1 ckpt=$dir/checkpoint-kill.qcow2 k
  k=$(awk -v s="$t" 'BEGIN { print s / 2 }')
  # nbdkit itself leaks the connections still open at SIGTERM; LSan cannot
  # tell that from a filter leak (valgrind can: valgrind.supp), so under
  # ASan this nbdkit runs without the leak check.
  [ "$mode" = asan ] && unwrapped=1
  start stress-kill "$dir/sock" luacow-script="$dir/policy.lua" luacow-save="$ckpt" \
    luacow-log="$dir/saves-kill.log" luacow-journal="$dir/stress-kill.journal" \
    ${cluster:+luacow-cluster="$cluster"}
  local started=$?
  unwrapped=0
  if [ "$started" -ne 0 ]; then
    not_ok "kill round: start nbdkit with the filter"; return 1
  fi
  echo "# kill round: nbdkit with the filter started (pid $PID)"
  client -s "$dir/sock" -t "$t" -c "$conns" -r "$rate" -S "$((seed + 99))" -R "$region" \
    -F "$flush_one_in" -o "$dir/kill.model" -l "$dir/saves-kill.log" -H "$dir/history-kill" \
    -k "$k" -K "$PID" >"$dir/client-kill.log" 2>&1
  local crc=$?
  if [ "$crc" -eq 0 ]; then
    ok "kill round: SIGTERM after $k s with $conns connections busy; every read before matched"
  else
    not_ok "kill round: SIGTERM after $k s with $conns connections busy (client exit status $crc)"
    grep -v '^# stress:' "$dir/client-kill.log" | head -40 | sed 's/^\([^#]\)/# \1/'
  fi
  grep -E '^# ([0-9]+ ops in|[0-9]+ requests were in flight)' "$dir/client-kill.log"
  stop nosignal
  exit_ok stress-kill
  if [ "$(grep -c '^exit ' "$dir/saves-kill.log" 2>/dev/null)" = 1 ]; then
    ok "kill round: the exit save ran"
  else
    not_ok "kill round: the exit save ran"; comment <"$dir/nbdkit-stress-kill.log" | tail -20
  fi
  cut_check "kill round" "$dir/saves-kill.log" "$dir/history-kill"
  check_ckpt kill "$ckpt" "$dir/kill.model" "$dir/kill.model.pending"
}

# ---------------------------------------------------------------- run
IFS=, read -r -a compressions <<<"${compress:-zstd,deflate,none}"
round 1 "$secs"
for ((r = 2; r <= rounds; r++)); do
  t=$(awk -v s="$secs" 'BEGIN { t = s / 2; print t < 1 ? 1 : t }')
  c=${compressions[$(((r - 2) % ${#compressions[@]}))]}
  [ "$c" = none ] && c=
  round "$r" "$t" "$dir/checkpoint$((r - 1)).qcow2" "$dir/final$((r - 1)).model" "$c"
done
if [ "$kill_round" = 1 ]; then
  kill_round "$(awk -v s="$secs" 'BEGIN { t = s / 2; print t < 1 ? 1 : t }')"
fi

# ---------------------------------------------------------------- reports
# The filter's frames: its object file, or one of its source files.
srcs=$(cd "$TOP/plugin" && ls *.c | sed 's/\.c$//' | paste -sd'|')
filter_re="nbdkit-luacow-filter\\.so|[(/ ]($srcs)\\.c:"

# classify FILE...: reads valgrind logs; prints "ferr fleak oerr oleak" and
# writes the filter's blocks to $dir/filter-reports, the others to
# $dir/other-reports.
vg_classify () {
  awk -v re="$filter_re" -v fr="$dir/filter-reports" -v orp="$dir/other-reports" '
    function done_block(   leak, inf) {
      if (blk != "" && frames) {
        leak = blk ~ /lost in loss record/
        inf = blk ~ re
        if (inf) { if (leak) fl++; else fe++; print blk "\n" > fr }
        else { if (leak) ol++; else oe++; print blk "\n" > orp }
      }
      blk = ""; frames = 0
    }
    FNR == 1 { done_block(); skip = 0 }
    /^==[0-9]+== *$/ { done_block(); skip = 0; next }
    /^==[0-9]+== (HEAP|LEAK|ERROR) SUMMARY/ { done_block(); skip = 1 }
    skip { next }
    /^==[0-9]+== +(at|by) 0x/ { frames = 1 }
    { line = $0; sub(/^==[0-9]+== /, "", line); blk = blk (blk == "" ? "" : "\n") line }
    END { done_block(); printf "%d %d %d %d\n", fe, fl, oe, ol }' "$@"
}

# asan_classify FILE...: the same for ASan/UBSan/LSan logs.  An ASan or
# UBSan report runs from its "ERROR:"/"runtime error:" line to its
# "SUMMARY:" line and counts once; a LeakSanitizer report counts one per
# "Direct/Indirect leak" record (up to the next empty line).
asan_classify () {
  awk -v re="$filter_re" -v fr="$dir/filter-reports" -v orp="$dir/other-reports" '
    function done_block(   inf) {
      if (blk != "") {
        inf = blk ~ re
        if (inf) { if (kind == "leak") fl++; else fe++; print blk "\n" > fr }
        else { if (kind == "leak") ol++; else oe++; print blk "\n" > orp }
      }
      blk = ""; kind = ""
    }
    FNR == 1 { done_block(); inleak = 0 }
    /ERROR: LeakSanitizer/ { done_block(); inleak = 1; next }
    /ERROR: AddressSanitizer|runtime error:/ { done_block(); inleak = 0; kind = "error" }
    inleak && /^(Direct|Indirect) leak of/ { done_block(); kind = "leak" }
    inleak && /^[[:space:]]*$/ { done_block(); next }
    /^SUMMARY:/ { if (kind == "error") { blk = blk "\n" $0; done_block() } ; inleak = 0; next }
    kind != "" { blk = blk (blk == "" ? "" : "\n") $0 }
    END { done_block(); printf "%d %d %d %d\n", fe, fl, oe, ol }' "$@"
}

report () {  # KIND ferr fleak oerr oleak
  local kind=$1 fe=$2 fl=$3 oe=$4 ol=$5
  if [ "$fe" -eq 0 ]; then ok "$kind: no memory errors involving the filter ($runs nbdkit runs)"
  else not_ok "$kind: $fe memory error reports involving the filter"; fi
  if [ "$fl" -eq 0 ]; then ok "$kind: no leaks involving the filter"
  else not_ok "$kind: $fl leak reports involving the filter"; fi
  if [ "$fe" -gt 0 ] || [ "$fl" -gt 0 ]; then head -150 "$dir/filter-reports" | comment; fi
  if [ "$oe" -gt 0 ] || [ "$ol" -gt 0 ]; then
    echo "# $kind: $oe error and $ol leak reports outside the filter (not counted):"
    head -60 "$dir/other-reports" | comment
  fi
}

runs=$(ls "$dir"/nbdkit-*.log 2>/dev/null | wc -l)
case $mode in
  valgrind)
    logs=("$dir"/vg-*.log)
    if [ ! -f "${logs[0]}" ]; then not_ok "valgrind wrote its logs"; finish; fi
    runs=${#logs[@]}
    read -r fe fl oe ol < <(vg_classify "${logs[@]}")
    report valgrind "$fe" "$fl" "$oe" "$ol"
    grep -h 'ERROR SUMMARY' "${logs[@]}" | sed 's/^==[0-9]*== /# /' ;;
  asan)
    logs=("$dir"/asan.*)
    if [ -f "${logs[0]}" ]; then
      read -r fe fl oe ol < <(asan_classify "${logs[@]}")
    else
      fe=0 fl=0 oe=0 ol=0
    fi
    report "ASan+UBSan" "$fe" "$fl" "$oe" "$ol" ;;
esac
finish
