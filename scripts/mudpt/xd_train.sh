#!/usr/bin/env bash
# Cross-dataset / domain generalisation, step 1: train on ImageNet (16 shots, all 1000 classes).
# usage: bash scripts/mudpt/xd_train.sh DATA SEED [config options...]
# output: output/imagenet/$TRAINER/${CFG}_16shots/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 2 ]] || die "usage: bash scripts/mudpt/xd_train.sh DATA SEED [config options...]"
DATA=$1
SEED=$2
shift 2
CFG=${CFG:-vit_b16_bz4_ep10_nctx4_depth9_cross_datasets}
require_repo_root
check_seed "$SEED"
CFG_FILE=$(cfg_file "$CFG")
DATASET_FILE=$(dataset_file imagenet)

DIR=output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}
if finished "$DIR"; then
    echo "Results exist at ${DIR} (skip this job)"
    exit 0
fi
run "$PYTHON" train.py \
    --root "$DATA" \
    --seed "$SEED" \
    --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_FILE" \
    --config-file "$CFG_FILE" \
    --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$SHOTS" \
    "$@"
