#!/usr/bin/env bash
# cow-on-read= and cow-on-cache= do what the cow filter's do: data read
# (or cached) from the plugin is kept in the overlay, so the plugin is not
# read for it again; with cow-on-read=/PATH only while PATH exists.  The
# copies are the plugin's data: a save holds only what clients changed,
# and a run that only read saves nothing.  A counting sh plugin logs every
# read it serves.
. "$(dirname "$0")/lib.sh"
. "$TOP/tests/e2e/src/save_lib.sh"
cd "$SCRATCH" || exit 1
head -c $((1 << 20)) /dev/urandom > base.img
cat > plug.sh <<'SH'
#!/bin/bash
case "$1" in
  get_size) echo 1048576 ;;
  pread) echo "$3 $4" >> "$COUNT"
         dd if="$BASE" iflag=skip_bytes,count_bytes skip="$4" count="$3" status=none ;;
  *) exit 2 ;;
esac
SH
chmod +x plug.sh
export BASE=$SCRATCH/base.img
# reads LABEL SCRIPT ARGS...: nbdsh SCRIPT against luacow over the counting
# plugin; prints how many bytes the plugin served.
reads () {
  local label=$1 script=$2; shift 2
  export COUNT=$SCRATCH/count.$label
  : > "$COUNT"
  timeout 60 nbdkit -U - --filter="$FILTER" sh ./plug.sh "$@" \
    --run "nbdsh -u \"\$uri\" -c '$script'" 2>"$label.log" >"$label.out" || {
    echo "# nbdkit failed:"; sed 's/^/# /' "$label.log"; }
  awk '{ s += $1 } END { print s + 0 }' "$COUNT"
}
READ2='assert h.pread(65536, 0) == open("base.img", "rb").read(65536); assert h.pread(65536, 0) == open("base.img", "rb").read(65536)'
n=$(reads off "$READ2")
check "without cow-on-read the plugin serves both reads ($n bytes)" [ "$n" -eq 131072 ]
n=$(reads on "$READ2" cow-on-read=true)
check "cow-on-read=true: the second read comes from the overlay ($n bytes from the plugin)" [ "$n" -eq 65536 ]
rm -f switch
n=$(reads path-absent "$READ2" cow-on-read="$SCRATCH/switch")
check "cow-on-read=/PATH, PATH absent: no copies ($n bytes)" [ "$n" -eq 131072 ]
touch switch
n=$(reads path-present "$READ2" cow-on-read="$SCRATCH/switch")
check "cow-on-read=/PATH, PATH present: copies ($n bytes)" [ "$n" -eq 65536 ]
echo 'return { cow_on_read = "rel/switch" }' > rel.lua
mkdir -p rel && touch rel/switch
n=$(reads policy "$READ2" luacow-script=rel.lua)
check "a policy's relative cow_on_read path is taken from the start directory ($n bytes)" [ "$n" -eq 65536 ]
# An unaligned read: its partly covered blocks are copied whole too.
ONCE='assert h.pread(5000, 1000) == open("base.img", "rb").read(6000)[1000:]'
TWICE="$ONCE; $ONCE"
n1=$(reads unaligned1 "$ONCE" cow-on-read=true)
n2=$(reads unaligned2 "$TWICE" cow-on-read=true)
check "cow-on-read, unaligned: the same read again needs nothing from the plugin ($n1 and $n2 bytes)" \
  [ "$n1" -gt 0 -a "$n1" -eq "$n2" ]
CACHE='h.cache(262144, 0); assert h.pread(262144, 0) == open("base.img", "rb").read(262144)'
n=$(reads cache "$CACHE" cow-on-cache=true)
check "cow-on-cache=true: NBD_CMD_CACHE reads once, the read after it none ($n bytes)" [ "$n" -eq 262144 ]
# Copies next to a client's write, then a save: only the write is saved.
MIX='b = bytearray(open("base.img", "rb").read()); assert h.pread(1048576, 0) == b; h.pwrite(b"W" * 65536, 131072); b[131072:196608] = b"W" * 65536; assert h.pread(1048576, 0) == b'
n=$(reads mix "$MIX" cow-on-read=true luacow-save="$SCRATCH/mix.qcow2")
check "cow-on-read with a write: the plugin served the disk once ($n bytes)" [ "$n" -eq 1048576 ]
checkv "... the save holds the written cluster only, not the copies" \
  grep_log "saved $SCRATCH/mix.qcow2 \(exit\): 1 data clusters, 0 zero clusters" "$SCRATCH/mix.log"
checkv "... and reads back as base + write" bash -c "qemu-img rebase -u -b '$SCRATCH/base.img' -F raw mix.qcow2 &&
  $PY -c \"
b = bytearray(open('base.img','rb').read()); b[131072:196608] = b'W' * 65536
open('want.raw','wb').write(b)\" && qemu-img compare -f qcow2 -F raw mix.qcow2 want.raw"
n=$(reads readonly "$READ2" cow-on-read=true luacow-save="$SCRATCH/ro.qcow2")
check "cow-on-read, reads only: nothing is saved" test ! -e "$SCRATCH/ro.qcow2"
check "... and no journal is left" test ! -e "$SCRATCH/ro.qcow2.journal"
done_testing
