#!/usr/bin/env bash
# APLe cross-dataset / domain generalisation, step 2: evaluate the *ImageNet* model (xd_train.sh) on
# DATASET (its full test split, all classes; never a model trained on DATASET itself).
# usage: bash scripts/aple/xd_test.sh DATA DATASET SEED [config options...]
# output: $OUTPUT/evaluation/APLe/${CFG}_16shots/DATASET/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 3 ]] || aple_die "usage: bash scripts/aple/xd_test.sh DATA DATASET SEED [config options...]"
DATA=$1 DATASET=$2 SEED=$3
shift 3
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets}
aple_check_root
aple_check_seed "$SEED"
[[ "$DATASET" != imagenet ]] || aple_die "imagenet is the source dataset; its test is part of xd_train.sh"
CFG_FILE=$(aple_cfg_file "$CFG")
DATASET_FILE=$(aple_dataset_file "$DATASET")
LOAD=$(aple_load_epoch "$CFG_FILE")

MODEL_DIR=$OUTPUT/imagenet/$TRAINER/${CFG}_${XD_SHOTS}shots/seed$SEED
DIR=$OUTPUT/evaluation/$TRAINER/${CFG}_${XD_SHOTS}shots/$DATASET/seed$SEED
aple_done "$DIR" && exit 0
aple_need_model "$MODEL_DIR" "run scripts/aple/xd_train.sh $DATA $SEED first"
aple_train --root "$DATA" --seed "$SEED" \
    --dataset-config-file "$DATASET_FILE" --config-file "$CFG_FILE" --output-dir "$DIR" \
    --model-dir "$MODEL_DIR" --load-epoch "$LOAD" --eval-only "$@"
