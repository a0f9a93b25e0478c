#!/usr/bin/env bash
# No per-request growth: nbdkit null 128M --filter=luacow (default policy,
# nothing saved); the same 64 MiB region written in 4 KiB writes, one full
# pass, then again and again until at least 1 million writes
# (tests/e2e/src/stress_memgrowth.c: 4 connections x 32 async writes).
# After the first pass and at the end, with every write acknowledged:
#   - nbdkit's VmRSS grows by at most MEMGROWTH_RSS_KIB (default 2048);
#   - at every report (after pass 1, every 10 passes, the last) the
#     overlay store (the deleted file nbdkit holds open in TMPDIR) uses at
#     most the live data (the 64 MiB region) plus 64 MiB of disk, and its
#     size is at most the live data plus 128 MiB: a rewrite goes to a fresh
#     slot and the old one is reused after the next background commit (at
#     least once a second, and whenever 4096 slots wait), so the store
#     stays within a fixed bound while 4 GiB (64 times the region) are
#     written; the file grows ahead by 64 MiB steps.
# Then the same with the region zeroed (one NBD_CMD_WRITE_ZEROES) before
# every pass after the first, MEMGROWTH_ZERO_WRITES (default 250000)
# writes: blocks cycle between zero and data, so the store's slots are
# given back (punched) and taken anew on every pass; RSS and disk usage
# must stay within the same bounds.
# Under 60 s on 2 cores.  MEMGROWTH_WRITES changes the write count.
# Building the client and starting nbdkit are no tests: they print a
# failure when they fail, nothing when they work.
. "$(dirname "$0")/lib.sh"
writes=${MEMGROWTH_WRITES:-1000000}
zero_writes=${MEMGROWTH_ZERO_WRITES:-250000}
rss_slack=${MEMGROWTH_RSS_KIB:-2048}
client=$SCRATCH/stress_memgrowth

if cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -o "$client" "$TOP/tests/e2e/src/stress_memgrowth.c" \
     $(pkg-config --cflags --libs libnbd 2>/dev/null || echo -lnbd) -lpthread 2>"$SCRATCH/cc.log"; then
  :
else
  fail "build the libnbd memory-growth client"; sed 's/^/# /' "$SCRATCH/cc.log"; done_testing; exit
fi
if [ ! -f "$FILTER" ]; then fail "the filter $FILTER is built (run make)"; done_testing; exit; fi

region_kib=$((64 << 10))

field () { echo "$1" | awk -v k="$2" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }'; }

# scenario NAME WRITES [-Z]: a fresh nbdkit, the client, the checks.
scenario () {
  local name=$1 n=$2 zflag=${3:-} store=$SCRATCH/store-$1 out=$SCRATCH/client-$1.out
  mkdir -p "$store"
  store=$(cd "$store" && pwd -P)
  # TMPDIR: where the filter creates its overlay store.
  if ! TMPDIR=$store run_nbdkit "sock-$name" null size=128M; then
    fail "$name: start nbdkit"; return
  fi
  "$client" -s "$SCRATCH/sock-$name" -p "$NBDKIT_PID" -d "$store" -z $((region_kib << 10)) -n "$n" \
    -c 4 -q 32 -e 10 $zflag >"$out" 2>&1
  local crc=$?
  sed 's/^\([^#]\)/# \1/' "$out"
  check "$name: every request succeeded and the store was found" test "$crc" -eq 0
  local first last
  first=$(grep '^pass 1 ' "$out")
  last=$(grep '^pass ' "$out" | tail -1)
  if [ -z "$first" ] || [ "$first" = "$last" ]; then
    fail "$name: the client reported after the first and the last pass"
  else
    local r1 r2 b1 b2 s1 s2 w2
    r1=$(field "$first" rss_kib) r2=$(field "$last" rss_kib)
    b1=$(field "$first" store_blocks_kib) b2=$(field "$last" store_blocks_kib)
    s1=$(field "$first" store_size_kib) s2=$(field "$last" store_size_kib)
    w2=$(field "$last" writes)
    check "$name: VmRSS after 1 pass ${r1} KiB, after $w2 writes ${r2} KiB (growth $((r2 - r1)) KiB <= $rss_slack)" \
      test $((r2 - r1)) -le "$rss_slack"
    echo "# $name: store disk usage after 1 pass ${b1} KiB, at the end ${b2} KiB; size ${s1} KiB, then ${s2} KiB"
    local most biggest
    most=$(grep '^pass ' "$out" | awk '{ for (i = 1; i < NF; i++) if ($i == "store_blocks_kib" && $(i + 1) > m) m = $(i + 1) } END { print m + 0 }')
    biggest=$(grep '^pass ' "$out" | awk '{ for (i = 1; i < NF; i++) if ($i == "store_size_kib" && $(i + 1) > m) m = $(i + 1) } END { print m + 0 }')
    check "$name: store disk usage at every report <= the live data $region_kib KiB + 64 MiB (at most $most KiB)" \
      test "$most" -le $((region_kib + 65536))
    check "$name: store file size at every report <= the live data $region_kib KiB + 128 MiB (at most $biggest KiB)" \
      test "$biggest" -le $((region_kib + 131072))
  fi
  stop_nbdkit
  local rc=$?
  check "$name: nbdkit exited 0 (status $rc; above 128 is a signal)" test "$rc" -eq 0
}

scenario overwrite "$writes"
scenario zero-rewrite "$zero_writes" -Z
done_testing
