#!/usr/bin/env bash
# Domain generalisation: train on ImageNet (skipped when finished), then evaluate that ImageNet model
# on ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R (A and R: their 200-class subsets; the
# class-derived prompt buffers are rebuilt for them when the model is loaded).
# usage: bash scripts/mudpt/domain_generalization.sh DATA SEED [config options...]
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
[[ $# -ge 2 ]] || { echo "usage: bash scripts/mudpt/domain_generalization.sh DATA SEED [config options...]" >&2; exit 2; }
DATA=$1
SEED=$2
shift 2
bash "$HERE/xd_train.sh" "$DATA" "$SEED" "$@"
for DATASET in imagenetv2 imagenet_sketch imagenet_a imagenet_r; do
    bash "$HERE/xd_test.sh" "$DATA" "$DATASET" "$SEED" "$@"
done
