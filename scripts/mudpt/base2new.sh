#!/usr/bin/env bash
# Base-to-novel, both steps: train on the base classes, then evaluate on the new classes.
# usage: bash scripts/mudpt/base2new.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
base2new "$@"
