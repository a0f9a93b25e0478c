# Shared helpers for end-to-end tests: TAP output, scratch directory,
# nbdkit with the built filter on a Unix socket.  Source it from a test:
#   . "$(dirname "$0")/lib.sh"
set -u
TOP=${LUACOW_TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
FILTER=$TOP/plugin/nbdkit-luacow-filter.so
export PATH=/usr/bin:$PATH          # Debian's python3 (nbdsh) first
_tap_n=0 _tap_failed=0

ok ()   { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - $*"; }
fail () { _tap_n=$((_tap_n + 1)); _tap_failed=$((_tap_failed + 1)); echo "not ok $_tap_n - $*"; }
# check "description" command...: ok when the command succeeds.
check () { local d=$1; shift; if "$@"; then ok "$d"; else fail "$d"; fi; }
done_testing () { echo "1..$_tap_n"; [ "$_tap_failed" -eq 0 ]; }

# pass_fail_to_tap NAME FILE: a helper program's "PASS what" / "FAIL what"
# lines become TAP, other lines comments; TAP_LINES says how many results.
# no_crash: TAP line "no nbdkit crashed": every nbdkit stop_nbdkit
# stopped exited 0 and the log has no crash report.
no_crash () {
  local bad
  bad=$(tr ' ' '\n' <<<"$NBDKIT_STATUSES" | grep -vx 0 | paste -sd' ')
  if [ -z "$bad" ] && ! grep -qiE 'assert|segfault|sanitizer|double free|core dumped' "$SCRATCH/nbdkit.log"; then
    ok "no nbdkit crashed: exit statuses ${NBDKIT_STATUSES:-none} and no crash report in the log"
  else
    fail "no nbdkit crashed: exit statuses ${NBDKIT_STATUSES:-none}, non-zero: ${bad:-none}"
    tail -20 "$SCRATCH/nbdkit.log" | sed 's/^/# /'
  fi
}

pass_fail_to_tap () {
  local name=$1 file=$2 line
  TAP_LINES=0
  while IFS= read -r line; do
    case $line in
      "PASS "*) ok "$name: ${line#PASS }"; TAP_LINES=$((TAP_LINES + 1)) ;;
      "FAIL "*) fail "$name: ${line#FAIL }"; TAP_LINES=$((TAP_LINES + 1)) ;;
      *) echo "# $line" ;;
    esac
  done <"$file"
}

# A private scratch directory, removed at exit (with any nbdkit we started).
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/luacow-e2e.XXXXXX")
_pids=()
cleanup () {
  for p in "${_pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${_pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

# run_nbdkit SOCK-NAME ARGS... -- start nbdkit in the foreground in the
# background, wait for its socket; sets NBDKIT_PID and URI.
run_nbdkit () {
  local sock=$SCRATCH/$1; shift
  rm -f "$sock"
  nbdkit -f -U "$sock" --filter="$FILTER" "$@" 2>>"$SCRATCH/nbdkit.log" &
  NBDKIT_PID=$!
  _pids+=("$NBDKIT_PID")
  URI="nbd+unix:///?socket=$sock"
  for _ in $(seq 1 100); do [ -S "$sock" ] && return 0; sleep 0.05; done
  echo "# nbdkit did not start:"; sed 's/^/# /' "$SCRATCH/nbdkit.log"
  return 1
}

# hold_open URI: a client that stays connected (HOLDER is its pid) until
# killed.  While another client is connected, a client's close is not its
# export's last, which would copy the plugin's data that later saves need
# (save_settle): tests of a save that must read the plugin hold one open.
hold_open () {
  nbdsh -u "$1" -c 'import time; time.sleep(3600)' </dev/null >/dev/null 2>&1 &
  HOLDER=$!
  _pids+=("$HOLDER")
  sleep 0.5
}

# stop_nbdkit: SIGTERM and wait, so .cleanup (the exit save) runs.
# Returns nbdkit's exit status and appends it to NBDKIT_STATUSES (for
# crash checks: above 128 is a signal, 134 SIGABRT, 139 SIGSEGV).
NBDKIT_STATUSES=
stop_nbdkit () {
  kill -TERM "$NBDKIT_PID" 2>/dev/null
  wait "$NBDKIT_PID"
  local rc=$? keep=() p
  NBDKIT_STATUSES+="${NBDKIT_STATUSES:+ }$rc"
  for p in "${_pids[@]}"; do [ "$p" = "$NBDKIT_PID" ] || keep+=("$p"); done
  _pids=("${keep[@]}")      # reaped: never signal a reused pid at exit
  return $rc
}
