#!/usr/bin/env bash
# Few-shot classification on all classes with 1, 2, 4, 8 and 16 shots (or the SHOTS_LIST given), each
# with the same 10-epoch config, as the official scripts do.
# usage: bash scripts/mudpt/few_shot.sh DATA DATASET SEED [config options...]
#        SHOTS_LIST="4 16" bash scripts/mudpt/few_shot.sh DATA DATASET SEED
# output: output/few_shot/DATASET/$TRAINER/$CFG/shots_K/seedSEED
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ $# -ge 3 ]] || die "usage: bash scripts/mudpt/few_shot.sh DATA DATASET SEED [config options...]"
DATA=$1
DATASET=$2
SEED=$3
shift 3
CFG=${CFG:-vit_b16_bz4_ep10_nctx4_depth9}
SHOTS_LIST=${SHOTS_LIST:-1 2 4 8 16}
require_repo_root
check_seed "$SEED"
CFG_FILE=$(cfg_file "$CFG")
DATASET_FILE=$(dataset_file "$DATASET")

for K in $SHOTS_LIST; do
    [[ "$K" =~ ^[1-9][0-9]*$ ]] || die "shot counts must be positive integers, got '$K'"
    DIR=output/few_shot/${DATASET}/${TRAINER}/${CFG}/shots_${K}/seed${SEED}
    if finished "$DIR"; then
        echo "Results exist at ${DIR} (skip this job)"
        continue
    fi
    run "$PYTHON" train.py \
        --root "$DATA" \
        --seed "$SEED" \
        --trainer "$TRAINER" \
        --dataset-config-file "$DATASET_FILE" \
        --config-file "$CFG_FILE" \
        --output-dir "$DIR" \
        DATASET.NUM_SHOTS "$K" \
        "$@"
done
