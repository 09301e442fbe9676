#!/usr/bin/env bash
# APLe, cross-dataset transfer: the ImageNet model (trained if needed) on the 10 other datasets.
# usage: bash scripts/aple/cross_dataset.sh DATA SEED [config options...]   (= scripts/run.sh APLe cross_dataset ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "APLe" cross_dataset "$@"
