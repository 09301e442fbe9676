#!/usr/bin/env bash
# Cross-dataset / domain generalisation, step 1: train on ImageNet (16 shots, all 1000 classes).
# output: output/imagenet/$TRAINER/${CFG}_16shots/seedSEED
# usage: bash scripts/mudpt/xd_train.sh DATA SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
xd_train "$@"
