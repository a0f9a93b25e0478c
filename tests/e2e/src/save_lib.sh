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
#   policy NAME <<'EOF'         writes $SCRATCH/NAME (a Lua policy) from stdin.

SRC=$TOP/tests/e2e/src
# nbdkit's overlay store and the rescue files' second choice stay in
# SCRATCH; so does its working directory (the rescue files' first choice).
export TMPDIR=$SCRATCH/tmp
mkdir -p "$TMPDIR"
PY=/usr/bin/python3
CLIENT=$SRC/save_client.py
: "${E2E_TIMEOUT:=900}"            # whole test program
: "${NB_TIMEOUT:=120}"             # one nbdkit --run or client command

# A watchdog, so that a hang becomes a failure instead of a stuck run.
( sleep "$E2E_TIMEOUT" >/dev/null 2>&1; echo "not ok - watchdog: $0 ran over ${E2E_TIMEOUT}s"; kill -TERM $$ ) 2>/dev/null &
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

policy () { cat > "$SCRATCH/$1"; }

# grep_log PATTERN [FILE]: an ERE in the log (NB_LOG by default).
grep_log () { grep -qE -- "$1" "${2:-$NB_LOG}" || { echo "no line matching /$1/ in ${2:-$NB_LOG}:"; cat "${2:-$NB_LOG}"; return 1; }; }
