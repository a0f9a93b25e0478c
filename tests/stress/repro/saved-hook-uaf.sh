#!/usr/bin/env bash
# Regression test, run by make check (tests/run.sh runs tests/stress/repro/*):
# the "saved" hook's ctx pointed at last_save_path, which save_with() had
# just freed and replaced, so ctx.last_save.path was read after free on
# every save but the first.  Fixed in plugin/events.c run(): ctx keeps its
# own copy (since 7851754; 6fa8559 first kept the old string alive).
# Needs valgrind (a missing valgrind is a failure).  Prints TAP.
set -u
TOP=$(cd "$(dirname "$0")/../../.." && pwd)
FILTER=${LUACOW_FILTER:-$TOP/plugin/nbdkit-luacow-filter.so}
export PATH=/usr/bin:$PATH
d=$(mktemp -d "${TMPDIR:-/tmp}/luacow-repro.XXXXXX"); trap 'rm -rf "$d"' EXIT
n=0 failed=0
check () {  # DESCRIPTION COMMAND...
  local what=$1; shift
  n=$((n + 1))
  if "$@"; then echo "ok $n - $what"; else echo "not ok $n - $what"; failed=$((failed + 1)); fi
}
if ! command -v valgrind >/dev/null; then
  check "valgrind is installed (make deps)" false; echo "1..$n"; exit 1
fi
# The saved hook logs the path it saw, so the reads are checked too.
cat >"$d/p.lua" <<LUA
return {
  events = { "flush" },
  save = true,
  name = function (ctx) return ctx.params.save end,
  saved = function (ctx, r)
    local f = assert(io.open("$d/seen.log", "a"))
    f:write(tostring(ctx.last_save and ctx.last_save.path), "\n")
    f:close()
  end,
}
LUA
TMPDIR=$d valgrind -q --error-exitcode=99 --log-file="$d/vg.log" nbdkit -f -U "$d/sock" --filter="$FILTER" \
  memory 1M luacow-script="$d/p.lua" luacow-save="$d/out.qcow2" 2>"$d/nbdkit.log" &
pid=$!
for _ in $(seq 300); do [ -S "$d/sock" ] && break; sleep 0.1; done
timeout 120 nbdsh -u "nbd+unix:///?socket=$d/sock" -c 'h.pwrite(b"x", 0); h.flush(); h.flush(); h.flush()'
check "three flushes, each a save, are acknowledged" [ $? -eq 0 ]
kill -TERM "$pid"; wait "$pid"; rc=$?
check "nbdkit under valgrind exits 0 (status $rc: 99 is valgrind's errors, above 128 a signal)" [ "$rc" -eq 0 ]
bad=$(grep -c 'Invalid read' "$d/vg.log")
check "no invalid read ($bad)" [ "$bad" -eq 0 ]
[ "$bad" -eq 0 ] || grep -m1 -A12 'Invalid read' "$d/vg.log" | sed 's/^/# /'
expect=$(printf 'nil\n%s\n%s\n%s\n' "$d/out.qcow2" "$d/out.qcow2" "$d/out.qcow2")
check "the saved hook saw ctx.last_save.path: nil, then the previous save's path" \
  [ "$(cat "$d/seen.log" 2>/dev/null)" = "$expect" ]
echo "1..$n"
[ "$failed" -eq 0 ]
