#!/usr/bin/env bash
# APLe domain generalisation for one seed: the ImageNet model of the cross-dataset protocol (trained
# here if missing) evaluated on ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R (A and R
# rebuild the prompts for their 200-class subsets).
# usage: bash scripts/aple/domain_generalization.sh DATA SEED [config options...]
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/common.sh"
[[ $# -ge 2 ]] || aple_die "usage: bash scripts/aple/domain_generalization.sh DATA SEED [config options...]"
DATA=$1 SEED=$2
shift 2
bash "$HERE/xd_train.sh" "$DATA" "$SEED" "$@"
for d in "${DG_TARGETS[@]}"; do
    bash "$HERE/xd_test.sh" "$DATA" "$d" "$SEED" "$@"
done
