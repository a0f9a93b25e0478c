#!/usr/bin/env bash
# Runs every test and ends with one line "N passed, N failed, N skipped".
#
# Every test program prints TAP ("ok N - what" / "not ok N - what"); each
# such line counts once.  A program that exits non-zero without a "not ok"
# line, or prints no result at all, counts as one failure.  Logs of failing
# programs are printed in full.
set -u
cd "$(dirname "$0")/.."
export LUACOW_TOP=$PWD
passed=0 failed=0 skipped=0
logdir=$(mktemp -d "${TMPDIR:-/tmp}/luacow-tests.XXXXXX")
only=${TESTS:-}

run_one () {  # name command...
  local name=$1; shift
  if [ -n "$only" ] && [[ "$name" != *$only* ]]; then return; fi
  local log="$logdir/$(echo "$name" | tr '/ ' '__').log" rc start end
  start=$(date +%s)
  "$@" >"$log" 2>&1 </dev/null; rc=$?
  end=$(date +%s)
  local p f s
  p=$(grep -E '^ok [0-9]+' "$log" | grep -vc '# SKIP' || true)
  s=$(grep -E '^ok [0-9]+' "$log" | grep -c '# SKIP' || true)
  f=$(grep -cE '^not ok [0-9]+' "$log" || true)
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if [ "$p" -eq 0 ] && [ "$f" -eq 0 ] && [ "$s" -eq 0 ]; then f=1; echo "(no test result printed)" >>"$log"; fi
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  if [ "$f" -gt 0 ]; then
    printf 'FAIL %-40s %4d ok %3d failed (%ds)\n' "$name" "$p" "$f" $((end - start))
    sed 's/^/    | /' "$log" | tail -n 80
  else
    printf 'PASS %-40s %4d ok (%ds)\n' "$name" "$p" $((end - start))
  fi
}

for t in tests/unit/bin/test_*; do [ -x "$t" ] && run_one "unit/${t##*/}" "$t"; done
run_one "spec (busted)" busted --lua=lua5.4 -o TAP tests/spec
for t in tests/e2e/*.sh; do [ -x "$t" ] && run_one "e2e/${t##*/}" "$t"; done

rm -rf "$logdir"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
