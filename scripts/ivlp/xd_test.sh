#!/usr/bin/env bash
# Evaluate the ImageNet model on DATASET (full test split; --eval-only).
# output: output/evaluation/TRAINER/CFG_16shots/DATASET/seedSEED
# usage: bash scripts/ivlp/xd_test.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/ivlp/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
xd_test "$@"
