#!/usr/bin/env bash
# Every policy field and event under a real nbdkit: cluster_size and load
# as functions, name through luacow.expand, relative paths against the
# start directory (also when nbdkit daemonizes into /), backing, compress,
# saved's arguments, the "flush", "close" and "interval" events, the ctx
# fields, luacow-NAME parameters, script= / luacow-script= routing with
# plugins that take script= themselves, and every lua/examples/*.lua.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"

EX=$TOP/lua/examples
P=$TOP/tests/e2e/policies      # the test policies (also: inline ones in $SCRATCH)
mkbase "$SCRATCH/base.raw" $((4 << 20)) 21
BASE=$SCRATCH/base.raw

# wait_for FILE: until FILE exists, while nbdkit (NB_PID, when set) still
# runs.  A progress check: the 60 s limit only turns a hang into a failure.
wait_for () {
  local i
  for i in $(seq 1 1200); do
    [ -e "$1" ] && return 0
    [ -n "${NB_PID:-}" ] && ! kill -0 "$NB_PID" 2>/dev/null && { echo "nbdkit exited before $1 appeared"; return 1; }
    sleep 0.05
  done
  echo "$1 did not appear"; return 1
}
cs_of () { qemu-img info --output=json "$1" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])'; }

# ------------------------------------------------------ cluster_size(disk)
note "--- cluster_size as a function of disk.size"
for size in 1048576 16777216; do
  run_nb "cs-$size" null size=$size luacow-script="$P/hooks_cluster_size.lua" luacow-out="$SCRATCH/cs-$size.size" \
    luacow-save="$SCRATCH/cs-$size.qcow2" -- "$PY $CLIENT ops \"\$uri\" --base /dev/null --cs 4096 --verify none w:0:100:1"
  want=4096; [ $size -ge 8388608 ] && want=65536
  checkv "cluster_size(disk): disk.size is the export size ($size)" test "$(cat "$SCRATCH/cs-$size.size" 2>&1)" = $size
  checkv "cluster_size(disk): a $size-byte disk is saved with $want-byte clusters" test "$(cs_of "$SCRATCH/cs-$size.qcow2")" = $want
done

# --------------------------------------------------------------- load(disk)
note "--- load as a function; name through luacow.expand; relative paths"
mkdir -p "$SCRATCH/start/sub" "$SCRATCH/elsewhere"
year=$(date +%Y)
NB_CWD=$SCRATCH/start start_nb expand file "$BASE" luacow-script="$P/hooks_expand.lua" luacow-x=vm1
client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$SCRATCH/expand.seen" "w:10:5000:1" "z:cs:cs" >/dev/null
stop_nb
saved=$(ls "$SCRATCH"/start/sub/vm1-exit-*.qcow2 2>/dev/null)
checkv "name: luacow.expand fills {params.x}, {event}, {time:%Y}" \
  bash -c "[ '$saved' = '$SCRATCH/start/sub/vm1-exit-$year.qcow2' ] || [ '$saved' = '$SCRATCH/start/sub/vm1-exit-$(date +%Y).qcow2' ]"
checkv "name: a relative name resolves against the start directory" test -f "$saved"
checkv "name: the log names the absolute path" grep_log "saved $SCRATCH/start/sub/vm1-exit-[0-9]{4}\.qcow2 \(exit\)"
# load(disk) returns a relative path; nbdkit started from start/, the client
# must see what was saved.
NB_CWD=$SCRATCH/start run_nb load-fn file "$BASE" luacow-script="$P/hooks_expand.lua" luacow-x=vm2 \
  luacow-prev="sub/${saved##*/}" -- "$PY $CLIENT readall \"\$uri\" $SCRATCH/load-fn.raw"
checkv "load(disk): a relative path from a function is reloaded" cmp "$SCRATCH/load-fn.raw" "$SCRATCH/expand.seen"
checkv "load(disk): nothing written, so nothing saved" test ! -e "$SCRATCH/start/sub/vm2-exit-$year.qcow2"
# A daemonized nbdkit (no -f) changes its directory to /: relative names
# still resolve against the directory it was started from.
rm -f "$SCRATCH/d.sock"
( cd "$SCRATCH/elsewhere" && nbdkit -P "$SCRATCH/d.pid" -U "$SCRATCH/d.sock" --filter="$FILTER" \
    file "$BASE" luacow-script="$P/hooks_expand.lua" luacow-x=daemon ) 2>"$SCRATCH/daemon.log"
