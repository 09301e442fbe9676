#!/usr/bin/env bash
# APLe cross-dataset / domain generalisation, step 1: train on ImageNet (16 shots, all 1000 classes).
# usage: bash scripts/aple/xd_train.sh DATA SEED [config options...]
# output: $OUTPUT/imagenet/APLe/${CFG}_16shots/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 2 ]] || aple_die "usage: bash scripts/aple/xd_train.sh DATA SEED [config options...]"
DATA=$1 SEED=$2
shift 2
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets}
aple_check_root
aple_check_seed "$SEED"
CFG_FILE=$(aple_cfg_file "$CFG")
DATASET_FILE=$(aple_dataset_file imagenet)

DIR=$OUTPUT/imagenet/$TRAINER/${CFG}_${XD_SHOTS}shots/seed$SEED
aple_done "$DIR" && exit 0
aple_train --root "$DATA" --seed "$SEED" \
    --dataset-config-file "$DATASET_FILE" --config-file "$CFG_FILE" --output-dir "$DIR" \
    DATASET.NUM_SHOTS "$XD_SHOTS" "$@"
