#!/usr/bin/env bash
# Static analysis of the C filter: cppcheck and clang-tidy (.clang-tidy)
# must report nothing on plugin/.
. "$(dirname "$0")/lib.sh"
cd "$TOP"
[ -f plugin/gen/luacow_lua.h ] || make -s plugin/gen/luacow_lua.h

# A missing analyser is a failure, not a silent pass (xargs would print
# "No such file" and grep would find no warning in that).
CPPCHECK=${CPPCHECK:-cppcheck} CLANG_TIDY=${CLANG_TIDY:-clang-tidy}
have () { command -v "$1" >/dev/null; }
for tool in "$CPPCHECK" "$CLANG_TIDY"; do
  check "$tool is installed (make deps)" have "$tool"
done

out=$("$CPPCHECK" --enable=warning,portability,performance --error-exitcode=1 --inline-suppr \
        --quiet -D_GNU_SOURCE -DLLONG_MAX=9223372036854775807LL -Iplugin -Iplugin/gen \
        --suppress=missingIncludeSystem plugin/*.c 2>&1)
rc=$?
[ -n "$out" ] && echo "$out" | sed 's/^/# /'
check "cppcheck: no findings in plugin/" [ "$rc" -eq 0 -a -z "$out" ]

# One clang-tidy process per file, two at a time (2 cores).
# xargs exits non-zero when clang-tidy cannot run or fails on a file.
tidy=$(ls plugin/*.c | xargs -P 2 -I{} "$CLANG_TIDY" --quiet {} -- -std=c11 -D_GNU_SOURCE \
         -Iplugin -Iplugin/gen -I/usr/include/lua5.4 2>&1)
rc=$?
findings=$(echo "$tidy" | grep -E "(warning|error):|No such file|not found")
[ -n "$findings" ] && echo "$findings" | sed 's/^/# /'
check "clang-tidy: ran on every file of plugin/ (exit $rc), no findings" [ "$rc" -eq 0 -a -z "$findings" ]
done_testing
