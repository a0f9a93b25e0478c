#!/usr/bin/env bash
# Block status through luacow, seen by nbdinfo --map=base:allocation and
# nbdsh: overlay data is "data", zeroed / trimmed blocks are "hole,zero",
# untouched ranges are what the plugin itself reports (a sparse file with
# holes, and the null and memory plugins), partial blocks at the edges of a
# zero become data.  Also: 32 MiB block status / pread / pwrite / zero
# requests, REQ_ONE, and that requests past the end and zero-length
# requests fail exactly as they do without the filter, leaving the
# connection usable.
. "$(dirname "$0")/lib.sh"
export PATH=/usr/bin:$PATH
K=1024 M=$((1024 * 1024))

[ -x "$FILTER" ] || { fail "filter built at $FILTER"; done_testing; exit; }

# map_of URI: nbdinfo --map=base:allocation, adjacent extents of one type
# merged, as "START END TYPE" lines.
map_of () {
  timeout 60 nbdinfo --map=base:allocation "$1" |
    awk '{ s = $1; e = $1 + $2; t = $3
           if (n && t == pt && s == pe) { pe = e; next }
           if (n) print ps, pe, pt
           ps = s; pe = e; pt = t; n = 1 }
         END { if (n) print ps, pe, pt }'
}

# expect_map NAME URI "START END TYPE"...: the merged map is exactly that.
expect_map () {
  local name=$1 uri=$2; shift 2
  local want got
  want=$(printf '%s\n' "$@")
  got=$(map_of "$uri")
  if [ "$got" = "$want" ]; then ok "$name"
  else
    fail "$name"
    diff <(echo "$want") <(echo "$got") | sed 's/^/#   /'
  fi
}

# nbdsh_tap NAME SCRIPT: run a Python script under nbdsh (handle h), turn
# its PASS/FAIL lines into TAP.
nbdsh_tap () {
  local name=$1 script=$2 out=$SCRATCH/nbdsh.out n
  timeout 120 nbdsh --base-allocation -u "$URI" -c "exec(open('$script').read())" >"$out" 2>&1
  local rc=$?
  pass_fail_to_tap "$name" "$out"
  n=$TAP_LINES
  if [ "$rc" -ne 0 ] || [ "$n" -eq 0 ]; then fail "$name: nbdsh script ran (rc $rc, $n results)"; fi
}

############################################################ sparse file
SIZE=$((80 * M))
BASE=$SCRATCH/base.img EXPECT=$SCRATCH/expect.img
truncate -s "$SIZE" "$BASE"
for r in "$M $((256 * K))" "$((5 * M)) $((64 * K))" "$((40 * M)) $((4 * M))" "$((SIZE - 4 * K)) $((4 * K))"; do
  set -- $r
  head -c "$2" /dev/urandom | dd of="$BASE" bs=64K seek="$1" oflag=seek_bytes conv=notrunc status=none
done
cp --sparse=always "$BASE" "$EXPECT"
SUM=$(sha256sum <"$BASE")

# What the file plugin reports without the filter (run_nbdkit always
# adds luacow, so this one is started by hand).
nbdkit -f -U "$SCRATCH/bare.sock" file "$BASE" 2>>"$SCRATCH/nbdkit.log" &
BARE_PID=$!; _pids+=("$BARE_PID")
for _ in $(seq 1 100); do [ -S "$SCRATCH/bare.sock" ] && break; sleep 0.05; done
BARE_URI="nbd+unix:///?socket=$SCRATCH/bare.sock"
BARE_MAP=$(map_of "$BARE_URI")
expect_map "the file plugin alone reports the sparse file's holes and data" "$BARE_URI" \
  "0 $M 3" "$M $((M + 256 * K)) 0" "$((M + 256 * K)) $((5 * M)) 3" \
  "$((5 * M)) $((5 * M + 64 * K)) 0" "$((5 * M + 64 * K)) $((40 * M)) 3" \
  "$((40 * M)) $((44 * M)) 0" "$((44 * M)) $((SIZE - 4 * K)) 3" "$((SIZE - 4 * K)) $SIZE 0"

run_nbdkit lc.sock file "$BASE" || { fail "luacow nbdkit starts"; done_testing; exit; }
check "untouched, luacow's map equals the plugin's" [ "$(map_of "$URI")" = "$BARE_MAP" ]

