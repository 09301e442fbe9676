#!/usr/bin/env bash
# Cross-dataset transfer: train on ImageNet (skipped when finished), evaluate on the 10 other datasets.
# usage: bash scripts/ivlp/cross_dataset.sh DATA SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/ivlp/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
cross_dataset "$@"