NB_PID= wait_for "$SCRATCH/d.pid" >/dev/null
mkdir -p "$SCRATCH/elsewhere/sub"
dpid=$(cat "$SCRATCH/d.pid" 2>/dev/null)
[ -n "$dpid" ] && _pids+=("$dpid")
checkv "daemonized nbdkit runs in /" test "$(readlink "/proc/$dpid/cwd")" = /
client ops "nbd+unix:///?socket=$SCRATCH/d.sock" --base "$BASE" --cs 65536 --verify none "w:0:512:3" >/dev/null
kill -TERM "$dpid"; for _ in $(seq 1 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.05; done
checkv "daemonized nbdkit: the relative name lands in the start directory, not /" \
  bash -c "ls '$SCRATCH'/elsewhere/sub/daemon-exit-*.qcow2 >/dev/null && ! ls /sub/daemon-exit-* 2>/dev/null"

# ---------------------------------------------------- backing and compress
note "--- backing and compress as functions"
start_nb bc-small file "$BASE" luacow-script="$P/hooks_backing_compress.lua" luacow-save="$SCRATCH/bc-small.qcow2"
client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$SCRATCH/bc-small.seen" "w:0:4096:1" >/dev/null
stop_nb
checkv "backing as a string: the log has the rebase command with the resolved base" \
  grep -qF "attach a base with: qemu-img rebase -u -b '$SCRATCH/base.raw' -F raw '$SCRATCH/bc-small.qcow2'" "$NB_LOG"
checkv "compress(ctx) false: no compressed clusters" \
  bash -c "qemu-img check '$SCRATCH/bc-small.qcow2' | grep -q ' 0.00% compressed clusters'"
start_nb bc-big file "$BASE" luacow-script="$P/hooks_backing_compress.lua" luacow-save="$SCRATCH/bc-big.qcow2" luacow-embed=yes
client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$SCRATCH/bc-big.seen" "p:0:2*M:0x61" >/dev/null
stop_nb
checkv "compress(ctx) \"zstd\" for a big overlay: zstd, compressed clusters" \
  bash -c "qemu-img info '$SCRATCH/bc-big.qcow2' | grep -q 'compression type: zstd' && \
           ! qemu-img check '$SCRATCH/bc-big.qcow2' | grep -q ' 0.00% compressed clusters'"
checkv "backing {file=relative, embed=true}: the header has the absolute base" \
  bash -c "qemu-img info '$SCRATCH/bc-big.qcow2' | grep -qx 'backing file: $SCRATCH/base.raw'"
checkv "backing embed=true + zstd: qemu reads what the client saw" \
  qemu-img compare -f qcow2 -F raw "$SCRATCH/bc-big.qcow2" "$SCRATCH/bc-big.seen"

# ------------------------------------------- saved, ctx fields, params
note "--- saved(ctx, result) and the ctx fields"
t0=$(date +%s)
start_nb ctx file "$BASE" luacow-script="$P/hooks_ctx.lua" luacow-tag=one luacow-out="$SCRATCH/ctx.lines"
# 8192 + 100 bytes written, 65536 zeroed (one whole cluster); data
# clusters 0 and 3, zero cluster 1.  dirty_bytes and zero_bytes count what
# clients wrote and zeroed since the last save, written_bytes both since
# the start.
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:8192:1" "z:65536:65536" "w:200000:100:2" "f" >/dev/null
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:300000:10:3" >/dev/null
stop_nb
t1=$(date +%s)
field () { sed -n "${1}p" "$SCRATCH/ctx.lines" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
checkv "saved ran twice (flush, exit)" test "$(grep -c '' "$SCRATCH/ctx.lines" 2>/dev/null)" = 2
checkv "ctx at the flush: event, size, cluster_size" \
  test "$(field 1 event) $(field 1 size) $(field 1 cs)" = "flush 4194304 65536"
checkv "ctx at the flush: dirty_bytes 8292, zero_bytes 65536, written_bytes 73828" \
  test "$(field 1 dirty) $(field 1 zero) $(field 1 written)" = "8292 65536 73828"
checkv "ctx at the flush: data_clusters 2, zero_clusters 1 (as the save wrote)" \
  test "$(field 1 data) $(field 1 zc) $(field 1 rdata) $(field 1 rzero)" = "2 1 2 1"
checkv "ctx at the flush: nothing loaded, no last save yet" test "$(field 1 loaded) $(field 1 last)" = "nil nil"
checkv "ctx: started <= now, both within the test's wall-clock window" \
  "$PY" -c "import sys; s,n=float('$(field 1 started)'),float('$(field 1 now)'); sys.exit(not ($t0-1 <= s <= n <= $t1+1))"
checkv "ctx: params (luacow-tag=one), cwd, script" \
  test "$(field 1 tag) $(field 1 cwd) $(field 1 script)" = "one $SCRATCH $P/hooks_ctx.lua"
checkv "saved result: path, bytes = the file's size, seconds a number >= 0" \
  bash -c "[ '$(field 1 path)' = '$SCRATCH/ctx-one-flush.qcow2' ] && [ '$(field 1 bytes)' = \"\$(stat -c %s '$SCRATCH/ctx-one-flush.qcow2')\" ] && $PY -c 'import sys; sys.exit(not 0 <= float(\"$(field 1 seconds)\"))'"
checkv "saved result and ctx: integers are integers, times are numbers" \
  test "$(field 1 types)" = "integer,integer,number,integer,number"
checkv "ctx at exit: event exit, written_bytes 73838, last_save is the flush's file" \
  test "$(field 2 event) $(field 2 written) $(field 2 last)" = "exit 73838 $SCRATCH/ctx-one-flush.qcow2"
checkv "ctx at exit: last_save.time between started and now" \
  "$PY" -c "import sys; sys.exit(not float('$(field 2 started)') <= float('$(field 2 lasttime)') <= float('$(field 2 now)'))"
checkv "ctx at exit: data_clusters 3 (one more write)" test "$(field 2 data)" = 3
checkv "ctx at exit: dirty_bytes 10, zero_bytes 0 (only what came after the flush's save)" \
  test "$(field 2 dirty) $(field 2 zero)" = "10 0"
# Reloaded: ctx.loaded is the path; the counters start again from 0.
NB_ENV="CTX_POLICY=$P/hooks_ctx.lua" start_nb ctx2 file "$BASE" luacow-script="$P/hooks_ctx_reload.lua" luacow-tag=two \
  luacow-out="$SCRATCH/ctx2.lines" luacow-prev=ctx-one-exit.qcow2
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "f" >/dev/null
stop_nb
ctxline () { tr ' ' '\n' < "$SCRATCH/ctx2.lines" | sed -n "s/^$1=//p" | head -1; }
checkv "ctx after a reload: loaded is the absolute path" test "$(ctxline loaded)" = "$SCRATCH/ctx-one-exit.qcow2"
checkv "ctx after a reload: written_bytes, dirty_bytes, zero_bytes 0; 3 data and 1 zero clusters" \
  test "$(ctxline written) $(ctxline dirty) $(ctxline zero) $(ctxline data) $(ctxline zc)" = "0 0 0 3 1"
checkv "ctx after a reload, nothing written: the default-like save rule did not save at exit" \
  test "$(grep -c '' "$SCRATCH/ctx2.lines")" = 1

# -------------------------------------------------------------- events
note "--- events"
mkdir -p "$SCRATCH/ev"
start_nb ev-flush file "$BASE" luacow-script="$P/hooks_flush.lua" luacow-dir="$SCRATCH/ev"
checkv "flush: the save is on disk when the client's flush returns (nbdkit still running)" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none --exists "$SCRATCH/ev/flush-5000.qcow2" \
  "w:0:5000:1" "f" "e"
checkv "flush: nbdkit still runs" kill -0 "$NB_PID"
checkv "flush: the checkpoint passes qemu-img check" qcheck "$SCRATCH/ev/flush-5000.qcow2"
checkv "flush: a write without a flush is not saved" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:5:2" "s:300"
checkv "  (no file for it)" test ! -e "$SCRATCH/ev/flush-5005.qcow2"
stop_nb
checkv "flush: save=false at exit: no exit save" test ! -e "$SCRATCH/ev/flush-5005.qcow2"

start_nb ev-close file "$BASE" luacow-script="$P/hooks_close.lua" luacow-dir="$SCRATCH/ev"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:777:1" "e" >/dev/null
checkv "close: a save appears after the client disconnects, while nbdkit runs" wait_for "$SCRATCH/ev/close-777.qcow2"
checkv "close: nbdkit still runs" kill -0 "$NB_PID"
checkv "close: the file passes qemu-img check" qcheck "$SCRATCH/ev/close-777.qcow2"
stop_nb

start_nb ev-interval file "$BASE" luacow-script="$P/hooks_interval.lua" luacow-dir="$SCRATCH/ev"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:0:4096:1" >/dev/null
checkv "interval=1: a save appears with no client activity, while nbdkit runs" wait_for "$SCRATCH/ev/interval.qcow2"
checkv "interval=1: nbdkit still runs" kill -0 "$NB_PID"
stop_nb
checkv "interval: SIGTERM stops nbdkit and its interval thread (exits by itself, status 0)" test "$NB_RC" = 0
checkv "interval: the file passes qemu-img check" qcheck "$SCRATCH/ev/interval.qcow2"

# -------------------------------------------------------------- routing
note "--- script= and luacow-script= routing (plugins that take script=)"
cat > "$SCRATCH/plugin.sh" <<'EOF'
#!/bin/sh
# A 1 MiB disk of "S" bytes.
case "$1" in
  get_size) echo 1048576 ;;
  pread) head -c "$3" /dev/zero | tr '\0' S ;;
  can_write|can_flush|can_trim|can_zero|can_extents) exit 3 ;;
  thread_model) echo parallel ;;
  *) exit 2 ;;
