#!/usr/bin/env bash
# APLe, base-to-novel step 1: train on the base classes (16 shots), test on the base classes.
# usage: bash scripts/aple/base2new_train.sh DATA DATASET SEED [config options...]   (= scripts/run.sh APLe base2new_train ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "APLe" base2new_train "$@"
