#!/usr/bin/env bash
# The documentation cannot rot: runs README.md's command blocks as written,
# runs the demo, and checks the man page source.  Prints TAP.
#
# README.md marks each fenced block it wants checked with an HTML comment on
# the line just before the fence (invisible when rendered):
#
#   <!-- test -->           a ```sh block: run with `bash -e -o pipefail`
#   <!-- file: NAME -->     any block: its text is written to NAME (e.g. a
#                           policy or a spec that later blocks use); no
#                           test of its own: the blocks that use it are
#   <!-- covered: PATH -->  a ```sh block tested elsewhere (PATH, an
#                           executable in the tree; e.g. install.sh)
#
# Every ```sh block must carry one of them.  Blocks run in README order, each
# in a fresh bash, all in one scratch directory that holds a symlink `lua` to
# the tree's lua/ (so `lua/examples/...` works as from the top of the tree).
# `--filter=luacow` means the built filter: a wrapper `nbdkit` first on PATH
# rewrites it to --filter=$TOP/plugin/nbdkit-luacow-filter.so.
. "$(dirname "$0")/lib.sh"

README=$TOP/README.md
POD=$TOP/plugin/nbdkit-luacow-filter.pod
WORK=$SCRATCH/work
BLOCK_TIMEOUT=${BLOCK_TIMEOUT:-120}

# Daemons a README block started (nbdkit -P FILE.pid) go too, even after a
# failure half-way through a block.
docs_cleanup () {
  local f pid
  for f in "$WORK"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nbdkit ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  cleanup
}
trap docs_cleanup EXIT

# print the output of a failed step as TAP comments
comment () { sed 's/^/# /' | tail -n "${1:-60}"; }

# ------------------------------------------------------------- man page
if command -v podchecker >/dev/null; then
  out=$(podchecker -warnings -warnings "$POD" 2>&1); rc=$?
  if [ "$rc" -eq 0 ] && ! grep -qi 'warning\|error' <<<"$out"; then
    ok "podchecker: $(basename "$POD") is clean"
  else
    fail "podchecker: $(basename "$POD") is clean"; comment <<<"$out"
  fi
else
  fail "podchecker is installed"
fi
# Built exactly as the Makefile builds it: pod2man and groff must both
# go without a warning (one test: building alone is no test).
man1=$SCRATCH/nbdkit-luacow-filter.1
if pod2man --section=1 --center=nbdkit --release=luacow --name=nbdkit-luacow-filter \
     "$POD" >"$man1" 2>"$SCRATCH/pod2man.err" && [ ! -s "$SCRATCH/pod2man.err" ]; then
  out=$(groff -man -Tutf8 -ww -z "$man1" 2>&1)
else
  out="pod2man: $(cat "$SCRATCH/pod2man.err")"
fi
if [ -z "$out" ]; then ok "the man page builds (pod2man) and renders (groff) without a warning"
else fail "the man page builds (pod2man) and renders (groff) without a warning"; comment <<<"$out"; fi
for section in NAME SYNOPSIS DESCRIPTION PARAMETERS "POLICY SCRIPTS" EXAMPLES FILES \
               "ENVIRONMENT VARIABLES" "SEE ALSO" AUTHORS COPYRIGHT; do
  check "man page has the section $section" grep -qx "=head1 $section" "$POD"
done

# --------------------------------------- docs name everything the code has
# Parameters from the filter's own --help, fields and functions from the
# library itself: a new one that is not documented fails here.
help=$(nbdkit --filter="$FILTER" null --help 2>&1)
params=$(grep -oE '^(script=\|)?luacow-[a-z-]+=' <<<"$help" | sed 's/^script=|//' | sort -u)
[ -n "$params" ] || { fail "nbdkit --help lists luacow-* parameters"; comment <<<"$help"; }
lib=$(lua5.4 -e "
  package.path = '$TOP/lua/?.lua;' .. package.path
  local luacow = require 'luacow'
  for _, f in ipairs(luacow.FIELDS) do print('field ' .. f) end
  local names = {}
  for k, v in pairs(luacow) do if type(v) == 'function' then names[#names + 1] = k end end
  table.sort(names)
  for _, k in ipairs(names) do print('function luacow.' .. k) end" 2>&1)
for doc in "$README" "$POD"; do
  name=${doc##*/}
  missing=
  for p in script= $params; do grep -qF -- "$p" "$doc" || missing+=" $p"; done
  while read -r kind what; do
    case $kind in
      field) grep -qE "(\`|C<|B<)$what(\`|>)" "$doc" || missing+=" field:$what" ;;
      function) grep -qF "$what" "$doc" || missing+=" $what" ;;
      *) missing+=" (cannot list the library: $kind $what)" ;;
    esac
  done <<<"$lib"
  for e in exit flush close interval; do grep -qF "\"$e\"" "$doc" || missing+=" event:$e"; done
  if [ -z "$missing" ]; then ok "$name documents every parameter, policy field, event and library function"
  else fail "$name documents every parameter, policy field, event and library function"; echo "# missing:$missing"; fi
done

