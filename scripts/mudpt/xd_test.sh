#!/usr/bin/env bash
# Cross-dataset / domain generalisation, step 2: evaluate the ImageNet model (xd_train.sh) on DATASET
# (full test split, all classes). Every target loads the *ImageNet* model; the official script's bug
# of loading each target dataset's own model is not reproduced.
# usage: bash scripts/mudpt/xd_test.sh DATA DATASET SEED [config options...]
# output: output/evaluation/$TRAINER/${CFG}_16shots/DATASET/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 3 ]] || die "usage: bash scripts/mudpt/xd_test.sh DATA DATASET SEED [config options...]"
DATA=$1
DATASET=$2
SEED=$3
shift 3
CFG=${CFG:-vit_b16_bz4_ep10_nctx4_depth9_cross_datasets}
require_repo_root
check_seed "$SEED"
CFG_FILE=$(cfg_file "$CFG")
DATASET_FILE=$(dataset_file "$DATASET")
LOAD=$(load_epoch "$CFG_FILE")

MODEL_DIR=output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}
DIR=output/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${DATASET}/seed${SEED}
if finished "$DIR"; then
    echo "Results exist at ${DIR} (skip this job)"
    exit 0
fi
require_model_dir "$MODEL_DIR" "run scripts/mudpt/xd_train.sh $DATA $SEED first"
run "$PYTHON" train.py \
    --root "$DATA" \
    --seed "$SEED" \
    --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_FILE" \
    --config-file "$CFG_FILE" \
    --output-dir "$DIR" \
    --model-dir "$MODEL_DIR" \
    --load-epoch "$LOAD" \
    --eval-only \
    "$@"
