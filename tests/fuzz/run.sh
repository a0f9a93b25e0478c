#!/usr/bin/env bash
# Usage: tests/fuzz/run.sh SECONDS
#
# Builds the libFuzzer target for the qcow2 decoder into tests/fuzz/bin/
# and fuzzes it for SECONDS, starting from a copy of tests/corpus/good,
# tests/corpus/bad and tests/fuzz/corpus.  Inputs that add coverage are
# kept in tests/fuzz/corpus/; a crashing input is saved in tests/fuzz/bin/
# (add it to tests/corpus/bad/ once fixed).  Ends with one TAP line.
set -u
cd "$(dirname "$0")/../.."
secs=${1:-60}
bin=${FUZZ_BIN:-tests/fuzz/bin}
mkdir -p "$bin" tests/fuzz/corpus
work=$(mktemp -d "${TMPDIR:-/tmp}/luacow-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

fail () { echo "not ok 1 - fuzz qcow2 decoder: $*"; echo "1..1"; exit 1; }

clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=all -Iplugin -o "$bin/fuzz_qcow2" \
  tests/fuzz/fuzz_qcow2.c plugin/qcow2_*.c plugin/fullio.c -lz -lzstd \
  || fail "build failed"

mkdir -p "$work/seeds" "$work/new"
cp tests/corpus/good/* tests/corpus/bad/* "$work/seeds/" 2>/dev/null
cp tests/fuzz/corpus/* "$work/seeds/" 2>/dev/null

# New inputs go to the first directory; seeds are only read.
"$bin/fuzz_qcow2" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
  -max_len=131072 -print_final_stats=1 -artifact_prefix="$bin/" \
  "$work/new" "$work/seeds" >"$work/log" 2>&1
rc=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$work/log" | tail -1)
if [ "$rc" -ne 0 ]; then
  grep -E 'ERROR|SUMMARY|Test unit written|runtime error' "$work/log" | head -20 | sed 's/^/# /'
  fail "crash after ${execs:-?} execs (artifact in $bin/)"
fi

# Keep only the new inputs that add coverage over everything we had
# (FUZZ_KEEP=0, as in make check, keeps nothing: the tree stays as it was).
if [ "${FUZZ_KEEP:-1}" = 0 ]; then
  echo "ok 1 - fuzz qcow2 decoder: ${execs:-0} execs in ${took:-$secs} s, no crash"
  echo "1..1"
  exit 0
fi
mkdir -p "$work/merged"
cp "$work/seeds/"* "$work/merged/" 2>/dev/null
ls "$work/merged" | sort >"$work/before"
"$bin/fuzz_qcow2" -merge=1 -max_len=131072 "$work/merged" "$work/new" \
  >"$work/merge.log" 2>&1 || fail "corpus merge failed"
kept=0
for f in $(ls "$work/merged" | sort | comm -13 "$work/before" -); do
  cp "$work/merged/$f" tests/fuzz/corpus/ && kept=$((kept + 1))
done
echo "# kept $kept new inputs in tests/fuzz/corpus/"
echo "ok 1 - fuzz qcow2 decoder: ${execs:-0} execs in ${took:-$secs} s, no crash"
echo "1..1"
