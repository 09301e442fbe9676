#!/usr/bin/env bash
# Cross-dataset transfer: train on ImageNet (skipped when finished), then evaluate that ImageNet model
# on the 10 other datasets.
# usage: bash scripts/mudpt/cross_dataset.sh DATA SEED [config options...]
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
[[ $# -ge 2 ]] || { echo "usage: bash scripts/mudpt/cross_dataset.sh DATA SEED [config options...]" >&2; exit 2; }
DATA=$1
SEED=$2
shift 2
bash "$HERE/xd_train.sh" "$DATA" "$SEED" "$@"
for DATASET in caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101; do
    bash "$HERE/xd_test.sh" "$DATA" "$DATASET" "$SEED" "$@"
done
