#!/usr/bin/env bash
# Reproducer (fixed in plugin/events.c run()): the "saved" hook's ctx
# pointed at last_save_path, which save_with() had just freed and replaced,
# so ctx.last_save.path was read after free on every save but the first.
# Needs valgrind.  Exit 0: not reproduced; 1: invalid reads seen.
set -u
TOP=$(cd "$(dirname "$0")/../../.." && pwd)
FILTER=${LUACOW_FILTER:-$TOP/plugin/nbdkit-luacow-filter.so}
d=$(mktemp -d "${TMPDIR:-/tmp}/luacow-repro.XXXXXX"); trap 'rm -rf "$d"' EXIT
cat >"$d/p.lua" <<'LUA'
return {
  events = { "flush" },
  save = true,
  name = function (ctx) return ctx.params.save end,
  saved = function (ctx, r) return ctx.last_save and ctx.last_save.path end,
}
LUA
valgrind -q --error-exitcode=99 --log-file="$d/vg.log" nbdkit -f -U "$d/sock" --filter="$FILTER" \
  memory 1M luacow-script="$d/p.lua" luacow-save="$d/out.qcow2" 2>"$d/nbdkit.log" &
pid=$!
for _ in $(seq 200); do [ -S "$d/sock" ] && break; sleep 0.1; done
PATH=/usr/bin:$PATH nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"x", 0); h.flush(); h.flush()'
kill -TERM "$pid"; wait "$pid"
n=$(grep -c 'Invalid read' "$d/vg.log")
echo "invalid reads: $n"
grep -m1 -A12 'Invalid read' "$d/vg.log"
[ "$n" -eq 0 ]
