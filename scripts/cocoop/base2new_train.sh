#!/usr/bin/env bash
# CoCoOp, base-to-novel step 1: train on the base classes (16 shots), test on the base classes.
# usage: bash scripts/cocoop/base2new_train.sh DATA DATASET SEED [config options...]   (= scripts/run.sh CoCoOp base2new_train ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "CoCoOp" base2new_train "$@"
