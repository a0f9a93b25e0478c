#!/usr/bin/env bash
# make fuzz in a short form for make check: libFuzzer (ASan+UBSan) on the
# qcow2 decoder for FUZZ_SECONDS (default 20), seeded with the committed
# corpus; nothing is written into the tree.
. "$(dirname "$0")/lib.sh"
FUZZ_KEEP=0 FUZZ_BIN=$SCRATCH/bin "$TOP/tests/fuzz/run.sh" "${FUZZ_SECONDS:-20}"
