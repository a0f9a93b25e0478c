#!/usr/bin/env bash
# make fuzz in a short form for make check, for journal recovery:
# libFuzzer (ASan+UBSan) for FUZZ_SECONDS (default 15) from seed journals.
. "$(dirname "$0")/lib.sh"
FUZZ_BIN=$SCRATCH/bin "$TOP/tests/fuzz/run_journal.sh" "${FUZZ_SECONDS:-15}"
