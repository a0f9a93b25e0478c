#!/usr/bin/env bash
# Runs every test and ends with one line "N passed, N failed, N skipped".
#
# Every test program prints TAP ("ok N - what" / "not ok N - what"); each
# such line counts once.  A program that exits non-zero without a "not ok"
# line, or prints no result at all, counts as one failure.  Logs of failing
# programs are printed (last 80 lines).
#
# Programs run TEST_JOBS at a time (default 2: most of their time is spent
# waiting on nbdkit, qemu-img and the disk); results print in a fixed order.
# TESTS=substring runs only the matching programs.
set -u
cd "$(dirname "$0")/.." || exit 1
export LUACOW_TOP=$PWD
jobs=${TEST_JOBS:-2}
only=${TESTS:-}
logdir=$(mktemp -d "${TMPDIR:-/tmp}/luacow-tests.XXXXXX")
trap 'rm -rf "$logdir"' EXIT

names=() cmds=()
add () {  # name command...
  local name=$1; shift
  if [ -n "$only" ] && [[ "$name" != *$only* ]]; then return; fi
  names+=("$name"); cmds+=("$(printf '%q ' "$@")")
}
# The longest programs first, so that two at a time finish together.
for t in tests/e2e/stress_short.sh tests/e2e/lint.sh tests/e2e/*.sh; do
  [ -x "$t" ] || continue
  case " ${names[*]-} " in *" e2e/${t##*/} "*) continue ;; esac
  add "e2e/${t##*/}" "$t"
done
# Regression tests of bugs found by the stress test, as reproduced then.
for t in tests/stress/repro/*.sh; do [ -x "$t" ] && add "repro/${t##*/}" "$t"; done
for t in tests/unit/bin/test_*; do [ -x "$t" ] && add "unit/${t##*/}" "$t"; done
add "spec (busted)" busted --lua=lua5.4 -o TAP tests/spec

run_one () {  # index
  local i=$1 log="$logdir/$1.log" start
  start=$(date +%s)
  bash -c "${cmds[$i]}" >"$log" 2>&1 </dev/null
  echo "$? $(( $(date +%s) - start ))" >"$logdir/$i.rc"
}

running=0
for i in "${!names[@]}"; do
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
  run_one "$i" &
  running=$((running + 1))
done
wait

passed=0 failed=0 skipped=0
for i in "${!names[@]}"; do
  log="$logdir/$i.log"
  read -r rc secs <"$logdir/$i.rc"
  p=$(grep -E '^ok [0-9]+' "$log" | grep -vc '# SKIP' || true)
  s=$(grep -E '^ok [0-9]+' "$log" | grep -c '# SKIP' || true)
  f=$(grep -cE '^not ok [0-9]+' "$log" || true)
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if [ "$p" -eq 0 ] && [ "$f" -eq 0 ] && [ "$s" -eq 0 ]; then f=1; echo "(no test result printed)" >>"$log"; fi
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  if [ "$f" -gt 0 ]; then
    printf 'FAIL %-40s %4d ok %3d failed (%ds)\n' "${names[$i]}" "$p" "$f" "$secs"
    sed 's/^/    | /' "$log" | tail -n 80
  else
    printf 'PASS %-40s %4d ok (%ds)\n' "${names[$i]}" "$p" "$secs"
  fi
done

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
