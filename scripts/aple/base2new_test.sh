#!/usr/bin/env bash
# APLe, base-to-novel step 2: evaluate the trained model on the new classes.
# usage: bash scripts/aple/base2new_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh APLe base2new_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "APLe" base2new_test "$@"
