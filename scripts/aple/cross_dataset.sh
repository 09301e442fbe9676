#!/usr/bin/env bash
# APLe cross-dataset transfer for one seed: train on ImageNet (if not done yet), then evaluate that
# model on the ten other datasets.
# usage: bash scripts/aple/cross_dataset.sh DATA SEED [config options...]
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/common.sh"
[[ $# -ge 2 ]] || aple_die "usage: bash scripts/aple/cross_dataset.sh DATA SEED [config options...]"
DATA=$1 SEED=$2
shift 2
bash "$HERE/xd_train.sh" "$DATA" "$SEED" "$@"
for d in "${XD_TARGETS[@]}"; do
    bash "$HERE/xd_test.sh" "$DATA" "$d" "$SEED" "$@"
done
