#!/usr/bin/env bash
# CoCoOp, evaluate the ImageNet model on DATASET (full test set).
# usage: bash scripts/cocoop/xd_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh CoCoOp xd_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "CoCoOp" xd_test "$@"