# Writes through luacow, mirrored into EXPECT.
cat >"$SCRATCH/writes.py" <<EOF
import os
M = 1024 * 1024
exp = open("$EXPECT", "r+b")
def mirror(off, data):
    exp.seek(off); exp.write(data)
def pwrite(off, n):
    data = os.urandom(n); h.pwrite(data, off); mirror(off, data)
def zero(off, n, trim=False):
    (h.trim if trim else h.zero)(n, off); mirror(off, bytes(n))
pwrite(2 * M + 100, 10000)            # partial blocks: data [2M, 2M+12K)
zero(41 * M, M)                       # aligned zero over base data
zero(M + 64 * 1024, 64 * 1024, True)  # trim over base data
zero(5 * M + 1000, 19000)             # partial head and tail become data
pwrite(8 * M, 32 * M)                 # one 32 MiB write
print("PASS a 32 MiB pwrite is accepted")
zero(43 * M, 32 * M)                  # one 32 MiB zero over data and holes
print("PASS a 32 MiB zero is accepted")
zero(60 * M, 8192)                    # zero over a hole
pwrite(70 * M, 1)                     # one byte in a hole: data [70M, 70M+4K)
exp.close()
EOF
nbdsh_tap "writes" "$SCRATCH/writes.py"

WANT=("0 $M 3" "$M $((M + 64 * K)) 0" "$((M + 64 * K)) $((M + 128 * K)) 3"
  "$((M + 128 * K)) $((M + 256 * K)) 0" "$((M + 256 * K)) $((2 * M)) 3"
  "$((2 * M)) $((2 * M + 12 * K)) 0" "$((2 * M + 12 * K)) $((5 * M)) 3"
  "$((5 * M)) $((5 * M + 4 * K)) 0" "$((5 * M + 4 * K)) $((5 * M + 16 * K)) 3"
  "$((5 * M + 16 * K)) $((5 * M + 64 * K)) 0" "$((5 * M + 64 * K)) $((8 * M)) 3"
  "$((8 * M)) $((41 * M)) 0" "$((41 * M)) $((42 * M)) 3" "$((42 * M)) $((43 * M)) 0"
  "$((43 * M)) $((70 * M)) 3" "$((70 * M)) $((70 * M + 4 * K)) 0"
  "$((70 * M + 4 * K)) $((SIZE - 4 * K)) 3" "$((SIZE - 4 * K)) $SIZE 0")
expect_map "after writes: overlay data is data, zeroed/trimmed is hole,zero, the rest as the plugin says" \
  "$URI" "${WANT[@]}"