# ---------------------------------------------------------- README blocks
mkdir -p "$WORK" "$SCRATCH/bin" "$SCRATCH/tmp"
ln -s "$TOP/lua" "$WORK/lua"
real_nbdkit=$(command -v nbdkit)
cat >"$SCRATCH/bin/nbdkit" <<EOF
#!/usr/bin/env bash
# test wrapper: --filter=luacow is the filter built in this tree
args=()
for a in "\$@"; do
  [ "\$a" = --filter=luacow ] && a=--filter=$FILTER
  args+=("\$a")
done
exec $real_nbdkit "\${args[@]}"
EOF
chmod +x "$SCRATCH/bin/nbdkit"

# Split README.md into blocks: $SCRATCH/blocks/N.{mark,lang,line,text}.
blocks=$SCRATCH/blocks
mkdir -p "$blocks"
awk -v dir="$blocks" '
  function flush_mark() { mark = "" }
  /^```/ && !inblock {
    n++; inblock = 1; lang = substr($0, 4); gsub(/[ \t]+$/, "", lang)
    print mark > (dir "/" n ".mark"); close(dir "/" n ".mark")
    print lang > (dir "/" n ".lang"); close(dir "/" n ".lang")
    print NR + 1 > (dir "/" n ".line"); close(dir "/" n ".line")
    printf "" > (dir "/" n ".text")
    mark = ""; next
  }
  /^```[ \t]*$/ && inblock { inblock = 0; close(dir "/" n ".text"); next }
  inblock { print >> (dir "/" n ".text"); next }
  /^<!--.*-->[ \t]*$/ { mark = $0; sub(/^<!--[ \t]*/, "", mark); sub(/[ \t]*-->[ \t]*$/, "", mark); next }
  { mark = "" }
' "$README"

nblocks=$(find "$blocks" -name '*.text' | wc -l)
ran=0
for i in $(seq 1 "$nblocks"); do
  mark=$(cat "$blocks/$i.mark") lang=$(cat "$blocks/$i.lang") line=$(cat "$blocks/$i.line")
  text=$blocks/$i.text
  first=$(grep -v '^[[:space:]]*\(#.*\)\?$' "$text" | head -n 1 | cut -c1-60)
  what="README.md:$line"
  case $mark in
    test)
      if [ "$lang" != sh ]; then fail "$what: <!-- test --> marks a \`\`\`sh block (got '$lang')"; continue; fi
      ran=$((ran + 1)) t0=$SECONDS
      if (cd "$WORK" && PATH=$SCRATCH/bin:/usr/bin:$PATH TMPDIR=$SCRATCH/tmp \
            timeout -k 5 "$BLOCK_TIMEOUT" bash -e -o pipefail "$text") >"$SCRATCH/out" 2>&1; then
        ok "$what runs: $first ($((SECONDS - t0)) s)"
      else
        fail "$what runs: $first ($((SECONDS - t0)) s)"
        { echo "block:"; sed 's/^/  /' "$text"; echo "output:"; cat "$SCRATCH/out"; } | comment 80
      fi
      ;;
    file:*)
      name=${mark#file:}; name=${name//[[:space:]]/}
      if [ -z "$name" ] || [[ $name == */* ]]; then fail "$what: bad file marker '$mark'"; continue; fi
      cp "$text" "$WORK/$name" || fail "$what: cannot write it to $name"
      ;;
    covered:*)
      path=${mark#covered:}; path=${path//[[:space:]]/}
      check "$what ($first) is covered by $path" test -x "$TOP/$path"
      ;;
    "")
      if [ "$lang" = sh ]; then
        fail "$what: a \`\`\`sh block without <!-- test --> or <!-- covered: PATH -->"
        sed 's/^/# /' "$text"
      fi
      ;;
    *)
      fail "$what: unknown marker '<!-- $mark -->'"
      ;;
  esac
done
check "README.md has command blocks that were run ($ran)" test "$ran" -ge 5

# A README block that made a qcow2 left a valid one: qemu-img check them all.
bad=
for f in "$WORK"/*.qcow2 "$WORK"/overlays/*.qcow2; do
  [ -f "$f" ] || continue
  qemu-img check -q "$f" >/dev/null 2>&1 || bad+=" ${f#"$WORK"/}"
done
check "every qcow2 the README's commands saved passes qemu-img check${bad:+ (not:$bad)}" test -z "$bad"
left=$(find "$SCRATCH/tmp" -mindepth 1 2>/dev/null | head -n 5)
check "nothing was left in TMPDIR${left:+ ($left)}" test -z "$left"

# -------------------------------------------------------------- make demo
# `make demo` is `make deps all` and then this script.
if TMPDIR=$SCRATCH/tmp timeout -k 5 120 "$TOP/tests/demo.sh" >"$SCRATCH/demo.out" 2>&1 \
   && grep -q '^All steps held\.$' "$SCRATCH/demo.out"; then
  ok "tests/demo.sh (make demo) holds every step"
else
  fail "tests/demo.sh (make demo) holds every step"; comment 60 <"$SCRATCH/demo.out"
fi
left=$(find "$SCRATCH/tmp" -mindepth 1 2>/dev/null | head -n 5)
check "the demo left nothing behind${left:+ ($left)}" test -z "$left"

done_testing
