#!/usr/bin/env bash
# MaPLe, evaluate the ImageNet model on DATASET (full test set).
# usage: bash scripts/maple/xd_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh MaPLe xd_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "MaPLe" xd_test "$@"
