#!/usr/bin/env bash
# Base-to-novel, step 1: train on the base classes (16 shots) and test on the base classes.
# output: output/base2new/train_base/DATASET/shots_16/$TRAINER/$CFG/seedSEED
# usage: bash scripts/mudpt/base2new_train.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
base2new_train "$@"
