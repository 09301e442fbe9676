#!/usr/bin/env bash
# APLe base-to-novel, step 1: train on the base classes (16 shots); the run ends with the base-class test.
# usage: bash scripts/aple/base2new_train.sh DATA DATASET SEED [config options...]
# output: $OUTPUT/base2new/train_base/DATASET/shots_16/APLe/$CFG/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 3 ]] || aple_die "usage: bash scripts/aple/base2new_train.sh DATA DATASET SEED [config options...]"
DATA=$1 DATASET=$2 SEED=$3
shift 3
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx}
SHOTS=16
aple_check_root
aple_check_seed "$SEED"
CFG_FILE=$(aple_cfg_file "$CFG")
DATASET_FILE=$(aple_dataset_file "$DATASET")

DIR=$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED
aple_done "$DIR" && exit 0
aple_train --root "$DATA" --seed "$SEED" \
    --dataset-config-file "$DATASET_FILE" --config-file "$CFG_FILE" --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