esac
EOF
chmod +x "$SCRATCH/plugin.sh"
cat > "$SCRATCH/plugin.lua" <<'EOF'
-- A 1 MiB disk of "L" bytes.
function open (readonly) return 1 end
function get_size (h) return 1048576 end
function pread (h, count, offset) return string.rep("L", count) end
EOF
have_lua=no
nbdkit lua --version >/dev/null 2>&1 && have_lua=yes
# route LABEL BYTE PLUGIN ARGS...: the plugin's bytes are served and the
# policy ran.
route () {
  local label=$1 byte=$2; shift 2
  local dir=$SCRATCH/route-$RANDOM; mkdir -p "$dir"
  run_nb route "$@" luacow-dir="$dir" -- "nbdcopy \"\$uri\" - | head -c 4"
  if [ "$NB_RC" = 0 ] && [ "$(cat "$SCRATCH/route.out")" = "$byte$byte$byte$byte" ] &&
     [ -e "$dir/policy-ran" ] && qemu-img check "$dir/routed.qcow2" >/dev/null 2>&1; then
    ok "$label"
  else
    fail "$label"; sed 's/^/#   /' "$NB_LOG"; echo "#   served: $(cat "$SCRATCH/route.out")"
  fi
}
route "sh plugin: script=PLUGIN script=POLICY (a scripting plugin keeps the first, the second is the policy)" S \
  sh script="$SCRATCH/plugin.sh" script="$P/hooks_route.lua"
