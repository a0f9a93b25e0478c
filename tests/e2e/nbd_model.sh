#!/usr/bin/env bash
# Model-based test over NBD: tests/e2e/src/model.c drives 4 concurrent
# libnbd connections (multi-conn, one overlay) through random unaligned
# pwrite / zero (FAST_ZERO, FUA, NO_HOLE) / trim / pread / flush / cache /
# block status, each connection on its own random ranges per round, then
# cross-checks the others' writes and reads everything back against an
# exact model.  Export sizes 130000*37 (sparse file with random data),
# 130000 and 0.  Afterwards: the plugin's file is unchanged (sha256), and
# the exit save reloads (luacow-load) and converts (qemu-img, with the base
# attached) to exactly the model.
#
# MODEL_ROUNDS / MODEL_OPS / MODEL_SEED override the run's size and seed.
. "$(dirname "$0")/lib.sh"

ROUNDS=${MODEL_ROUNDS:-12}
OPS=${MODEL_OPS:-600}
SEED=${MODEL_SEED:-$(( $(date +%s) % 100000 ))}
echo "# seed $SEED (MODEL_SEED=$SEED to repeat), $ROUNDS rounds x $OPS ops x 4 connections"

MODEL=$SCRATCH/model
if cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -o "$MODEL" \
     "$TOP/tests/e2e/src/model.c" -lnbd -lpthread 2>"$SCRATCH/cc.log"; then
  ok "build tests/e2e/src/model.c against libnbd"
else
  fail "build tests/e2e/src/model.c against libnbd"; sed 's/^/# /' "$SCRATCH/cc.log"
  done_testing; exit
fi
[ -x "$FILTER" ] || { fail "filter built at $FILTER"; done_testing; exit; }

# make_base FILE SIZE: sparse file with random data in a few places.
make_base () {
  local f=$1 size=$2
  truncate -s "$size" "$f"
  [ "$size" -ge 4096 ] || { [ "$size" -eq 0 ] || head -c "$size" /dev/urandom >"$f"; return; }
  local i off len
  for i in 1 2 3 4 5 6; do
    off=$(( (RANDOM * 32768 + RANDOM) % size ))
    len=$(( (RANDOM * 32768 + RANDOM) % 300000 + 1 ))
    [ $((off + len)) -le "$size" ] || len=$((size - off))
    head -c "$len" /dev/urandom | dd of="$f" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none
  done
}

# model_run NAME SIZE: one nbdkit, the model run, then the checks after it.
model_run () {
  local name=$1 size=$2 seed=$((SEED + $2 % 1000))
  local base=$SCRATCH/$name.img save=$SCRATCH/$name.qcow2 dump=$SCRATCH/$name.model
  make_base "$base" "$size"
  local sum_before; sum_before=$(sha256sum <"$base")
  if ! run_nbdkit "$name.sock" file "$base" luacow-save="$save"; then
    fail "$name: nbdkit starts"; return
  fi
  timeout 300 "$MODEL" "$SCRATCH/$name.sock" "$base" "$size" "$seed" "$ROUNDS" "$OPS" "$dump" \
    >"$SCRATCH/$name.out" 2>&1
  local rc=$?
  local n
  pass_fail_to_tap "$name" "$SCRATCH/$name.out"
  n=$TAP_LINES
  if [ "$rc" -eq 0 ] && [ "$n" -gt 0 ]; then ok "$name: model program exits 0"
  else fail "$name: model program exits 0 (rc $rc after $n results; 124 = timeout)"; fi
  stop_nbdkit
  check "$name: nbdkit exits cleanly (status 0)" [ $? -eq 0 ]
  check "$name: the plugin's file is byte-identical to its original (sha256)" \
    [ "$(sha256sum <"$base")" = "$sum_before" ]

  # The exit save holds exactly the model.
  if [ "$size" -eq 0 ]; then
    check "$name: nothing to save for an empty export" [ ! -e "$save" ]
    return
  fi
  [ -s "$save" ] || { fail "$name: the exit save $save was written"; return; }
  ok "$name: the exit save was written"
  check "$name: qemu-img check of the save" qemu-img check -q "$save"
  cp "$save" "$SCRATCH/$name.rebased.qcow2"
  qemu-img rebase -u -b "$base" -F raw -f qcow2 "$SCRATCH/$name.rebased.qcow2" &&
    qemu-img convert -f qcow2 -O raw "$SCRATCH/$name.rebased.qcow2" "$SCRATCH/$name.conv"
  # qcow2 sizes are whole 512-byte sectors (qemu rounds up the same way):
  # the model, then zeroes up to the next sector.
  local vsize; vsize=$(qemu-img info --output=json "$save" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
  check "$name: the save's virtual size ($vsize) is the export size rounded up to 512" \
    [ "$vsize" = $(( (size + 511) / 512 * 512 )) ]
  check "$name: save + base (qemu-img rebase -u; convert) equals the model" \
    cmp -n "$size" "$SCRATCH/$name.conv" "$dump"
  check "$name: ... and reads zeroes past the export's end" \
    cmp -i "$size:0" -n $((vsize - size)) "$SCRATCH/$name.conv" /dev/zero
  rm -f "$SCRATCH/$name.conv" "$SCRATCH/$name.rebased.qcow2"
  if run_nbdkit "$name.reload.sock" file "$base" luacow-load="$save"; then
    timeout 120 nbdcopy "$URI" "$SCRATCH/$name.reloaded"
    check "$name: reloaded with luacow-load, the export equals the model" \
      cmp "$SCRATCH/$name.reloaded" "$dump"
    stop_nbdkit
    rm -f "$SCRATCH/$name.reloaded"
  else
    fail "$name: nbdkit reloads the save"
  fi
  check "$name: the plugin's file is still unchanged after the reload" \
    [ "$(sha256sum <"$base")" = "$sum_before" ]
}

model_run odd $((130000 * 37))
model_run small 130000
model_run empty 0

no_crash
done_testing
