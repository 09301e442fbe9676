#!/usr/bin/env bash
# APLe, evaluate the ImageNet model on DATASET (full test set).
# usage: bash scripts/aple/xd_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh APLe xd_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "APLe" xd_test "$@"
