#!/usr/bin/env bash
# Cross-dataset / domain generalisation source: train on ImageNet (16 shots, all classes).
# output: output/imagenet/TRAINER/CFG_16shots/seedSEED
# usage: bash scripts/coop/xd_train.sh DATA SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/coop/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
xd_train "$@"
