#!/usr/bin/env bash
# Usage: tests/fuzz/run_journal.sh SECONDS
#
# libFuzzer (ASan+UBSan) on journal recovery: builds tests/fuzz/fuzz_journal.c
# with the overlay and journal sources, makes seed journals (the same file
# built as a seed generator), and fuzzes for SECONDS.  Nothing is kept in
# the tree; a crashing input is saved in FUZZ_BIN (default tests/fuzz/bin).
# Ends with one TAP line.
set -u
cd "$(dirname "$0")/../.."
secs=${1:-60}
bin=${FUZZ_BIN:-tests/fuzz/bin}
mkdir -p "$bin"
work=$(mktemp -d "${TMPDIR:-/tmp}/luacow-fuzzj.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail () { echo "not ok 1 - fuzz journal recovery: $*"; echo "1..1"; exit 1; }

SRCS="plugin/overlay.c plugin/overlay_durable.c plugin/overlay_recover.c plugin/overlay_fill.c plugin/journal.c plugin/journal_format.c
      plugin/slots.c plugin/store.c plugin/avec.c plugin/blockmap.c plugin/jio.c plugin/fullio.c
      tests/unit/stubs.c"
FLAGS="-std=c11 -D_GNU_SOURCE -g -Iplugin $(pkg-config --cflags nbdkit)"
LIBS="-lz -lxxhash -lpthread"
# shellcheck disable=SC2086
cc $FLAGS -O1 -DSEED_MAIN -o "$work/seedgen" tests/fuzz/fuzz_journal.c $SRCS $LIBS \
  || fail "seed generator build failed"
# shellcheck disable=SC2086
clang $FLAGS -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -o "$bin/fuzz_journal" tests/fuzz/fuzz_journal.c $SRCS $LIBS || fail "build failed"
mkdir -p "$work/seeds" "$work/new"
"$work/seedgen" "$work/seeds" || fail "seed generation failed"
"$bin/fuzz_journal" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
  -max_len=1048576 -print_final_stats=1 -artifact_prefix="$bin/" \
  "$work/new" "$work/seeds" >"$work/log" 2>&1
rc=$?
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
if [ "$rc" -ne 0 ]; then
  grep -E 'ERROR|SUMMARY|Test unit written|runtime error' "$work/log" | head -20 | sed 's/^/# /'
  fail "crash after ${execs:-?} execs (artifact in $bin/)"
fi
echo "ok 1 - fuzz journal recovery: ${execs:-0} execs in $secs s from $(ls "$work/seeds" | wc -l) seed journals, no crash"
echo "1..1"
