#!/usr/bin/env bash
# APLe few-shot classification (all classes) on one dataset and seed, for 1, 2, 4, 8 and 16 shots
# (or the shot counts in $SHOTS_LIST, e.g. SHOTS_LIST="1 16").
# output: $OUTPUT/few_shot/DATASET/APLe/$CFG/shots_K/seedSEED
# usage: bash scripts/aple/few_shot.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
few_shot "$@"
