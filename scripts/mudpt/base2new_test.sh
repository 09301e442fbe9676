#!/usr/bin/env bash
# Base-to-novel, step 2: evaluate the base-class model (base2new_train.sh) on the new classes.
# output: output/base2new/test_new/DATASET/shots_16/$TRAINER/$CFG/seedSEED
# usage: bash scripts/mudpt/base2new_test.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
base2new_test "$@"
