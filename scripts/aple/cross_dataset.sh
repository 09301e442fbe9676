#!/usr/bin/env bash
# APLe cross-dataset transfer for one seed: train on ImageNet (if not done yet), then evaluate that
# model on the ten other datasets.
# usage: bash scripts/aple/cross_dataset.sh DATA SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
cross_dataset "$@"
