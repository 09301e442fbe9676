#!/usr/bin/env bash
# Base-to-novel, step 2: evaluate the base-class model (base2new_train.sh) on the new classes.
# usage: bash scripts/mudpt/base2new_test.sh DATA DATASET SEED [config options...]
# output: output/base2new/test_new/DATASET/shots_16/$TRAINER/$CFG/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 3 ]] || die "usage: bash scripts/mudpt/base2new_test.sh DATA DATASET SEED [config options...]"
DATA=$1
DATASET=$2
SEED=$3
shift 3
CFG=${CFG:-vit_b16_bz4_ep10_nctx4_depth9}
require_repo_root
check_seed "$SEED"
CFG_FILE=$(cfg_file "$CFG")
DATASET_FILE=$(dataset_file "$DATASET")
LOAD=$(load_epoch "$CFG_FILE")

COMMON_DIR=${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
MODEL_DIR=output/base2new/train_base/${COMMON_DIR}
DIR=output/base2new/test_new/${COMMON_DIR}
if finished "$DIR"; then
    echo "Results exist at ${DIR} (skip this job)"
    exit 0
fi
require_model_dir "$MODEL_DIR" "run scripts/mudpt/base2new_train.sh $DATA $DATASET $SEED first"
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
    DATASET.NUM_SHOTS "$SHOTS" \
    DATASET.SUBSAMPLE_CLASSES new \
    "$@"