route "sh plugin: luacow-script=POLICY script=PLUGIN" S \
  sh luacow-script="$P/hooks_route.lua" script="$SCRATCH/plugin.sh"
if [ $have_lua = yes ]; then
  route "lua plugin: script=PLUGIN script=POLICY" L lua script="$SCRATCH/plugin.lua" script="$P/hooks_route.lua"
  route "lua plugin: luacow-script=POLICY script=PLUGIN" L \
    lua luacow-script="$P/hooks_route.lua" script="$SCRATCH/plugin.lua"
  # The usual way to name a lua/sh/python plugin's script is the bare first
  # argument (nbdkit turns it into script=, before any other key).
  dir=$SCRATCH/route-positional; mkdir -p "$dir"
  run_nb route-pos lua "$SCRATCH/plugin.lua" luacow-script="$P/hooks_route.lua" luacow-dir="$dir" -- \
    "nbdcopy \"\$uri\" - | head -c 4"
  if [ "$NB_RC" = 0 ] && [ "$(cat "$SCRATCH/route-pos.out")" = LLLL ] && [ -e "$dir/policy-ran" ]; then
    ok "lua plugin: PLUGIN.lua (positional) luacow-script=POLICY"
  else
    fail "lua plugin: PLUGIN.lua (positional) luacow-script=POLICY"; sed 's/^/#   /' "$NB_LOG"
  fi
