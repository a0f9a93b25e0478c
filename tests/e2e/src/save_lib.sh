# Helpers shared by tests/e2e/save_*.sh, policy_*.sh and fault_*.sh, on
# top of lib.sh (source lib.sh first).
#
#   start_nb NAME [ARGS...]     nbdkit with the filter in the background on
#                               $SCRATCH/NAME.sock, stderr to $SCRATCH/NAME.log;
#                               sets NB_PID, NB_URI, NB_LOG.  NB_CWD (a directory)
#                               (default $SCRATCH) and NB_ENV (VAR=VALUE words).
#   stop_nb [SIGNAL]            signal (TERM) and wait; sets NB_RC.
#   run_nb NAME ARGS... -- CMD  nbdkit --run CMD ($uri set), bounded in time;
#                               sets NB_RC and NB_LOG.
#   client ARGS...              tests/e2e/src/save_client.py, bounded in time.
#   checkv DESC CMD...          like check, but shows CMD's output on failure.
#   note TEXT                   a TAP comment.
#   mkbase FILE SIZE SEED       a raw file of pseudo-random bytes (sparse if huge).
#   qcheck FILE                 qemu-img check: no errors, no leaks.
#   no_temp DIR                 no luacow temporary file in DIR.
#   mode_of FILE                octal permission bits.
#   grep_log ERE [FILE]         ERE in FILE (default NB_LOG), else show FILE.
#   startup_fails NAME ARGS...  nbdkit that must stop at startup (SF_RC, SF_SERVED).
#   failed_at_startup TEXT...   ... and did: non-zero, no client, one error line.
#   one_error_line FILE TEXT... FILE is one nbdkit error line with every TEXT.
#   at_exit CMD                 run CMD at exit (before SCRATCH is removed).
#   RESCUE_RE                   an ERE for a rescue file's name.
#
# nbdkit runs with TMPDIR=$SCRATCH/tmp and in $SCRATCH unless NB_CWD says
# otherwise, so overlay stores and rescue files never land in the tree.

SRC=$TOP/tests/e2e/src
# A rescue file's name (an ERE): luacow-rescue-<time>-<pid>-<random>.qcow2.
RESCUE_RE='luacow-rescue-[0-9]+-[0-9]+-[0-9a-f]{16}\.qcow2'
# nbdkit's overlay store and the rescue files' second choice stay in
# SCRATCH; so does its working directory (the rescue files' first choice).
export TMPDIR=$SCRATCH/tmp
mkdir -p "$TMPDIR"
PY=/usr/bin/python3
CLIENT=$SRC/save_client.py
: "${E2E_TIMEOUT:=900}"            # whole test program
: "${NB_TIMEOUT:=120}"             # one nbdkit --run or client command

