#!/usr/bin/env bash
# Issue 11, breaks 4 and 5: cow's own parameters (cow-block-size=,
# cow-on-read=, cow-on-cache=) are luacow's, never the plugin's, with
# cow's checks; the policy fields cow_on_read / cow_on_cache default to
# them; cow's man page example with xz; block size hints as cow's; the
# version line as cow's; a cluster size no save could use for the export is
# refused at the first open with a line naming the sizes that work.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"
cd "$SCRATCH" || exit 1
mkbase base.img $((4 << 20)) 5

json_field () { "$PY" -c "import json,sys; print(json.load(sys.stdin)['exports'][0]['$1'])"; }
# info FILTER ARGS...: nbdinfo --json of the export, one field per line.
hints () {
  local filter=$1; shift
  timeout 60 nbdkit -U - --filter="$filter" "$@" --run 'nbdinfo --json "$uri"' 2>>hints.log |
    "$PY" -c "import json,sys; e=json.load(sys.stdin)['exports'][0]
print(e['block_size_minimum'], e['block_size_preferred'], e['block_size_maximum'])"
}

note "--- block size hints, as cow's"
for extra in "" "cow-block-size=4096" "cow-block-size=256K" "cow-block-size=4M"; do
  # shellcheck disable=SC2086
  c=$(hints cow file base.img $extra); l=$(hints "$FILTER" file base.img $extra)
  check "hints with '${extra:-no parameter}': luacow '$l' = cow '$c'" test -n "$c" -a "$l" = "$c"
done
echo 'return { cluster_size = "1M" }' > cs1m.lua
check "hints: preferred is the cluster size when larger (1M)" \
  test "$(hints "$FILTER" file base.img luacow-script=cs1m.lua)" = "1 1048576 4294967295"

note "--- cow-block-size= sets the default cluster size (up to 2 MiB)"
cs_of () { qemu-img info --output=json "$1" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])'; }
for bs in 4096:4096 256K:262144 2M:2097152 4M:2097152; do
  timeout 60 nbdkit -U - --filter="$FILTER" file base.img cow-block-size="${bs%%:*}" luacow-save="$SCRATCH/bs.qcow2" \
    --run 'qemu-io -f raw -c "write -P 3 0 8k" "$uri"' >/dev/null 2>&1
  check "cow-block-size=${bs%%:*}: saved with ${bs##*:}-byte clusters" test "$(cs_of bs.qcow2 2>&1)" = "${bs##*:}"
  rm -f bs.qcow2
done
echo 'return { cluster_size = 4096 }' > cs4k.lua
timeout 60 nbdkit -U - --filter="$FILTER" file base.img cow-block-size=1M luacow-script=cs4k.lua \
  luacow-save="$SCRATCH/bs.qcow2" --run 'qemu-io -f raw -c "write -P 3 0 8k" "$uri"' >/dev/null 2>&1
check "cow-block-size=1M: a policy's cluster_size still wins" test "$(cs_of bs.qcow2 2>&1)" = 4096

note "--- bad values: cow's checks, at startup, never passed to the plugin"
bad () { local label=$1 text=$2; shift 2; startup_fails bad "$@"
         checkv "$label: stops at startup with one line" failed_at_startup "$text"
         checkv "$label: the plugin never saw it" bash -c "! grep -q 'unknown parameter' '$NB_LOG'"; }
bad "cow-block-size=1000" "cow-block-size is out of range (4096..2G) or not a power of 2" file base.img cow-block-size=1000
bad "cow-block-size=2048" "cow-block-size is out of range" file base.img cow-block-size=2048
bad "cow-block-size=4G" "cow-block-size is out of range" file base.img cow-block-size=4G
bad "cow-on-read=junk" "could not decipher boolean (junk)" file base.img cow-on-read=junk
bad "cow-on-cache=junk" "could not decipher boolean (junk)" file base.img cow-on-cache=junk