else
  fail "the nbdkit lua plugin is not installed (apt package nbdkit-plugin-lua; add it to make deps): lua routing untested"
fi

# -------------------------------------------------------------- examples
note "--- lua/examples end to end"
# fixed.lua: overlay.qcow2 in the start directory, reloaded next time.
mkdir -p "$SCRATCH/ex-fixed"
NB_CWD=$SCRATCH/ex-fixed start_nb ex-fixed-1 file "$BASE" luacow-script="$EX/fixed.lua"
client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/ex-fixed/state" "w:0:70000:1" "z:2*cs:cs" >/dev/null
stop_nb
checkv "fixed.lua: overlay.qcow2 saved in the start directory" qcheck "$SCRATCH/ex-fixed/overlay.qcow2"
NB_CWD=$SCRATCH/ex-fixed start_nb ex-fixed-2 file "$BASE" luacow-script="$EX/fixed.lua"
checkv "fixed.lua: reloaded at the next start, then more writes" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/ex-fixed/state" "w:3*cs:10:2"
stop_nb
NB_CWD=$SCRATCH/ex-fixed start_nb ex-fixed-3 file "$BASE" luacow-script="$EX/fixed.lua" luacow-save="$SCRATCH/ex-fixed/other.qcow2"
client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/ex-fixed/state2" "w:0:1:3" >/dev/null
stop_nb
checkv "fixed.lua: luacow-save= names the file instead" qcheck "$SCRATCH/ex-fixed/other.qcow2"
NB_CWD=$SCRATCH/ex-fixed run_nb ex-fixed-4 file "$BASE" luacow-script="$EX/fixed.lua" -- \
  "$PY $CLIENT ops \"\$uri\" --base $BASE --cs 65536 --state $SCRATCH/ex-fixed/state x:0:1"
checkv "fixed.lua: the third start still sees both sessions' writes" test "$NB_RC" = 0

# backing.lua: the base recorded in the header; usable directly.
start_nb ex-backing file "$BASE" luacow-script="$EX/backing.lua" luacow-save="$SCRATCH/ex-backing.qcow2" luacow-base="$BASE"
client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$SCRATCH/ex-backing.seen" "w:100:200000:1" >/dev/null
stop_nb
checkv "backing.lua: the header names the base" bash -c "qemu-img info '$SCRATCH/ex-backing.qcow2' | grep -qx 'backing file: $BASE'"
checkv "backing.lua: qemu reads what the client saw, no rebase" \
  qemu-img compare -f qcow2 -F raw "$SCRATCH/ex-backing.qcow2" "$SCRATCH/ex-backing.seen"
start_nb ex-backing-none file "$BASE" luacow-script="$EX/backing.lua" luacow-save="$SCRATCH/ex-backing-none.qcow2"
client ops "$NB_URI" --base "$BASE" --cs 65536 --verify none "w:100:2:1" >/dev/null
stop_nb
checkv "backing.lua: without luacow-base= no backing file" \
  bash -c "qemu-img check '$SCRATCH/ex-backing-none.qcow2' >/dev/null && ! qemu-img info '$SCRATCH/ex-backing-none.qcow2' | grep -q 'backing file'"

# compress.lua: zstd above luacow-compress_over=, plain below.
for over in 1K 1G; do
  start_nb ex-compress file "$BASE" luacow-script="$EX/compress.lua" luacow-save="$SCRATCH/ex-compress-$over.qcow2" \
    luacow-compress_over=$over
  client ops "$NB_URI" --base "$BASE" --cs 65536 --seen "$SCRATCH/ex-compress.seen" "p:0:M:0x41" >/dev/null
  stop_nb
  cp "$SCRATCH/ex-compress-$over.qcow2" "$SCRATCH/ex-c.qcow2"; qemu-img rebase -u -b "$BASE" -F raw "$SCRATCH/ex-c.qcow2"
  if [ $over = 1K ]; then
    checkv "compress.lua: 1 MiB dirty > 1K: zstd-compressed, smaller than the data" \
      bash -c "qemu-img info '$SCRATCH/ex-compress-1K.qcow2' | grep -q 'compression type: zstd' && [ \$(stat -c %s '$SCRATCH/ex-compress-1K.qcow2') -lt 1048576 ]"
  else
    checkv "compress.lua: 1 MiB dirty < 1G: not compressed" \
      bash -c "qemu-img check '$SCRATCH/ex-compress-1G.qcow2' | grep -q ' 0.00% compressed clusters'"
  fi
  checkv "compress.lua ($over): qemu reads what the client saw" \
    qemu-img compare -f qcow2 -F raw "$SCRATCH/ex-c.qcow2" "$SCRATCH/ex-compress.seen"
