#!/usr/bin/env bash
# Saving and reloading end to end: what a client writes, zeroes and trims
# through NBD is what qemu sees in the saved qcow2 (check, info, map,
# rebase + compare), what a fresh nbdkit serves after luacow-load=, and
# what survives a round trip through qemu-io.  Files qemu-img makes reload
# correctly; compressed saves and backing hints work; saves are atomic,
# leave no temporary file and keep modes.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"

ODD=$((130000 * 41))           # 5330000: not a multiple of 512 nor of a cluster

# ------------------------------------------------------------------ helpers

# stopped WHAT: stop_nb; nbdkit must exit 0 (a status above 128 is a
# signal: 134 SIGABRT, 139 SIGSEGV).
stopped () { stop_nb; checkv "$1: nbdkit exits 0 (status $NB_RC)" test "$NB_RC" = 0; }

# expect_counts EXPMAP -> "DATA ZERO"
expect_counts () {
  "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]));
print(sum(v=="data" for v in m.values()), sum(v=="zero" for v in m.values()))' "$1"
}
first_zero_cluster () {
  "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]));
z=[int(k) for k,v in m.items() if v=="zero"]; print(min(z) if z else -1)' "$1"
}
roundup512 () { echo $(( ($1 + 511) / 512 * 512 )); }

# check_saved DIR FILE CS SIZE EXPMAP LOG [COMPRESSION]: the qemu-side checks of
# one saved file, and the log line of the save.
check_saved () {
  local d=$1 f=$2 cs=$3 size=$4 exp=$5 log=$6 ctype=${7:-zlib} what
  what="${f#"$SCRATCH"/}"
  checkv "$what: qemu-img check: no errors, no leaks" qcheck "$f"
  qemu-img info --output=json "$f" > "$d/info.json" 2>&1
  checkv "$what: qemu-img info: qcow2, compat 1.1, cluster $cs, size $(roundup512 "$size"), $ctype" \
    client info "$d/info.json" format=qcow2 cluster-size="$cs" \
    virtual-size="$(roundup512 "$size")" format-specific.data.compat=1.1 \
    format-specific.data.compression-type="$ctype"
  qemu-img map --output=json "$f" > "$d/map.json" 2>&1
  checkv "$what: qemu-img map: exactly the written clusters are data, the zeroed ones zero" \
    client mapcheck "$d/map.json" "$exp" "$cs"
  local counts bytes
  counts=$(expect_counts "$exp"); bytes=$(stat -c %s "$f")
  checkv "$what: log line names path, ${counts% *} data clusters, ${counts#* } zero clusters, $bytes bytes, seconds" \
    grep_log "^nbdkit: luacow: saved $f \(exit\): ${counts% *} data clusters, ${counts#* } zero clusters, $bytes bytes, [0-9]+\.[0-9]{3} s" "$log"
  checkv "$what: mode 0600" test "$(mode_of "$f")" = 600
  checkv "$what: no temporary file left" no_temp "$(dirname "$f")"
}

# check_rebased DIR FILE SEEN EXPMAP: rebase -u onto the base, compare with
# what the client read; a zeroed cluster reads zero over the non-zero base.
check_rebased () {
  local d=$1 f=$2 seen=$3 exp=$4 cs=$5
  local rb=$d/rebased.qcow2
  cp "$f" "$rb"
  checkv "${f#"$SCRATCH"/}: rebase -u onto the base" qemu-img rebase -u -b "$d/base.raw" -F raw "$rb"
  checkv "${f#"$SCRATCH"/}: rebased qcow2 is identical to what the client read" \
    qemu-img compare -f qcow2 -F raw "$rb" "$seen"
  local z
  z=$(first_zero_cluster "$exp")
  if [ "$z" -ge 0 ]; then
    local off=$((z * cs)) len=$cs
    local size; size=$(stat -c %s "$d/base.raw")
    [ $((off + len)) -gt "$size" ] && len=$((size - off))
    checkv "${f#"$SCRATCH"/}: the base is not zero at zeroed cluster $z" \
      bash -c "! cmp -s -n $len <(tail -c +$((off + 1)) '$d/base.raw') /dev/zero"
    checkv "${f#"$SCRATCH"/}: zeroed cluster $z reads zero after the rebase" \
      qemu-io -f qcow2 -c "read -P 0 $off $len" "$rb"
  fi
}

