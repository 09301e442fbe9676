#!/usr/bin/env bash
# APLe base-to-novel on one dataset and seed: train on the base classes, then test on the new classes.
# usage: bash scripts/aple/base2new.sh DATA DATASET SEED [config options...]
# (all 11 datasets x seeds 1-3: for d in imagenet caltech101 ...; do for s in 1 2 3; do ...; done; done,
#  or bash scripts/base2new.sh APLe for the job-parallel sweep)
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
[[ $# -ge 3 ]] || { echo "usage: bash scripts/aple/base2new.sh DATA DATASET SEED [config options...]" >&2; exit 2; }
bash "$HERE/base2new_train.sh" "$@"
bash "$HERE/base2new_test.sh" "$@"