done

# checkpoint.lua: a save at each flush (luacow-every=0), reloaded at start.
mkdir -p "$SCRATCH/ex-ckpt"
NB_CWD=$SCRATCH/ex-ckpt start_nb ex-ckpt-1 file "$BASE" luacow-script="$EX/checkpoint.lua" luacow-every=0
checkv "checkpoint.lua: checkpoint.qcow2 exists as soon as the flush returns" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/ex-ckpt/state" \
  --exists "$SCRATCH/ex-ckpt/checkpoint.qcow2" "w:0:12345:1" "f" "e"
cp "$SCRATCH/ex-ckpt/checkpoint.qcow2" "$SCRATCH/ex-ckpt/after-flush.qcow2"
stop_nb KILL     # a crash: only the checkpoint survives
checkv "checkpoint.lua: after SIGKILL the checkpoint passes qemu-img check" qcheck "$SCRATCH/ex-ckpt/checkpoint.qcow2"
NB_CWD=$SCRATCH/ex-ckpt start_nb ex-ckpt-2 file "$BASE" luacow-script="$EX/checkpoint.lua" luacow-every=3600
checkv "checkpoint.lua: the checkpoint is reloaded at the next start" \
  client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/ex-ckpt/state" "w:cs:10:2" "f"
checkv "checkpoint.lua: luacow-every=3600: the flush did not save" \
  cmp -s "$SCRATCH/ex-ckpt/checkpoint.qcow2" "$SCRATCH/ex-ckpt/after-flush.qcow2"
stop_nb
NB_CWD=$SCRATCH/ex-ckpt run_nb ex-ckpt-3 file "$BASE" luacow-script="$EX/checkpoint.lua" -- \
  "$PY $CLIENT ops \"\$uri\" --base $BASE --cs 65536 --state $SCRATCH/ex-ckpt/state"
checkv "checkpoint.lua: saved at exit, reloaded with both sessions' writes" test "$NB_RC" = 0

# rotate.lua: a timestamped file per save, the newest reloaded, keep=2.
mkdir -p "$SCRATCH/ex-rotate"
for i in 1 2 3; do
  start_nb ex-rotate-$i file "$BASE" luacow-script="$EX/rotate.lua" luacow-dir="$SCRATCH/ex-rotate" luacow-keep=2
  client ops "$NB_URI" --base "$BASE" --cs 65536 --state "$SCRATCH/ex-rotate/state" "w:$i*cs:100:$i" >/dev/null ||
    fail "rotate.lua: session $i does not see the earlier sessions' writes"
  stop_nb
  [ $i = 3 ] || sleep 1.1          # names have one-second resolution
done
checkv "rotate.lua: luacow-keep=2 leaves the two newest files" \
  test "$(ls "$SCRATCH/ex-rotate" | grep -c '^overlay-[0-9]\{8\}-[0-9]\{6\}-exit\.qcow2$')" = 2
newest=$(ls "$SCRATCH"/ex-rotate/overlay-*.qcow2 | sort | tail -1)
checkv "rotate.lua: the newest file passes qemu-img check" qcheck "$newest"
run_nb ex-rotate-4 file "$BASE" luacow-script="$EX/rotate.lua" luacow-dir="$SCRATCH/ex-rotate" -- \
  "$PY $CLIENT ops \"\$uri\" --base $BASE --cs 65536 --state $SCRATCH/ex-rotate/state"
checkv "rotate.lua: the newest file is reloaded with all three sessions' writes" test "$NB_RC" = 0

done_testing
