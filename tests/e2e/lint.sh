#!/usr/bin/env bash
# Static analysis of the C filter: cppcheck and clang-tidy (.clang-tidy)
# must report nothing on plugin/.
. "$(dirname "$0")/lib.sh"
cd "$TOP"
[ -f plugin/gen/luacow_lua.h ] || make -s plugin/gen/luacow_lua.h

out=$(cppcheck --enable=warning,portability,performance --error-exitcode=1 --inline-suppr \
        --quiet -D_GNU_SOURCE -DLLONG_MAX=9223372036854775807LL -Iplugin -Iplugin/gen \
        --suppress=missingIncludeSystem plugin/*.c 2>&1)
rc=$?
[ -n "$out" ] && echo "$out" | sed 's/^/# /'
check "cppcheck: no findings in plugin/" [ "$rc" -eq 0 -a -z "$out" ]

# One clang-tidy process per file, two at a time (2 cores).
findings=$(ls plugin/*.c | xargs -P 2 -I{} clang-tidy --quiet {} -- -std=c11 -D_GNU_SOURCE \
             -Iplugin -Iplugin/gen -I/usr/include/lua5.4 2>&1 | grep -E "(warning|error):" )
[ -n "$findings" ] && echo "$findings" | sed 's/^/# /'
check "clang-tidy: no findings in plugin/" [ -z "$findings" ]
done_testing