# roundtrip NAME SIZE CS "OPS1..." "OPS2...": a fresh base; nbdkit with
# luacow-save= (and a cluster_size policy when CS is not 65536) runs OPS1;
# the saved file is checked; a second nbdkit reloads it (luacow-load= the
# same path as luacow-save=), must serve every byte the client saw, runs
# OPS2 and saves over the file it loaded; checked again and reloaded once
# more.
roundtrip () {
  local name=$1 size=$2 cs=$3 ops1=$4 ops2=$5
  local d=$SCRATCH/$name f=$SCRATCH/$name/out.qcow2 args=()
  mkdir -p "$d"
  mkbase "$d/base.raw" "$size" 7
  if [ "$cs" != 65536 ]; then
    echo "return { cluster_size = $cs }" > "$d/policy.lua"
    args+=("luacow-script=$d/policy.lua")
  fi
  note "--- $name: size $size, cluster $cs"
  start_nb "$name-1" file "$d/base.raw" "${args[@]}" luacow-save="$f" || { fail "$name: nbdkit starts"; return; }
  # shellcheck disable=SC2086
  checkv "$name: the client reads back what it wrote, zeroed and trimmed" \
    client ops "$NB_URI" --base "$d/base.raw" --cs "$cs" --state "$d/state.json" \
    --seen "$d/seen1.raw" --expmap "$d/exp1.json" $ops1
  stop_nb
  checkv "$name: nbdkit exits 0 after the exit save" test "$NB_RC" = 0
  checkv "$name: the file exists" test -f "$f"
  check_saved "$d" "$f" "$cs" "$size" "$d/exp1.json" "$NB_LOG"
  check_rebased "$d" "$f" "$d/seen1.raw" "$d/exp1.json" "$cs"

  # Reload, check every byte, modify, save over the file that was loaded.
  start_nb "$name-2" file "$d/base.raw" "${args[@]}" luacow-load="$f" luacow-save="$f" ||
    { fail "$name: nbdkit reloads"; return; }
  client readall "$NB_URI" "$d/reloaded.raw"
  checkv "$name: the reloaded overlay serves every byte the client saw" cmp "$d/reloaded.raw" "$d/seen1.raw"
  # shellcheck disable=SC2086
  checkv "$name: more changes after the reload" \
    client ops "$NB_URI" --base "$d/base.raw" --cs "$cs" --state "$d/state.json" \
    --seen "$d/seen2.raw" --expmap "$d/exp2.json" $ops2
  stop_nb
  checkv "$name: saving to the path it was loaded from: nbdkit exits 0" test "$NB_RC" = 0
  check_saved "$d" "$f" "$cs" "$size" "$d/exp2.json" "$NB_LOG"
  check_rebased "$d" "$f" "$d/seen2.raw" "$d/exp2.json" "$cs"
  start_nb "$name-3" file "$d/base.raw" "${args[@]}" luacow-load="$f" ||
    { fail "$name: nbdkit reloads the second save"; return; }
  client readall "$NB_URI" "$d/reloaded2.raw"
  stopped "$name: the second reload"
  checkv "$name: the second save reloads to every byte the client saw" cmp "$d/reloaded2.raw" "$d/seen2.raw"
  checkv "$name: a reload that changes nothing does not rewrite the file" \
    test "$(grep -c 'luacow: saved' "$NB_LOG")" = 0
}

