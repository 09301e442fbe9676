#!/usr/bin/env bash
# CoOp, evaluate the ImageNet model on DATASET (full test set).
# usage: bash scripts/coop/xd_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh CoOp xd_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "CoOp" xd_test "$@"
