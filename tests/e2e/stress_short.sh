#!/usr/bin/env bash
# A short run of tests/stress/stress.sh in each of its modes, for make
# check: 8 connections of random I/O under flush and interval checkpoints,
# every checkpoint reloaded and compared with the model, a second round
# from the reloaded checkpoint (zstd saves) and a round killed (SIGTERM)
# under load:
#   plain     STRESS_SHORT_SECONDS (default 5) s
#   valgrind  the same time at a capped op rate, memcheck on every nbdkit;
#             no second round (its load path is ASan's to check here)
#   asan      the filter rebuilt with clang -fsanitize=address,undefined
# The three modes run side by side (most of their time is fixed-length
# runs and valgrind's start-up); their TAP lines are then printed mode by
# mode, renumbered into this script's.  A mode whose tools are missing
# fails.  Every save taken under load is checked to be a point-in-time
# image (tests/stress/cut.c).  About 50 s on 2 cores.
. "$(dirname "$0")/lib.sh"
secs=${STRESS_SHORT_SECONDS:-5}
stress=$TOP/tests/stress/stress.sh

if [ ! -f "$FILTER" ]; then
  fail "the filter $FILTER is built (run make)"
  done_testing; exit
fi

modes=() mode_pids=()
trap 'for p in "${mode_pids[@]}"; do kill "$p" 2>/dev/null; done; cleanup' EXIT
for mode in plain valgrind asan; do
  case $mode in
    valgrind)
      if ! command -v valgrind >/dev/null; then fail "[valgrind] valgrind is not installed (make deps)"; continue; fi ;;
    asan)
      rt=$(clang -print-file-name=libclang_rt.asan-x86_64.so 2>/dev/null)
      if ! command -v clang >/dev/null || [ ! -f "$rt" ]; then
        fail "[asan] clang or libclang_rt.asan-x86_64.so is not installed (make deps)"; continue
      fi ;;
  esac
  args=()
  [ "$mode" = valgrind ] && args=(--rounds 1)
  "$stress" --mode "$mode" "${args[@]}" "$secs" >"$SCRATCH/$mode.out" 2>&1 &
  modes+=("$mode") mode_pids+=($!)
done

# Each mode's lines renumbered into ours; a mode that exits non-zero
# without a "not ok" line still counts as a failure.
for i in "${!modes[@]}"; do
  mode=${modes[$i]}
  wait "${mode_pids[$i]}"; rc=$?
  mode_pids[$i]=                      # reaped: never signal it again
  failed_before=$_tap_failed
  while IFS= read -r line; do
    case $line in
      "ok "*)     ok "${line#ok * - }" ;;
      "not ok "*) fail "${line#not ok * - }" ;;
      "1.."*)     ;;
      *)          echo "$line" ;;
    esac
  done <"$SCRATCH/$mode.out"
  if [ "$rc" -ne 0 ] && [ "$_tap_failed" -eq "$failed_before" ]; then
    fail "[$mode] stress.sh exited with status $rc without a failing test"
  fi
done
done_testing