# Aligned and unaligned writes, zeroes and trims for cluster sizes up to
# 64K: whole clusters, a few bytes, a write across a cluster boundary,
# whole-cluster zero and trim, an unaligned zero (partial clusters become
# data completed from the plugin), write-then-zero, a 4K zero inside a big
# cluster, the tail of the odd-sized disk.
OPS_SMALL="w:0:cs:1 w:cs+100:300:2 w:3*cs-10:20:3 z:5*cs:2*cs t:8*cs:cs z:10*cs+7:cs
 w:12*cs:cs:4 z:12*cs:cs z:14*cs:4096 p:16*cs:cs:0 w:size-1000:1000:5 f"
# After the reload: overwrite data, zero data, write into a zero cluster,
# zero the whole last partial cluster, trim unaligned.
OPS_SMALL2="w:0:100:11 z:cs+100:300 p:5*cs+33:10:0x5a z:size//cs*cs:size-size//cs*cs t:20*cs+1:3*cs"
# 2M clusters: the disk has two whole clusters and a partial one.
OPS_2M="w:0:4096:1 w:cs-10:20:2 z:cs+4096:8192 w:2*cs+1:100:3 w:size-1:1:4"
OPS_2M2="z:0:cs z:2*cs:size-2*cs w:cs+5:5:5"

for cs in 512 4096 65536; do
  roundtrip "odd-cs$cs" "$ODD" "$cs" "$OPS_SMALL" "$OPS_SMALL2"
done
roundtrip "odd-cs2M" "$ODD" 2097152 "$OPS_2M" "$OPS_2M2"
roundtrip "size130000" 130000 65536 "w:100:1000:1 z:65536:8192 w:129000:1000:2" \
  "z:65536:130000-65536 w:0:65536:3"

# ---------------------------------------------------------------- 0 bytes
note "--- 0-byte export"
d=$SCRATCH/empty; mkdir -p "$d"; : > "$d/base.raw"
start_nb empty file "$d/base.raw" luacow-save="$d/out.qcow2"
checkv "0 bytes: the export is 0 bytes" test "$(nbdinfo --size "$NB_URI")" = 0
stop_nb
checkv "0 bytes: default policy: nothing written, nothing saved, exit 0" \
  bash -c "[ $NB_RC = 0 ] && [ ! -e '$d/out.qcow2' ] && [ -z \"\$(ls -A '$d' | grep -v base.raw)\" ]"
echo 'return { save = function (ctx) return ctx.event == "exit" end }' > "$d/always.lua"
start_nb empty-forced file "$d/base.raw" luacow-script="$d/always.lua" luacow-save="$d/out.qcow2"
nbdinfo --size "$NB_URI" >/dev/null   # the exit event needs a client to have come
stop_nb
checkv "0 bytes: a policy that always saves writes a valid empty qcow2" \
  bash -c "[ $NB_RC = 0 ] && qemu-img check '$d/out.qcow2' >/dev/null && \
    [ \"\$(qemu-img info --output=json '$d/out.qcow2' | $PY -c 'import json,sys; print(json.load(sys.stdin)[\"virtual-size\"])')\" = 0 ]"
run_nb empty-reload file "$d/base.raw" luacow-load="$d/out.qcow2" -- 'nbdinfo --size "$uri"'
checkv "0 bytes: the empty qcow2 reloads" bash -c "[ $NB_RC = 0 ] && [ \"\$(cat '$SCRATCH/empty-reload.out')\" = 0 ]"

