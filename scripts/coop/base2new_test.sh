#!/usr/bin/env bash
# CoOp, base-to-novel step 2: evaluate the trained model on the new classes.
# usage: bash scripts/coop/base2new_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh CoOp base2new_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "CoOp" base2new_test "$@"
