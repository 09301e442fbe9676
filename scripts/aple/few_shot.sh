#!/usr/bin/env bash
# APLe few-shot classification (all classes) on one dataset and seed, for 1, 2, 4, 8 and 16 shots
# (or the shot counts in $SHOTS_LIST, e.g. SHOTS_LIST="1 16").
# usage: bash scripts/aple/few_shot.sh DATA DATASET SEED [config options...]
# output: $OUTPUT/few_shot/DATASET/APLe/$CFG/shots_K/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 3 ]] || aple_die "usage: bash scripts/aple/few_shot.sh DATA DATASET SEED [config options...]"
DATA=$1 DATASET=$2 SEED=$3
shift 3
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_fewshot}
read -r -a SHOTS <<< "${SHOTS_LIST:-1 2 4 8 16}"
aple_check_root
aple_check_seed "$SEED"
CFG_FILE=$(aple_cfg_file "$CFG")
DATASET_FILE=$(aple_dataset_file "$DATASET")

for K in "${SHOTS[@]}"; do
    [[ "$K" =~ ^[1-9][0-9]*$ ]] || aple_die "shot counts must be positive integers, got '$K'"
    DIR=$OUTPUT/few_shot/$DATASET/$TRAINER/$CFG/shots_$K/seed$SEED
    aple_done "$DIR" && continue
    aple_train --root "$DATA" --seed "$SEED" \
        --dataset-config-file "$DATASET_FILE" --config-file "$CFG_FILE" --output-dir "$DIR" \
        DATASET.NUM_SHOTS "$K" "$@"
done
