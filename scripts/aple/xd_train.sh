#!/usr/bin/env bash
# APLe cross-dataset / domain generalisation, step 1: train on ImageNet (16 shots, all 1000 classes).
# output: $OUTPUT/imagenet/APLe/${CFG}_16shots/seedSEED
# usage: bash scripts/aple/xd_train.sh DATA SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
xd_train "$@"
