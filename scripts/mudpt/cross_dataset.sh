#!/usr/bin/env bash
# Cross-dataset transfer: train on ImageNet (skipped when finished), then evaluate that ImageNet model
# on the 10 other datasets.
# usage: bash scripts/mudpt/cross_dataset.sh DATA SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
cross_dataset "$@"