# ----------------------------------------------------------- > 4 GiB sparse
note "--- > 4 GiB sparse export"
d=$SCRATCH/big; mkdir -p "$d"; BIG=$(( (5 << 30) + 12345 ))
mkbase "$d/base.raw" "$BIG" 9
# nbdkit's log filter between luacow and the plugin shows what the save
# reads: only the partly written clusters, to complete them.
start_nb big --filter=log file "$d/base.raw" logfile="$d/below.log" luacow-save="$d/out.qcow2"
checkv "> 4 GiB: writes around 4 GiB and at the end read back" \
  client ops "$NB_URI" --base "$d/base.raw" --cs 65536 --state "$d/state.json" --verify touched \
  --expmap "$d/exp.json" "w:4*G-100:5000:1" "z:4*G+M:M" "w:size-77:77:2" "w:size//2+10:10:3" \
  "t:4*G+8*M:cs" "p:4*G+3*M:cs:0"
before=$(grep -c '' "$d/below.log")
t0=$SECONDS
stopped "> 4 GiB: the exit save"
note "> 4 GiB: the exit save took about $((SECONDS - t0)) s"
read -r ndata _ <<<"$(expect_counts "$d/exp.json")"
read_below=$(tail -n +$((before + 1)) "$d/below.log" | "$PY" -c '
import re, sys
print(sum(int(m.group(1), 16) for m in (re.search(r" Read id=\S+ offset=\S+ count=(0x[0-9a-f]+)", l) for l in sys.stdin) if m))')
checkv "> 4 GiB: the exit save read $read_below bytes below, at most its $ndata data clusters (only modified clusters)" \
  test "$read_below" -le $((ndata * 65536))
checkv "> 4 GiB: qemu-img check" qcheck "$d/out.qcow2"
qemu-img map --output=json "$d/out.qcow2" > "$d/map.json"
checkv "> 4 GiB: qemu-img map: exactly the written clusters" client mapcheck "$d/map.json" "$d/exp.json" 65536
checkv "> 4 GiB: the file is small (< 4 MiB)" test "$(stat -c %s "$d/out.qcow2")" -lt $((4 << 20))
start_nb big-reload file "$d/base.raw" luacow-load="$d/out.qcow2"
checkv "> 4 GiB: the reload serves the written, zeroed and clean clusters" \
  client ops "$NB_URI" --base "$d/base.raw" --cs 65536 --state "$d/state.json" --verify touched "x:0:4096"
stopped "> 4 GiB: the reload"
cp "$d/out.qcow2" "$d/rb.qcow2"
qemu-img rebase -u -b "$d/base.raw" -F raw "$d/rb.qcow2"
checkv "> 4 GiB: rebased, qemu reads the written data above 4 GiB" \
  bash -c "qemu-io -f qcow2 -c 'read -P 0 $(( (4 << 30) + (1 << 20) )) 1M' -c 'read -P 0 $(( (4 << 30) + (3 << 20) )) 64k' '$d/rb.qcow2' | grep -c '^read' | grep -qx 2"

# -------------------------------------------------- qemu-io modifies a save
note "--- round trip through qemu"
d=$SCRATCH/qemu; mkdir -p "$d"
mkbase "$d/base.raw" $((4 << 20)) 3
start_nb qemu-1 file "$d/base.raw" luacow-save="$d/out.qcow2"
client ops "$NB_URI" --base "$d/base.raw" --cs 65536 "w:0:65536:1" "z:cs:cs" >/dev/null
stopped "qemu round trip: the first save"
checkv "qemu round trip: qemu-io writes into a luacow file" \
  qemu-io -f qcow2 -c "write -P 0x5a 100000 5000" -c "write -z 300000 65536" -c "write -P 0x6b 0 512" "$d/out.qcow2"
checkv "qemu round trip: qemu-img check after qemu's writes" qcheck "$d/out.qcow2"
cp "$d/out.qcow2" "$d/rb.qcow2"; qemu-img rebase -u -b "$d/base.raw" -F raw "$d/rb.qcow2"
qemu-img convert -O raw "$d/rb.qcow2" "$d/expected.raw"
run_nb qemu-2 file "$d/base.raw" luacow-load="$d/out.qcow2" -- "$PY $CLIENT readall \"\$uri\" $d/reloaded.raw"
checkv "qemu round trip: the reload shows qemu's modifications (nbdkit status $NB_RC)" \
  bash -c '[ "$1" = 0 ] && cmp "$2" "$3"' _ "$NB_RC" "$d/reloaded.raw" "$d/expected.raw"
checkv "qemu round trip: including the 0x5a pattern" \
  bash -c "cmp -s <(dd if='$d/reloaded.raw' bs=1 skip=100000 count=5000 status=none) <(head -c 5000 /dev/zero | tr '\0' '\132')"

# --------------------------------------------------------- files made by qemu
note "--- files made by qemu-img reload correctly"
d=$SCRATCH/qimg; mkdir -p "$d"
QSIZE=$((4 << 20))
mkbase "$d/base.raw" $QSIZE 5
# qfile NAME CREATE-OPTIONS: a qcow2 over base.raw with a mix of writes
qfile () {
  local f=$d/$1.qcow2; shift
  qemu-img create -q -f qcow2 -b "$d/base.raw" -F raw "$@" "$f" "$QSIZE" &&
  qemu-io -f qcow2 -c "write -P 0x11 0 70000" -c "write -P 0x22 1000000 3000" \
    -c "write -z 2097152 131072" -c "write -z -u 3145728 65536" -c "write -P 0x33 $((QSIZE - 512)) 512" \
    "$f" >/dev/null
}
# reload_matches NAME: luacow-load= the file over base.raw serves what qemu
# reads from the file with its backing.
reload_matches () {
  local f=$d/$1.qcow2
  qemu-img convert -O raw "$f" "$d/$1.expected.raw" || return 1
  run_nb "qimg-$1" file "$d/base.raw" luacow-load="$f" -- "$PY $CLIENT readall \"\$uri\" $d/$1.seen.raw"
  [ "$NB_RC" = 0 ] || { cat "$NB_LOG"; return 1; }
  cmp "$d/$1.seen.raw" "$d/$1.expected.raw"
}
qfile plain
checkv "qemu-img file (v3, 64K, zero clusters without preallocation) reloads" reload_matches plain
qemu-img convert -q -c -O qcow2 -B "$d/base.raw" -F raw "$d/plain.qcow2" "$d/deflate.qcow2"
checkv "qemu-img convert -c (deflate) reloads" reload_matches deflate
qemu-img convert -q -c -O qcow2 -o compression_type=zstd -B "$d/base.raw" -F raw "$d/plain.qcow2" "$d/zstd.qcow2"
checkv "qemu-img convert -c -o compression_type=zstd reloads" reload_matches zstd
checkv "  (and it is zstd)" bash -c "qemu-img info '$d/zstd.qcow2' | grep -q 'compression type: zstd'"
qfile v2 -o compat=0.10
checkv "qemu-img compat=0.10 file reloads" reload_matches v2
qfile c512 -o cluster_size=512
checkv "qemu-img cluster_size=512 file reloads" reload_matches c512
qfile c2m -o cluster_size=2M
checkv "qemu-img cluster_size=2M file reloads" reload_matches c2m
qfile snap && qemu-img snapshot -c first "$d/snap.qcow2" &&
  qemu-io -f qcow2 -c "write -P 0x44 500000 100000" -c "write -z 0 4096" "$d/snap.qcow2" >/dev/null
checkv "qemu-img file with an internal snapshot reloads its active state" reload_matches snap
checkv "  (the snapshot is there)" bash -c "qemu-img snapshot -l '$d/snap.qcow2' | grep -q first"
# Preallocated: every cluster has a host offset; zeroing keeps it (zero flag
# with an offset).  qemu refuses a backing file with preallocation.
qemu-img create -q -f qcow2 -o preallocation=metadata "$d/prealloc.qcow2" $QSIZE &&
  qemu-io -f qcow2 -c "write -P 0x55 0 200000" -c "write -z 65536 65536" -c "write -z 1048576 1048576" \
    "$d/prealloc.qcow2" >/dev/null
checkv "qemu-img preallocation=metadata file with zero clusters reloads" reload_matches prealloc
checkv "  (it has zero clusters with a host offset)" \
  bash -c "qemu-img map --output=json '$d/prealloc.qcow2' | grep -q '\"zero\": true, \"data\": false, \"offset\"'"

# -------------------------------------------------------- compressed saves
note "--- compressed saves"
for comp in deflate zstd; do
  d=$SCRATCH/comp-$comp; mkdir -p "$d"
  mkbase "$d/base.raw" "$ODD" 11
  echo "return { compress = \"$comp\" }" > "$d/policy.lua"
  start_nb "comp-$comp" file "$d/base.raw" luacow-script="$d/policy.lua" luacow-save="$d/out.qcow2"
  # compressible (repeated bytes) and incompressible (random) clusters
  client ops "$NB_URI" --base "$d/base.raw" --cs 65536 --seen "$d/seen.raw" --expmap "$d/exp.json" \
    "p:0:4*cs:0x41" "w:4*cs+5:cs:1" "z:8*cs:cs" "p:size-3000:3000:0x42" >/dev/null
  stopped "compress=$comp: the save"
  ctype=zlib; [ $comp = zstd ] && ctype=zstd
  checkv "compress=$comp: qemu-img check" qcheck "$d/out.qcow2"
  checkv "compress=$comp: compression type $ctype" \
    bash -c "qemu-img info --output=json '$d/out.qcow2' > '$d/info.json' && $PY $CLIENT info '$d/info.json' format-specific.data.compression-type=$ctype"
  checkv "compress=$comp: smaller than the data it holds" \
    test "$(stat -c %s "$d/out.qcow2")" -lt $((6 * 65536 + 4 * 65536))
  cp "$d/out.qcow2" "$d/rb.qcow2"; qemu-img rebase -u -b "$d/base.raw" -F raw "$d/rb.qcow2"
  checkv "compress=$comp: rebased, identical to what the client read" \
    qemu-img compare -f qcow2 -F raw "$d/rb.qcow2" "$d/seen.raw"
  run_nb "comp-$comp-reload" file "$d/base.raw" luacow-load="$d/out.qcow2" -- "$PY $CLIENT readall \"\$uri\" $d/reloaded.raw"
  checkv "compress=$comp: reloads to what the client read (nbdkit status $NB_RC)" \
    bash -c '[ "$1" = 0 ] && cmp "$2" "$3"' _ "$NB_RC" "$d/reloaded.raw" "$d/seen.raw"
done

# ------------------------------------------------------------ backing hint
note "--- backing hint"
d=$SCRATCH/backing; mkdir -p "$d"
mkbase "$d/base.raw" $((2 << 20)) 13
cat > "$d/embed.lua" <<EOF
return { backing = { file = "$d/base.raw", format = "raw", embed = true } }
EOF
start_nb backing-embed file "$d/base.raw" luacow-script="$d/embed.lua" luacow-save="$d/embed.qcow2"
client ops "$NB_URI" --base "$d/base.raw" --cs 65536 --seen "$d/seen.raw" "w:1000:70000:1" "z:cs*4:cs" >/dev/null
stopped "backing embed=true"
checkv "backing embed=true: qemu-img check" qcheck "$d/embed.qcow2"
checkv "backing embed=true: the header names the base" \
  bash -c "qemu-img info --output=json '$d/embed.qcow2' > '$d/info.json' && $PY $CLIENT info '$d/info.json' full-backing-filename='$d/base.raw' backing-filename-format=raw"
checkv "backing embed=true: usable directly (compare without rebase)" \
  qemu-img compare -f qcow2 -F raw "$d/embed.qcow2" "$d/seen.raw"
checkv "backing embed=true: the log names the backing file" \
  grep_log "saved $d/embed.qcow2 \(exit\): .*; backing file $d/base.raw"
cat > "$d/hint.lua" <<EOF
return { backing = { file = "$d/base.raw", embed = false } }
EOF
start_nb backing-hint file "$d/base.raw" luacow-script="$d/hint.lua" luacow-save="$d/hint.qcow2"
client ops "$NB_URI" --base "$d/base.raw" --cs 65536 --seen "$d/seen2.raw" "w:1000:70000:2" >/dev/null
stopped "backing embed=false"
checkv "backing embed=false: no backing file in the header" \
  bash -c "! qemu-img info '$d/hint.qcow2' | grep -q 'backing file'"
checkv "backing embed=false: stderr has the exact rebase command" \
  grep -qF "attach a base with: qemu-img rebase -u -b '$d/base.raw' -F raw '$d/hint.qcow2'" "$NB_LOG"
cmd=$(grep -oE "qemu-img rebase -u -b .*" "$NB_LOG" | head -1)
checkv "backing embed=false: running the logged command makes the file usable" \
  bash -c "$cmd && qemu-img compare -f qcow2 -F raw '$d/hint.qcow2' '$d/seen2.raw'"

# -------------------------------------------------------------- atomicity
note "--- atomicity, temporary files, modes"
d=$SCRATCH/atomic; mkdir -p "$d/out"
mkbase "$d/base.raw" $((1 << 20)) 17
start_nb atomic-1 file "$d/base.raw" luacow-save="$d/out/disk.qcow2"
client ops "$NB_URI" --base "$d/base.raw" --cs 65536 "w:0:4096:1" >/dev/null
stopped "atomic: the first save"
checkv "atomic: first save, mode 0600" test "$(mode_of "$d/out/disk.qcow2")" = 600
chmod 0640 "$d/out/disk.qcow2"
sum1=$(sha256sum < "$d/out/disk.qcow2")
# A failing save: the file size limit is below what the new file needs
# (SIGXFSZ ignored, so writes fail with EFBIG).  The overlay store (in
# TMPDIR: no journal) stays under the limit.
(
  trap '' XFSZ
  ulimit -f 256
  start_nb atomic-fail file "$d/base.raw" luacow-save="$d/out/disk.qcow2" luacow-journal=off
  client ops "$NB_URI" --base "$d/base.raw" --cs 65536 --verify none "w:0:4096:2" >/dev/null
  stop_nb
  echo "$NB_RC" > "$d/rc"
)
log=$SCRATCH/atomic-fail.log
checkv "atomic: nbdkit ends without a crash after the failing save (status $(cat "$d/rc"))" \
  test "$(cat "$d/rc")" -lt 128
checkv "atomic: the failing save is reported with the path and the reason" \
  grep_log "save to $d/out/disk.qcow2 failed: .*(File too large|too large)" "$log"
checkv "atomic: the earlier file at the target is intact" test "$(sha256sum < "$d/out/disk.qcow2")" = "$sum1"
checkv "atomic: no temporary file left in the target directory" no_temp "$d/out"
checkv "atomic: the directory holds only the earlier file" test "$(ls -A "$d/out")" = disk.qcow2
# and the replaced file keeps its mode on a successful save
start_nb atomic-2 file "$d/base.raw" luacow-save="$d/out/disk.qcow2"
client ops "$NB_URI" --base "$d/base.raw" --cs 65536 "w:0:4096:4" >/dev/null
stopped "atomic: the second save"
checkv "atomic: the new save replaced the file" test "$(sha256sum < "$d/out/disk.qcow2")" != "$sum1"
checkv "atomic: the replaced file keeps its mode 0640" test "$(mode_of "$d/out/disk.qcow2")" = 640
checkv "atomic: still no temporary file" test "$(ls -A "$d/out")" = disk.qcow2
rm -f "$d"/out/luacow-rescue-* "$SCRATCH"/luacow-rescue-* 2>/dev/null

done_testing
