#!/usr/bin/env bash
# Few-shot classification on all classes with K shots for K in SHOTS_LIST (default 1 2 4 8 16).
# output: output/few_shot/DATASET/TRAINER/CFG/shots_K/seedSEED
# usage: bash scripts/vpt/few_shot.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/vpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
few_shot "$@"
