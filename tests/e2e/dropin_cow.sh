#!/usr/bin/env bash
# nbdkit 1.32's cow filter tests (tests/test-cow*.sh), rewritten for
# luacow from what they check: the save/rebase recipe of test-cow.sh (and
# luacow's own save of the same overlay), extents (test-cow-extents1: the
# map after trims and writes, at luacow's 4 KiB block granularity where cow
# has 64 KiB), large sparse extents, unaligned I/O, the null plugin,
# cow-block-size=4M with cow-on-read=true, and cow-on-read's reads.
# The base image is never modified.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"
cd "$SCRATCH" || exit 1

note "--- test-cow.sh: a filesystem image, written through luacow, then qemu-img rebase"
mkdir -p cow.d; echo hello > cow.d/hello.txt
timeout 120 nbdkit -U - linuxdisk "$SCRATCH/cow.d" size=100M --run 'nbdcopy "$uri" '"$SCRATCH"'/cow-base.img'
lastmod=$(stat -c %y cow-base.img)
start_nb cow file "$SCRATCH/cow-base.img" luacow-save="$SCRATCH/luacow.qcow2"
checkv "writes into the overlay (a 128 KiB pattern and a small write)" \
  timeout 60 qemu-io -f raw -c "write -P 0x61 10M 128k" -c "write -P 0x62 20000 12" "$NB_URI"
check "the base image was not modified" test "$(stat -c %y cow-base.img)" = "$lastmod"
# cow's man page recipe: a qcow2 backed by the live NBD export, rebased
# onto the base: it then holds exactly what clients changed.
checkv "the man page's qemu-img create -b nbd: + rebase recipe runs" bash -c "
  qemu-img create -q -F raw -b 'nbd:unix:$SCRATCH/cow.sock' -f qcow2 cow-diff.qcow2 &&
  qemu-img rebase -q -F raw -b '$SCRATCH/cow-base.img' -f qcow2 cow-diff.qcow2"
checkv "the rebased diff reads as the export" qemu-img compare -f qcow2 -F raw cow-diff.qcow2 "$NB_URI"
stop_nb
checkv "luacow's own save, rebased, reads as the rebased diff" bash -c "
  qemu-img rebase -q -u -F raw -b '$SCRATCH/cow-base.img' luacow.qcow2 &&
  qemu-img compare -q luacow.qcow2 cow-diff.qcow2"
check "the base image is still unmodified" test "$(stat -c %y cow-base.img)" = "$lastmod"

note "--- test-cow-extents1.sh: extents after trims and writes"
dd if=/dev/urandom of=ext.img count=128 bs=1K 2>/dev/null; truncate -s 4M ext.img
lastmod=$(stat -c %y ext.img)
start_nb ext file "$SCRATCH/ext.img"
map () { nbdinfo --map "$NB_URI" | tr -s ' ' | cut -d' ' -f 1-4; }
checkv "initial map: the base's data and hole" test "$(map)" = " 0 131072 0
 131072 4063232 3"
# nbdsh's trim and pwrite take (count, offset) and (buf, offset).
nbdsh -u "$NB_URI" -c 'bs = 65536' -c 'h.trim(bs, bs)' -c 'h.trim(bs+2, 4*bs-1)' \
  -c 'h.pwrite(b"1"*bs, 16*bs)' -c 'h.trim(2*bs, 32*bs)' -c 'h.pwrite(b"2"*(2*bs), 48*bs)'
# Whole 4 KiB blocks trimmed are holes; the two partly trimmed blocks at
# 258048 and 327680 hold data (zeros where trimmed).
checkv "map after the trims and writes" test "$(map)" = " 0 65536 0
 65536 192512 3
 258048 4096 0
 262144 65536 3
 327680 4096 0
 331776 716800 3
 1048576 65536 0
 1114112 2031616 3
 3145728 131072 0
 3276800 917504 3"
checkv "the data reads back: trimmed ranges zero, writes in place" nbdsh -u "$NB_URI" -c '
base = open("ext.img", "rb").read()
want = bytearray(base); bs = 65536
want[bs:2*bs] = bytes(bs); want[4*bs-1:4*bs-1+bs+2] = bytes(bs+2)
want[16*bs:17*bs] = b"1"*bs; want[32*bs:34*bs] = bytes(2*bs); want[48*bs:50*bs] = b"2"*(2*bs)
assert h.pread(len(want), 0) == bytes(want)'
stop_nb
check "the base image was not modified" test "$(stat -c %y ext.img)" = "$lastmod"

note "--- test-cow-extents-large.sh: large sparse exports report the plugin's extents"
for size in 0 3G 4G 5G 8G; do
  want=$(timeout 120 nbdkit -U - sparse-random $size seed=7 --run 'nbdinfo --map "$uri"' 2>/dev/null)
  got=$(timeout 120 nbdkit -U - --filter="$FILTER" sparse-random $size seed=7 --run 'nbdinfo --map "$uri"' 2>/dev/null)
  check "sparse-random $size: luacow's map is the plugin's ($(echo "$want" | grep -c '') extents)" \
    test -n "$want" -a "$got" = "$want" -o "$size" = 0 -a "$got" = "$want"
done

note "--- test-cow-unaligned.sh: an unaligned write over the whole of a 130000-byte export"
checkv "memory 130000: pwrite of 130000 bytes at 0 reads back" \
  timeout 60 nbdkit -U - --filter="$FILTER" memory 130000 --run 'nbdsh -u "$uri" -c "
buf = b\"abcdefghijklm\" * 10000
h.pwrite(buf, 0)
assert h.pread(130000, 0) == buf"'

note "--- test-cow-null.sh"
checkv "null plugin (size 0): nbdinfo works" \
  timeout 60 nbdkit -U - --filter="$FILTER" null --run 'nbdinfo "$uri" | grep -q "export-size: 0"'

note "--- test-cow-block-size.sh: cow-block-size=4M cow-on-read=true"
lastmod=$(stat -c %y cow-base.img)
checkv "writes and reads back with cow-block-size=4M cow-on-read=true" \
  timeout 60 nbdkit -U - --filter="$FILTER" file "$SCRATCH/cow-base.img" cow-block-size=4M cow-on-read=true \
    --run 'qemu-io -f raw -c "write -P 0x63 1M 128k" -c "write -P 0x64 9000 12" -c "read -P 0x63 1M 128k" -c "read -P 0x64 9000 12" "$uri"'
check "the base image was not modified" test "$(stat -c %y cow-base.img)" = "$lastmod"

note "--- test-cow-on-read.sh: reads with cow-on-read=true"
checkv "memory 128K cow-on-read=true: a write, zeroes before it, the write read back" \
  timeout 60 nbdkit -U - --filter="$FILTER" memory 128K cow-on-read=true --run 'nbdsh -u "$uri" -c "
buf = b\"abcd\" * 16384
h.pwrite(buf, 32768)
assert h.pread(32768, 0) == bytearray(32768)
assert h.pread(65536, 32768) == buf"'

done_testing