# nbdinfo --json agrees with the text map on the number of extents.
if json=$(timeout 60 nbdinfo --json --map=base:allocation "$URI") &&
   [ "$(echo "$json" | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -ge ${#WANT[@]} ]; then
  ok "nbdinfo --json --map=base:allocation parses and has at least ${#WANT[@]} extents"
else
  fail "nbdinfo --json --map=base:allocation parses and has at least ${#WANT[@]} extents"
fi

timeout 60 nbdcopy "$URI" "$SCRATCH/got.img"
check "the export's content equals the mirrored writes" cmp "$SCRATCH/got.img" "$EXPECT"
rm -f "$SCRATCH/got.img"

# Big requests, REQ_ONE, past-the-end and zero-length requests.
WANT_PY=$(printf '(%s),' "${WANT[@]// /,}")
cat >"$SCRATCH/big.py" <<EOF
M = 1024 * 1024
want = [$WANT_PY]
def kind(off):
    for s, e, t in want:
        if s <= off < e: return t
def extents(count, off, flags=0):
    got = []
    def cb(ctx, o, entries, err):
        if ctx == "base:allocation":
            for i in range(0, len(entries), 2):
                got.append((o, entries[i], entries[i + 1])); o += entries[i]
        return 0
    h.block_status(count, off, cb, flags)
    return got
def res(good, what):
    print(("PASS " if good else "FAIL ") + what)
# 32 MiB block status over [0, 32M): contiguous, complete, types as expected.
got = extents(32 * M, 0)
pos, good = 0, True
for o, n, t in got:
    if o != pos or n == 0: good = False; print("extent at", o, "expected", pos)
    end = min(o + n, 32 * M)
    for s, e, wt in want:
        if s < end and e > o and wt != (t & 3): good = False; print("extent", (o, n, t), "vs", (s, e, wt))
    pos = o + n
res(good and pos >= 32 * M, "one 32 MiB block status request covers [0, 32M) with the expected types (%d extents)" % len(got))
got = extents(32 * M, 40 * M)
res(len(got) > 0 and got[0][0] == 40 * M, "a 32 MiB block status request at 40M answers from 40M")
# REQ_ONE: one extent, starting at the offset, of the right type.
good = True
for off in [0, M + 70000, 2 * M + 5000, 5 * M + 5000, 41 * M + 1, 70 * M + 4095, $SIZE - 1]:
    g = extents(32 * M if off + 32 * M <= $SIZE else $SIZE - off, off, nbd.CMD_FLAG_REQ_ONE)
    if len(g) != 1 or g[0][0] != off or (g[0][2] & 3) != kind(off):
        good = False; print("REQ_ONE at", off, "got", g, "want type", kind(off))
res(good, "block status with REQ_ONE returns one extent of the right type at 7 offsets")
# 32 MiB pread compared with the mirror.
exp = open("$EXPECT", "rb"); exp.seek(4 * M); want_data = exp.read(32 * M); exp.close()
res(h.pread(32 * M, 4 * M) == want_data, "one 32 MiB pread over data, zero and clean ranges is correct")
EOF
nbdsh_tap "big requests" "$SCRATCH/big.py"

cat >"$SCRATCH/edges.py" <<EOF
h.set_strict_mode(0)          # let the server judge every request
size = h.get_size()
def t(f):
    try:
        r = f(); return "ok"
    except nbd.Error as e:
        return "error %s" % e.errno
cb = lambda *a: 0
cases = [
  ("pread 0 bytes at 0", lambda: h.pread(0, 0)),
  ("pread 0 bytes at the end", lambda: h.pread(0, size)),
  ("pwrite 0 bytes", lambda: h.pwrite(b"", 4096)),
  ("zero 0 bytes", lambda: h.zero(0, 4096)),
  ("trim 0 bytes", lambda: h.trim(0, 4096)),
  ("cache 0 bytes", lambda: h.cache(0, 4096)),
  ("block status 0 bytes", lambda: h.block_status(0, 4096, cb)),
  ("pread across the end", lambda: h.pread(4096, size - 1024)),
  ("pread past the end", lambda: h.pread(512, size + 4096)),
  ("pwrite across the end", lambda: h.pwrite(b"x" * 4096, size - 1024)),
  ("zero across the end", lambda: h.zero(4096, size - 1024)),
  ("trim across the end", lambda: h.trim(4096, size - 1024)),
  ("block status across the end", lambda: h.block_status(4096, size - 1024, cb)),
  ("block status past the end", lambda: h.block_status(4096, size + 4096, cb)),
  ("block status 32 MiB at size-1", lambda: h.block_status(32 * 1024 * 1024, size - 1, cb)),
]
for name, f in cases:
    print("%s: %s" % (name, t(f)))
print("after: %s" % t(lambda: h.pread(4096, 0)))
EOF
timeout 60 nbdsh --base-allocation -u "$BARE_URI" -c "exec(open('$SCRATCH/edges.py').read())" >"$SCRATCH/edges.bare" 2>&1
timeout 60 nbdsh --base-allocation -u "$URI" -c "exec(open('$SCRATCH/edges.py').read())" >"$SCRATCH/edges.luacow" 2>&1
sed 's/^/# luacow: /' "$SCRATCH/edges.luacow"
check "past-the-end and zero-length requests: the same answers as without the filter" \
  diff "$SCRATCH/edges.bare" "$SCRATCH/edges.luacow"
check "requests past the end all fail" \
  bash -c "! grep -E '(across|past) the end.*: ok' '$SCRATCH/edges.luacow' && [ \$(grep -cE '(across|past) the end|size-1' '$SCRATCH/edges.luacow') -eq 8 ]"
check "the connection is still usable after them" grep -qx "after: ok" "$SCRATCH/edges.luacow"
expect_map "the map is unchanged by the failed requests" "$URI" "${WANT[@]}"

stop_nbdkit
check "nbdkit with luacow exits cleanly" [ $? -eq 0 ]
kill "$BARE_PID"; wait "$BARE_PID" 2>/dev/null
check "the base file is unchanged (sha256)" [ "$(sha256sum <"$BASE")" = "$SUM" ]

############################################################ null, memory
# plugin_maps NAME PLUGIN ARGS...: untouched equals the bare plugin; then
# written data, zeroes, and trimmed-after-written ranges.
plugin_maps () {
  local name=$1; shift
  local sock=$SCRATCH/bare-$name.sock
  nbdkit -f -U "$sock" "$@" 2>>"$SCRATCH/nbdkit.log" &
  local bp=$!; _pids+=("$bp")
  for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.05; done
  # The socket exists a moment before nbdkit listens on it: try again.
  local bare
  for _ in $(seq 1 20); do
    bare=$(map_of "nbd+unix:///?socket=$sock" 2>/dev/null) && [ -n "$bare" ] && break
    sleep 0.1
  done
  kill "$bp"; wait "$bp" 2>/dev/null
  check "$name: the bare plugin reports 64 MiB of hole,zero" [ "$bare" = "0 $((64 * M)) 3" ]
  run_nbdkit "lc-$name.sock" "$@" || { fail "$name: luacow nbdkit starts"; return; }
  check "$name: untouched, luacow's map equals the plugin's" [ "$(map_of "$URI")" = "$bare" ]
  cat >"$SCRATCH/w-$name.py" <<'EOF'
M = 1024 * 1024
h.pwrite(b"\1" * 100, M + 5)              # data [1M, 1M+4K)
h.zero(M, 2 * M)                          # stays hole,zero
h.pwrite(b"\2" * 65536, 4 * M)            # written, then trimmed
h.trim(65536, 4 * M)
h.pwrite(b"\3" * (3 * M), 10 * M + 4095)  # data [10M, 13M+4K)
h.zero(M, 10 * M + 4096)                  # whole blocks inside it zeroed
print("PASS writes, zeroes and trims are accepted")
EOF
  nbdsh_tap "$name" "$SCRATCH/w-$name.py"
  expect_map "$name: overlay data is data, zeroed/trimmed is hole,zero, untouched as the plugin says" "$URI" \
    "0 $M 3" "$M $((M + 4 * K)) 0" "$((M + 4 * K)) $((10 * M)) 3" \
    "$((10 * M)) $((10 * M + 4 * K)) 0" "$((10 * M + 4 * K)) $((11 * M + 4 * K)) 3" \
    "$((11 * M + 4 * K)) $((13 * M + 4 * K)) 0" "$((13 * M + 4 * K)) $((64 * M)) 3"
  stop_nbdkit
}
plugin_maps null null size=64M
plugin_maps memory memory size=64M

############################################################ odd plugins
# A plugin without block status (the noextents filter below luacow):
# clean ranges are reported as data, overlay zeroes still as hole,zero.
run_nbdkit noext.sock --filter=noextents null size=16M || fail "noextents: luacow nbdkit starts"
timeout 30 nbdsh -u "$URI" -c 'h.zero(1048576, 4096)' 2>>"$SCRATCH/nbdkit.log"
expect_map "plugin without block status: clean is data, zeroed is hole,zero" "$URI" \
  "0 $((4 * K)) 0" "$((4 * K)) $((M + 4 * K)) 3" "$((M + 4 * K)) $((16 * M)) 0"
stop_nbdkit

# A plugin answering block status with one 64 KiB extent whatever the
# length asked (allowed by the protocol): luacow's answers may be short
# but must stay valid and right, so nbdinfo's walk sees the overlay data.
# (luacow-script= first: a bare script= would be taken as the policy.)
cat >"$SCRATCH/short.sh" <<'EOF'
#!/bin/bash
case "$1" in
  get_size) echo 16M ;;
  pread) dd if=/dev/zero count="$3" iflag=count_bytes status=none ;;
  can_extents) exit 0 ;;
  extents) echo "$4 65536 hole,zero" ;;
  *) exit 2 ;;
esac
EOF
chmod +x "$SCRATCH/short.sh"
echo 'return {}' >"$SCRATCH/empty.lua"
if run_nbdkit short.sock sh luacow-script="$SCRATCH/empty.lua" "$SCRATCH/short.sh"; then
  timeout 30 nbdsh -u "$URI" -c 'h.pwrite(b"x" * 100, 5 * 1048576 + 10)' 2>>"$SCRATCH/nbdkit.log"
  expect_map "plugin with short block status answers: overlay data still found" "$URI" \
    "0 $((5 * M)) 3" "$((5 * M)) $((5 * M + 4 * K)) 0" "$((5 * M + 4 * K)) $((16 * M)) 3"
  stop_nbdkit
else
  fail "sh plugin under luacow starts"
fi

no_crash
done_testing
