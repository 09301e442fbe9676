#!/usr/bin/env bash
# Base-to-novel, both steps: train on the base classes, then evaluate on the new classes.
# usage: bash scripts/mudpt/base2new.sh DATA DATASET SEED [config options...]
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
[[ $# -ge 3 ]] || { echo "usage: bash scripts/mudpt/base2new.sh DATA DATASET SEED [config options...]" >&2; exit 2; }
bash "$HERE/base2new_train.sh" "$@"
bash "$HERE/base2new_test.sh" "$@"