note "--- cow-on-read= and cow-on-cache=: accepted, and the policy's fields"
served () {  # LABEL NBDKIT-ARGS...: serves the base unchanged; stderr in served.log
  local label=$1; shift
  timeout 60 nbdkit -U - --filter="$FILTER" "$@" --run 'nbdcopy "$uri" '"$SCRATCH"'/served.raw' 2>served.log
  local rc=$?
  checkv "$label: served the base (rc $rc)" cmp served.raw base.img
}
# What the copies do is tested in dropin_cow_on_read.sh.
served "cow-on-read=true" file base.img cow-on-read=true
served "cow-on-read=false" file base.img cow-on-read=false
checkv "cow-on-read=false: nothing logged" test ! -s served.log
served "cow-on-read=/PATH" file base.img cow-on-read="$SCRATCH/cor-switch"
served "cow-on-cache=true" file base.img cow-on-cache=true
cat > cor.lua <<'EOF'
local luacow = require "luacow"
return { cow_on_read = function (disk)
  local f = assert(io.open(disk.cwd .. "/cor.seen", "w"))
  f:write(tostring(luacow.default.cow_on_read), " ", tostring(disk.size), "\n"); f:close()
  return false end }
EOF
served "a policy's cow_on_read = false overrides cow-on-read=true" file base.img cow-on-read=true luacow-script=cor.lua
checkv "... it ran at startup with luacow.default.cow_on_read from the command line (disk.size not known yet)" \
  test "$(cat cor.seen 2>&1)" = "true nil"
echo 'return { cow_on_read = "rel/switch", cow_on_cache = true }' > cor2.lua
served "policy cow_on_read = a relative path" file base.img luacow-script=cor2.lua
echo 'return { cow_on_cache = function () return "yes" end }' > cor3.lua
startup_fails cor3 file base.img luacow-script="$SCRATCH/cor3.lua"
checkv "a wrong cow_on_cache result stops the start" failed_at_startup "cor3.lua: cow_on_cache must be a boolean, got \"yes\""

note "--- cow's man page example: --filter=luacow --filter=xz file disk.xz cow-on-read=true"
xz -k -c --block-size=1MiB base.img > disk.xz
out=$(timeout 120 nbdkit -U - --filter="$FILTER" --filter=xz file disk.xz cow-on-read=true \
        --run 'qemu-io -f raw -c "write -P 0x42 1M 4k" "$uri" >/dev/null && nbdcopy "$uri" -' 2>xz.log | sha256sum)
want=$("$PY" -c "
import hashlib; b = bytearray(open('base.img','rb').read()); b[1<<20:(1<<20)+4096] = b'\x42' * 4096
print(hashlib.sha256(b).hexdigest())")
checkv "xz stack with cow-on-read=true: the client reads the base and its write" test "${out%% *}" = "$want"

note "--- the version line, as cow's"
v=$(nbdkit --filter="$FILTER" null --version 2>&1 | sed -n 2p)
cv=$(nbdkit --filter=cow null --version 2>&1 | sed -n 2p)
check "--version: '$v' is cow's '$cv' with luacow's name" test "$v" = "luacow ${cv#cow }" -a -n "${cv#cow }"

note "--- a cluster size no save can use is refused at the first open"
echo 'return { cluster_size = 512 }' > cs512.lua
checkv "512-byte clusters over 200 GiB: refused, naming the sizes that work" \
  refused_at_open cs512 "luacow: cluster size 512 cannot save this 200 GiB export" "cluster sizes from 1024 to 2097152 work" \
  -- null size=200G luacow-script="$SCRATCH/cs512.lua"
checkv "512-byte clusters at exactly 128 GiB: served" \
  timeout 60 nbdkit -U - --filter="$FILTER" null size=128G luacow-script="$SCRATCH/cs512.lua" --run 'nbdinfo --size "$uri"'
checkv "default 64 KiB clusters over 2 PiB (3 PiB): refused, from 131072 up" \
  refused_at_open cs64k "cluster size 65536 cannot save this 3 PiB export" "cluster sizes from 131072 to 2097152 work" \
  -- null size=3P
checkv "an export beyond what 2 MiB clusters cover (4 EiB): too large for qcow2" \
  refused_at_open csbig "export is too large for qcow2" -- null size=4E
checkv "64 KiB clusters at 2 PiB: a write and the exit save work" \
  timeout 60 nbdkit -U - --filter="$FILTER" null size=2P luacow-save="$SCRATCH/2p.qcow2" \
    --run 'qemu-io -f raw -c "write -P 1 2199023255552000 64k" "$uri"'
checkv "... the save passes qemu-img check" qcheck 2p.qcow2

done_testing
