#!/usr/bin/env bash
# IVLP, evaluate the ImageNet model on DATASET (full test set).
# usage: bash scripts/ivlp/xd_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh IVLP xd_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "IVLP" xd_test "$@"
