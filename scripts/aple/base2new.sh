#!/usr/bin/env bash
# APLe base-to-novel on one dataset and seed: train on the base classes, then test on the new classes.
# (all 11 datasets x seeds 1-3: for d in imagenet caltech101 ...; do for s in 1 2 3; do ...; done; done,
#  or bash scripts/base2new.sh APLe for the job-parallel sweep)
# usage: bash scripts/aple/base2new.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
base2new "$@"
