#!/usr/bin/env bash
# APLe base-to-novel, step 1: train on the base classes (16 shots); the run ends with the base-class test.
# output: $OUTPUT/base2new/train_base/DATASET/shots_16/APLe/$CFG/seedSEED
# usage: bash scripts/aple/base2new_train.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
base2new_train "$@"
