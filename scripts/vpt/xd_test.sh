#!/usr/bin/env bash
# VPT, evaluate the ImageNet model on DATASET (full test set).
# usage: bash scripts/vpt/xd_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh VPT xd_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "VPT" xd_test "$@"
