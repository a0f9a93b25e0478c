#!/usr/bin/env bash
# Regenerates tests/corpus/good/ and tests/corpus/bad/.
#
# Small base images come from qemu-img/qemu-io (v2, v3, deflate, zstd,
# snapshots, bitmaps, backing file, preallocated zero clusters) and from
# luacow's own encoder; make-corpus.c copies them to good/ and writes one
# damaged copy per broken field to bad/, named after that field.
#
# The committed files are the reference: qemu stamps snapshot times, so a
# rerun changes some bytes but not what each file breaks.
#
# make-corpus.sh --from-good skips qemu and starts from the committed
# good/q-*.qcow2 (copied verbatim there): with the encoder unchanged, every
# existing file comes out byte for byte the same, so a change to
# make-corpus.c shows as exactly the files it adds, changes or removes.
set -euo pipefail
cd "$(dirname "$0")"
top=$(cd ../.. && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/luacow-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT

q () { qemu-io -f qcow2 "$@" >/dev/null; }

if [ "${1:-}" = --from-good ]; then
  cp good/q-*.qcow2 "$work/"
else (
  cd "$work"
  # Mixed source: random, compressible text, zeroes.
  { head -c 6000 /dev/urandom; head -c 4000 /dev/zero;
    { yes 'luacow corpus line 0123456789' || true; } | head -c 16000;
    head -c 6768 /dev/urandom; } > mixed.raw

  qemu-img create -q -f qcow2 -o cluster_size=512 q-v3.qcow2 64k
  q -c 'write -P 0x11 0 9000' -c 'write -P 0x22 20000 5000' \
    -c 'write -z 1024 1024' -c 'write -z 40000 2048' q-v3.qcow2

  qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 q-v2.qcow2 64k
  q -c 'write -P 0x33 512 7000' -c 'write -P 0x44 60000 5536' q-v2.qcow2

  qemu-img convert -c -O qcow2 -o cluster_size=512 mixed.raw q-deflate.qcow2
  qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd \
    mixed.raw q-zstd.qcow2
  qemu-img convert -c -O qcow2 -o cluster_size=4096 mixed.raw q-deflate-4k.qcow2

  qemu-img create -q -f qcow2 -o cluster_size=512 q-snap.qcow2 32k
  q -c 'write -P 1 0 8k' q-snap.qcow2
  qemu-img snapshot -c first q-snap.qcow2
  q -c 'write -P 2 4k 8k' q-snap.qcow2
  qemu-img snapshot -c second q-snap.qcow2
  q -c 'write -P 3 0 1k' q-snap.qcow2

  qemu-img create -q -f qcow2 -o cluster_size=512 q-bitmap.qcow2 16k
  qemu-img bitmap --add q-bitmap.qcow2 b0
  q -c 'write -P 5 0 3000' q-bitmap.qcow2

  head -c 65536 /dev/urandom > base.raw
  qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw \
    q-backing.qcow2
  q -c 'write -P 6 1000 3000' q-backing.qcow2

  qemu-img create -q -f qcow2 -o cluster_size=4096 q-4k.qcow2 128k
  q -c 'write -P 7 0 20000' -c 'write -z 4096 8192' q-4k.qcow2
) fi

cc -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror -I"$top/plugin" \
  -o "$work/make-corpus" make-corpus.c "$top"/plugin/qcow2_*.c \
  "$top/plugin/fullio.c" -lz -lzstd
rm -rf good bad
mkdir -p good bad
"$work/make-corpus" "$work" .
echo "good: $(ls good | wc -l) files, bad: $(ls bad | wc -l) files"
