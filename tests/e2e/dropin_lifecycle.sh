#!/usr/bin/env bash
# Issue 11, breaks 2 and 3: luacow opens the plugin only as often as the
# cow filter does (once per client connection) and never before the
# plugin is ready.  The nbd plugin with command= (ready after its
# .after_fork); an NBD server that takes one client at a time (qemu-nbd's
# default --shared=1) served, saved from and left on SIGTERM; sh and eval
# log no "no connection in this thread"; tmpdisk runs its command once per
# connection, as under cow; the exit save opens a context only when it
# must read the plugin (a partly written cluster), and only then.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"
cd "$SCRATCH" || exit 1
mkbase base.img $((1 << 20)) 11

# A plugin that counts its opens (and says which, for the log).
cat > count.sh <<'EOF'
#!/bin/bash
case "$1" in
  open) echo open >> "$(dirname "$0")/opens"; echo h ;;
  get_size) echo 1M ;;
  pread) head -c $3 /dev/zero | tr '\0' c ;;
  can_write) exit 1 ;;
  *) exit 2 ;;
esac
EOF
chmod +x count.sh

# opens FILTER RUN [PARAMS...]: plugin opens of one nbdkit --run RUN.
opens () {
  local filter=$1 run=$2; shift 2
  rm -f opens
  timeout 60 nbdkit -U - --filter="$filter" sh ./count.sh "$@" --run "$run" >/dev/null 2>>opens.log
  grep -c '' opens 2>/dev/null || echo 0
}
note "--- as many plugin opens as cow, same command lines"
for run in 'nbdinfo --size "$uri"' \
           'qemu-io -f raw -c "write -P 1 0 64k" -c "flush" -c "read -P 1 0 64k" "$uri"' \
           'nbdinfo --size "$uri"; nbdinfo --size "$uri"; nbdcopy "$uri" - >/dev/null'; do
  c=$(opens cow "$run")
  l=$(opens "$FILTER" "$run")
  check "opens: luacow $l = cow $c: $run" test "$l" = "$c" -a "$c" -gt 0
done
run='qemu-io -f raw -c "write -P 1 0 64k" "$uri"'
c=$(opens cow "$run")
l=$(opens "$FILTER" "$run" luacow-save="$SCRATCH/whole.qcow2")
check "opens: a save of whole clusters reads nothing from the plugin: luacow $l = cow $c" test "$l" = "$c"
check "... and it was saved" qcheck whole.qcow2
run='qemu-io -f raw -c "write -P 1 0 4k" "$uri"'
c=$(opens cow "$run")
l=$(opens "$FILTER" "$run" luacow-save="$SCRATCH/part.qcow2")
# The client's close (the export's last) reads the rest of the cluster
# through its own context: the exit save opens nothing.
check "opens: a save completing a partly written cluster opens the plugin no more than cow: luacow $l = cow $c" \
  test "$l" = "$c"
check "... and it was saved" qcheck part.qcow2
check "... with the plugin's data around the write" \
  qemu-io -f qcow2 -r -c 'read -P 1 0 4k' -c 'read -P 0x63 4k 60k' part.qcow2

note "--- sh and eval: no context outside a connection"
noconn () {
  local name=$1; shift
  timeout 60 nbdkit -U - --filter="$FILTER" "$@" \
    --run 'qemu-io -f raw -c "write -P 2 0 64k" -c "read -P 2 0 64k" "$uri"' >/dev/null 2>"$name.log"
  local rc=$?
  check "$name: served (rc $rc)" test $rc = 0
  checkv "$name: no 'no connection in this thread'" bash -c "! grep -F 'no connection in this thread' '$name.log'"
}
noconn sh sh ./count.sh
# shellcheck disable=SC2016
noconn eval eval get_size='echo 1M' pread='head -c $3 /dev/zero'
noconn "sh, saving whole clusters" sh ./count.sh luacow-save="$SCRATCH/sh.qcow2"

note "--- tmpdisk runs its command as often as under cow"
mk () { rm -f mk.count; timeout 60 nbdkit -U - "$@" tmpdisk 1M \
          command='echo run >> "'"$SCRATCH"'/mk.count"; mke2fs -q -F -t ext4 "$disk"' \
          --run 'nbdinfo --size "$uri" >/dev/null' 2>/dev/null; grep -c '' mk.count 2>/dev/null || echo 0; }
c=$(mk --filter=cow); l=$(mk --filter="$FILTER")
check "tmpdisk: the command ran $l time(s) under luacow, $c under cow" test "$l" = "$c" -a "$c" = 1