# A watchdog, so that a hang becomes a failure instead of a stuck run.
(
  trap 'kill "$_sleep" 2>/dev/null; exit 0' TERM
  sleep "$E2E_TIMEOUT" >/dev/null 2>&1 & _sleep=$!
  wait "$_sleep"
  echo "not ok 9999 - watchdog: $0 ran over ${E2E_TIMEOUT}s"
  kill -TERM $$
) 2>/dev/null &
_watchdog=$!
_save_lib_cleanup () {
  kill "$_watchdog" 2>/dev/null
  # Extra cleanups registered by the test (unmounts...), newest first.
  local i
  for ((i = ${#_extra_cleanups[@]} - 1; i >= 0; i--)); do eval "${_extra_cleanups[$i]}"; done
  cleanup
}
_extra_cleanups=()
at_exit () { _extra_cleanups+=("$1"); }
trap _save_lib_cleanup EXIT

note () { echo "# $*"; }

checkv () {
  local _cv_what=$1 _cv_out; shift
  if _cv_out=$("$@" 2>&1); then ok "$_cv_what"
  else fail "$_cv_what"; printf '%s\n' "$_cv_out" | tail -n 30 | sed 's/^/#   /'; fi
}

start_nb () {
  local name=$1; shift
  local sock=$SCRATCH/$name.sock
  NB_LOG=$SCRATCH/$name.log
  rm -f "$sock"
  : > "$NB_LOG"
  (
    cd "${NB_CWD:-$SCRATCH}" || exit 1
    # shellcheck disable=SC2086
    exec env ${NB_ENV:-} nbdkit -f -U "$sock" --filter="$FILTER" "$@"
  ) 2>>"$NB_LOG" &
  NB_PID=$!
  _pids+=("$NB_PID")
  NB_URI="nbd+unix:///?socket=$sock"
  local _
  for _ in $(seq 1 200); do
    [ -S "$sock" ] && return 0
    kill -0 "$NB_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "# nbdkit $name did not start:"; sed 's/^/#   /' "$NB_LOG"
  return 1
}

stop_nb () {
  kill -"${1:-TERM}" "$NB_PID" 2>/dev/null
  local i
  for i in $(seq 1 600); do
    kill -0 "$NB_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$NB_PID" 2>/dev/null; then
    echo "# nbdkit $NB_PID did not exit after SIG${1:-TERM}; killing it"
    kill -KILL "$NB_PID" 2>/dev/null
  fi
  wait "$NB_PID" 2>/dev/null
  NB_RC=$?
}

run_nb () {
  local name=$1; shift
  local args=() sock=$SCRATCH/$name.sock
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  NB_LOG=$SCRATCH/$name.log
  rm -f "$sock"
  (
    cd "${NB_CWD:-$SCRATCH}" || exit 1
    # shellcheck disable=SC2086
    exec env ${NB_ENV:-} timeout -s KILL "$NB_TIMEOUT" \
      nbdkit -f -U "$sock" --filter="$FILTER" "${args[@]}" --run "$*"
  ) >"$SCRATCH/$name.out" 2>"$NB_LOG"
  NB_RC=$?
}

# startup_fails NAME ARGS...: nbdkit (no --run, see save_reject.sh) that
# must stop at startup.  A client connects as soon as the socket exists.
# Sets SF_RC (nbdkit's status, 137 when it had to be killed after 20 s),
# SF_SERVED (yes/no) and NB_LOG ($SCRATCH/NAME.log, nbdkit's stderr).
startup_fails () {
  local name=$1 sock=$SCRATCH/$1.sock pid i; shift
  NB_LOG=$SCRATCH/$name.log
  rm -f "$sock"
  # shellcheck disable=SC2086
  ( cd "${NB_CWD:-$SCRATCH}" && exec env ${NB_ENV:-} nbdkit -f -U "$sock" --filter="$FILTER" "$@" ) 2>"$NB_LOG" &
  pid=$!
  for i in $(seq 1 400); do [ -S "$sock" ] || ! kill -0 $pid 2>/dev/null && break; sleep 0.01; done
  SF_SERVED=no
  if [ -S "$sock" ] && timeout 10 nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1; then
    SF_SERVED=yes
  fi
  for i in $(seq 1 1000); do kill -0 $pid 2>/dev/null || break; sleep 0.02; done
  kill -0 $pid 2>/dev/null && kill -KILL $pid
  wait $pid; SF_RC=$?
}

# one_error_line FILE TEXT...: FILE (stderr) is exactly one line, an
# nbdkit error containing every TEXT (fixed strings).
one_error_line () {
  local f=$1 t n; shift
  n=$(grep -c '' "$f")
  [ "$n" -eq 1 ] || { echo "stderr has $n lines, not 1:"; cat "$f"; return 1; }
  grep -q '^nbdkit: error: ' "$f" || { echo "not an nbdkit error line:"; cat "$f"; return 1; }
  for t in "$@"; do
    grep -qF -- "$t" "$f" || { echo "no '$t' in:"; cat "$f"; return 1; }
  done
}

# failed_at_startup TEXT...: after startup_fails, nbdkit exited non-zero
# by itself, served nobody and printed one error line with every TEXT.
failed_at_startup () {
  local why=""
  [ "$SF_RC" -ne 0 ] || why+=" exit 0;"
  [ "$SF_RC" -ne 137 ] || why+=" did not stop;"
  [ "$SF_SERVED" = no ] || why+=" served a client;"
  local out; out=$(one_error_line "$NB_LOG" "$@" 2>&1) || why+=" $out"
  [ -z "$why" ] || { echo "$why"; return 1; }
}

# refused_at_open NAME TEXT... -- NBDKIT-ARGS...: a mistake found only when
# the export size is known (luacow opens the plugin at the first client's
# connection, never before): nbdkit starts, refuses the first client and
# the next with one error line containing every TEXT (the same line each
# time), and exits 0 on SIGTERM.  Prints why not and returns 1 otherwise.
refused_at_open () {
  local name=$1 texts=() why="" t n; shift
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do texts+=("$1"); shift; done
  shift
  start_nb "$name" "$@" || { echo "nbdkit did not start"; return 1; }
  timeout 10 nbdinfo --size "$NB_URI" >/dev/null 2>&1 && why+=" the first client was served;"
  timeout 10 nbdinfo --size "$NB_URI" >/dev/null 2>&1 && why+=" the second client was served;"
  kill -0 "$NB_PID" 2>/dev/null || why+=" nbdkit died;"
  stop_nb
  [ "$NB_RC" = 0 ] || why+=" exit status $NB_RC;"
  n=$(grep -c 'error: luacow: ' "$NB_LOG")
  [ "$n" = 2 ] || why+=" $n luacow error lines, not 2 (one per client);"
  [ "$(grep 'error: luacow: ' "$NB_LOG" | sed 's/^nbdkit: [^ ]* error: //' | sort -u | grep -c '')" = 1 ] ||
    why+=" the two clients got different errors;"
  for t in "${texts[@]}"; do grep -qF -- "$t" "$NB_LOG" || why+=" no '$t' in the log;"; done
  grep -qiE 'segfault|assert|abort|core dumped|sanitizer' "$NB_LOG" && why+=" crash;"
  [ -z "$why" ] || { echo "$why"; sed 's/^/  log: /' "$NB_LOG"; return 1; }
}

client () { timeout -s KILL "$NB_TIMEOUT" "$PY" "$CLIENT" "$@"; }

mkbase () {
  local file=$1 size=$2 seed=$3
  "$PY" - "$file" "$size" "$seed" <<'EOF'
import random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
with open(path, "wb") as f:
    if size > (64 << 20):
        f.truncate(size)            # huge: sparse, with a little data
        for off in (0, size // 2, size - 4096):
            f.seek(off); f.write(r.randbytes(min(4096, size - off)))
    else:
        f.write(r.randbytes(size))
EOF
}

qcheck () {
  local out rc
  out=$(qemu-img check "$1" 2>&1); rc=$?
  if [ $rc -ne 0 ] || ! grep -q '^No errors were found on the image.$' <<<"$out" ||
     grep -qi 'leak' <<<"$out"; then
    echo "qemu-img check exited $rc:"; echo "$out"; return 1
  fi
}

no_temp () {
  local left
  left=$(ls -A "$1" | grep -E 'luacow-[0-9]+-[0-9]+\.tmp$|\.tmp$' || true)
  [ -z "$left" ] || { echo "temporary files left in $1: $left"; return 1; }
}

mode_of () { stat -c %a "$1"; }

# grep_log PATTERN [FILE]: an ERE in the log (NB_LOG by default).
grep_log () { grep -qE -- "$1" "${2:-$NB_LOG}" || { echo "no line matching /$1/ in ${2:-$NB_LOG}:"; cat "${2:-$NB_LOG}"; return 1; }; }
