#!/usr/bin/env bash
# MaPLe, base-to-novel step 2: evaluate the trained model on the new classes.
# usage: bash scripts/maple/base2new_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh MaPLe base2new_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "MaPLe" base2new_test "$@"