note "--- the nbd plugin with command= (ready only after its .after_fork)"
out=$(timeout 60 nbdkit -U - --filter="$FILTER" nbd command=qemu-nbd arg=-f arg=raw arg=-r arg="$SCRATCH/base.img" \
        luacow-save="$SCRATCH/cmd.qcow2" \
        --run 'nbdinfo --size "$uri" && qemu-io -f raw -c "write -P 7 4k 4k" "$uri" >/dev/null &&
               nbdcopy "$uri" '"$SCRATCH"'/cmd.seen' 2>cmd.log)
checkv "nbd command=qemu-nbd: the size is served" test "$out" = 1048576
checkv "nbd command=qemu-nbd: the client saw base + its write" \
  "$PY" -c "
b = bytearray(open('base.img','rb').read()); b[4096:8192] = b'\x07' * 4096
assert open('cmd.seen','rb').read() == bytes(b)"
checkv "nbd command=qemu-nbd: saved at exit, rebased it is what the client saw" \
  bash -c "qemu-img rebase -u -b '$SCRATCH/base.img' -F raw cmd.qcow2 && qemu-img compare -f qcow2 -F raw cmd.qcow2 cmd.seen"

out=$(timeout 60 nbdkit -U - --filter="$FILTER" nbd command=qemu-nbd arg=-f arg=raw arg=-r arg="$SCRATCH/base.img" \
        shared=true luacow-load="$SCRATCH/cmd.qcow2" --run 'nbdcopy "$uri" - | cmp - '"$SCRATCH"'/cmd.seen && echo same' 2>cmd2.log)
checkv "nbd command= shared=true: reloads the save at the first client, which reads it back" test "$out" = same

note "--- an NBD server that takes one client (qemu-nbd -t, --shared=1)"
rm -f q.sock
qemu-nbd -t -k "$SCRATCH/q.sock" -f raw -r base.img 2>qemu-nbd.log & QPID=$!
_pids+=("$QPID")
for _ in $(seq 1 100); do [ -S q.sock ] && break; sleep 0.05; done
start_nb one nbd socket="$SCRATCH/q.sock" luacow-save="$SCRATCH/one.qcow2"
checkv "one-client server: a client is served" \
  timeout 30 qemu-io -f raw -c "write -P 9 100 5000" -c "read -P 9 100 5000" "$NB_URI"
checkv "one-client server: a second client, after the first left" timeout 30 nbdinfo --size "$NB_URI"
# One connection: luacow, like cow, advertises multi-conn, and a client
# that opens several connections waits on the server's one-client limit.
checkv "one-client server: a single-connection copy" timeout 30 nbdcopy -C 1 "$NB_URI" one.seen
kill -TERM "$NB_PID"
for _ in $(seq 1 300); do kill -0 "$NB_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$NB_PID" 2>/dev/null; then fail "one-client server: nbdkit exits on SIGTERM"; kill -KILL "$NB_PID"
else ok "one-client server: nbdkit exits on SIGTERM"; fi
wait "$NB_PID"; rc=$?
check "one-client server: exit status 0" test $rc = 0
checkv "one-client server: the exit save (a partly written cluster, read through its own context) is what the client saw" \
  bash -c "qemu-img rebase -u -b '$SCRATCH/base.img' -F raw one.qcow2 && qemu-img compare -f qcow2 -F raw one.qcow2 one.seen"
kill "$QPID"; wait "$QPID" 2>/dev/null

# Without -t qemu-nbd serves one client and exits: luacow's own client
# must be that one.
rm -f q.sock
qemu-nbd -k "$SCRATCH/q.sock" -f raw -r base.img 2>>qemu-nbd.log & QPID=$!
_pids+=("$QPID")
for _ in $(seq 1 100); do [ -S q.sock ] && break; sleep 0.05; done
out=$(timeout 30 nbdkit -U - --filter="$FILTER" nbd socket="$SCRATCH/q.sock" --run 'nbdcopy "$uri" -' 2>nt.log | cmp - base.img && echo same)
checkv "qemu-nbd without -t: the --run client reads the base" test "$out" = same
wait "$QPID" 2>/dev/null

note "--- a flush save through the client's own context"
rm -f q.sock
qemu-nbd -t -k "$SCRATCH/q.sock" -f raw -r base.img 2>>qemu-nbd.log & QPID=$!
_pids+=("$QPID")
for _ in $(seq 1 100); do [ -S q.sock ] && break; sleep 0.05; done
echo 'return { events = { "flush" }, save = function (ctx) return ctx.dirty_bytes > 0 end,
  name = function (ctx) return ctx.params.out end }' > flush.lua
start_nb fl nbd socket="$SCRATCH/q.sock" luacow-script=flush.lua luacow-out="$SCRATCH/fl.qcow2"
checkv "flush: a partly written cluster saved on flush while the one connection is busy" \
  timeout 30 qemu-io -f raw -c "write -P 5 1000 3000" -c "flush" "$NB_URI"
checkv "flush: the save exists and is valid" qcheck fl.qcow2
stop_nb
check "flush: nbdkit exited 0" test "$NB_RC" = 0
kill "$QPID"; wait "$QPID" 2>/dev/null

done_testing
