#!/usr/bin/env bash
# Cross-dataset / domain generalisation, step 2: evaluate the ImageNet model (xd_train.sh) on DATASET
# (full test split, all classes). Every target loads the *ImageNet* model; the official script's bug
# of loading each target dataset's own model is not reproduced.
# output: output/evaluation/$TRAINER/${CFG}_16shots/DATASET/seedSEED
# usage: bash scripts/mudpt/xd_test.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
xd_test "$@"
