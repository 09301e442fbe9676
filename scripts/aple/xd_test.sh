#!/usr/bin/env bash
# APLe cross-dataset / domain generalisation, step 2: evaluate the *ImageNet* model (xd_train.sh) on
# DATASET (its full test split, all classes; never a model trained on DATASET itself; not imagenet).
# output: $OUTPUT/evaluation/APLe/${CFG}_16shots/DATASET/seedSEED
# usage: bash scripts/aple/xd_test.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
xd_test "$@"
