#!/usr/bin/env bash
# Issue 11, break 1: scripting plugins keep their script.  The rule
# (config.h): luacow-script= always names the policy (every script= then
# goes to the plugin); otherwise a scripting plugin (sh, lua, perl, python,
# ruby, tcl, cc) keeps the first script= and a second one is the policy,
# and with any other plugin script= is the policy.  One script= more is an
# error naming luacow-script=.  Real sh, lua, python and perl plugins.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/src/save_lib.sh"
cd "$SCRATCH" || exit 1

# Plugins serving 1 MiB of one byte each, so the client shows whose data it got.
printf '#!/bin/bash\ncase "$1" in get_size) echo 1M;; pread) head -c $3 /dev/zero | tr "\\0" S;; *) exit 2;; esac\n' > plug.sh
chmod +x plug.sh
cat > plug.lua <<'EOF'
function open(readonly) return 1 end
function get_size(h) return 1048576 end
function pread(h, count, offset) return string.rep("L", count) end
EOF
cat > plug.py <<'EOF'
API_VERSION = 2
def open(readonly): return 1
def get_size(h): return 1048576
def pread(h, buf, offset, flags): buf[:] = b"P" * len(buf)
EOF
cat > plug.pl <<'EOF'
sub open { return 1; }
sub get_size { return 1048576; }
sub pread { my ($h, $count, $offset, $flags) = @_; return "R" x $count; }
EOF
# The policy leaves a mark when it is the one in use: its cluster_size
# hook runs at the first client's open.
cat > policy.lua <<'EOF'
return { cluster_size = function (disk)
  local f = assert(io.open(disk.cwd .. "/policy-ran", "w")); f:close(); return 4096 end }
EOF
printf '#!/bin/bash\necho plugin\n' > not-lua.sh

for p in sh lua python perl; do
  nbdkit "$p" --version >/dev/null 2>&1 || fail "the nbdkit $p plugin is installed (make deps)"
done

# served LABEL BYTE POLICY(yes|no) NBDKIT-ARGS...: the client reads BYTE,
# the size is 1 MiB, and the policy ran (or not).
served () {
  local label=$1 byte=$2 want=$3 out; shift 3
  rm -f policy-ran
  out=$(timeout 60 nbdkit -U - --filter="$FILTER" "$@" \
          --run 'nbdinfo --size "$uri" && nbdcopy "$uri" - | head -c 3' 2>nbdkit.log)
  local ran=no; [ -e policy-ran ] && ran=yes
  if [ "$out" = "1048576
$byte$byte$byte" ] && [ $ran = "$want" ]; then ok "$label"
  else fail "$label (got '$out', policy ran: $ran)"; sed 's/^/#   /' nbdkit.log; fi
}

note "--- the issue's reproducer, as written"
printf '#!/bin/bash\ncase "$1" in get_size) echo 1M;; pread) head -c $3 /dev/zero;; *) exit 2;; esac\n' > repro.sh
chmod +x repro.sh
# shellcheck disable=SC2016
checkv "nbdkit -U - --filter=luacow sh ./repro.sh --run 'nbdinfo --size \$uri' prints 1048576" \
  test "$(timeout 60 nbdkit -U - --filter="$FILTER" sh ./repro.sh --run 'nbdinfo --size $uri' 2>&1)" = 1048576

note "--- the plugin keeps its script (positional, script=, with other parameters)"
served "sh ./plug.sh" S no sh ./plug.sh
served "sh script=./plug.sh" S no sh script=./plug.sh
served "lua ./plug.lua" L no lua ./plug.lua
served "python ./plug.py" P no python ./plug.py
served "perl ./plug.pl" R no perl ./plug.pl
served "sh ./plug.sh with luacow-save= (taken by luacow)" S no sh ./plug.sh luacow-save="$SCRATCH/s.qcow2"

note "--- a scripting plugin's second script= is the policy"
served "sh ./plug.sh script=policy.lua" S yes sh ./plug.sh script=policy.lua
served "lua ./plug.lua script=policy.lua" L yes lua ./plug.lua script=policy.lua
served "python script=./plug.py script=policy.lua" P yes python script=./plug.py script=policy.lua

note "--- luacow-script= always names the policy, before or after the plugin's script"
served "sh ./plug.sh luacow-script=policy.lua" S yes sh ./plug.sh luacow-script=policy.lua
served "lua luacow-script=policy.lua script=plug.lua" L yes lua luacow-script=policy.lua script=plug.lua
served "python plug.py luacow-script=policy.lua" P yes python plug.py luacow-script=policy.lua
served "perl plug.pl luacow-script=policy.lua" R yes perl plug.pl luacow-script=policy.lua

note "--- any other plugin: script= is the policy"
dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\0' F > disk.img
served "file disk.img script=policy.lua" F yes file disk.img script=policy.lua
served "file script=policy.lua file=disk.img" F yes file script=policy.lua file=disk.img
served "file disk.img luacow-script=policy.lua" F yes file disk.img luacow-script=policy.lua
served "file disk.img (no policy)" F no file disk.img

# refused LABEL TEXT NBDKIT-ARGS...: nbdkit stops at startup with one
# error line containing TEXT, nothing served.
refused () {
  local label=$1 text=$2; shift 2
  startup_fails refused "$@"
  checkv "$label: one error line at startup" failed_at_startup "$text"
}
note "--- ambiguous or empty: an error that says what to do"
refused "sh: three script=" "name the policy with luacow-script=FILE" \
  sh ./plug.sh script=policy.lua script=other.lua
refused "lua: three script=" "the lua plugin takes the first, the second is the policy" \
  lua ./plug.lua script=policy.lua script=other.lua
refused "file: two script=" "the file plugin takes no script=, so script= names the policy" \
  file disk.img script=policy.lua script=other.lua
refused "empty luacow-script=" "luacow: luacow-script= is empty: give the Lua policy's file name" \
  null size=1M luacow-script=
refused "empty script= as the policy" "luacow: script= is empty" null size=1M script=
refused "a plugin script taken as the policy is a Lua error, not a silent guess" "not-lua.sh:" \
  sh ./plug.sh script=not-lua.sh

note "--- with luacow-script=, every script= goes to the plugin, in order"
# The sh plugin hands later parameters to the script's config method, and
# a later script= to it under the script's magic_config_key.
cat > cfg.sh <<'EOF'
#!/bin/bash
case "$1" in
  magic_config_key) echo mk ;;
  config) echo "$2=$3" >> "$(dirname "$0")/config.seen"; exit 0 ;;
  get_size) echo 1M ;;
  pread) head -c $3 /dev/zero | tr "\0" C ;;
  *) exit 2 ;;
esac
EOF
chmod +x cfg.sh; rm -f config.seen
served "sh ./cfg.sh a=1 script=x luacow-script=policy.lua b=2" C yes \
  sh ./cfg.sh a=1 script=x luacow-script=policy.lua b=2
check "... the plugin saw a=1, script=x (as mk=x), b=2 in that order" test "$(cat config.seen 2>/dev/null | tr '\n' ' ')" = "a=1 mk=x b=2 "
rm -f config.seen
served "sh ./cfg.sh a=1 script=policy.lua b=2: a held parameter keeps its place" C yes \
  sh ./cfg.sh a=1 script=policy.lua b=2
check "... the plugin saw a=1, b=2 in that order" test "$(cat config.seen 2>/dev/null | tr '\n' ' ')" = "a=1 b=2 "

done_testing
