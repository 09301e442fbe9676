#!/usr/bin/env bash
# Few-shot classification on all classes with 1, 2, 4, 8 and 16 shots (or the SHOTS_LIST given, e.g.
# SHOTS_LIST="4 16"), each with the same 10-epoch config, as the official scripts do.
# output: output/few_shot/DATASET/$TRAINER/$CFG/shots_K/seedSEED
# usage: bash scripts/mudpt/few_shot.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
few_shot "$@"
