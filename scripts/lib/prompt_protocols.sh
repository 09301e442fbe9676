# shellcheck shell=bash
# The evaluation protocols of the CoOp family as bash functions, shared by the per-method folders
# scripts/{coop,cocoop,maple,ivlp,vpt,aple,mudpt}/ (sourced, not run). Each method folder has a
# config.sh, sourced before this file, that sets TRAINER and three functions choosing the config name
# for a protocol:
#   cfg_base2new DATASET      cfg_xd      cfg_few_shot DATASET SHOTS
# and optionally
#   cfg_prompt_length N       config of the prompt-length ablation (prompt_length below)
#   OUTPUT_ROOT               output root (default: output; APLe's config sets it from $OUTPUT)
#   SEED_MIN                  smallest accepted seed (default 0; APLe's config sets 1)
#   XD_SOURCE_TEST=refuse     xd_test refuses the source dataset (imagenet; its test is xd_train's)
#
# Output tree (CoOp / MaPLe layout), under OUTPUT_ROOT:
#   base-to-novel  output/base2new/train_base/DATASET/shots_16/TRAINER/CFG/seedS   (train, base test)
#                  output/base2new/test_new/DATASET/shots_16/TRAINER/CFG/seedS     (--eval-only, new)
#   ImageNet       output/imagenet/TRAINER/CFG_16shots/seedS                       (XD / DG source)
#   XD / DG        output/evaluation/TRAINER/CFG_16shots/DATASET/seedS             (--eval-only)
#   few-shot       output/few_shot/DATASET/TRAINER/CFG/shots_K/seedS
# A run whose folder holds results.json is skipped.
#
# Environment overrides:
#   CFG        config name under configs/trainers/$TRAINER/ (else the protocol's default)
#   LOADEP     epoch to load for evaluation (default: OPTIM.MAX_EPOCH of the config file, which is
#              the epoch the training run saved last)
#   SHOTS_LIST shot counts for few_shot (default "1 2 4 8 16")
#   NCTX_LIST  prompt lengths for prompt_length (default "2 4 8 16")
#   PYTHON     python interpreter (default: python)
#   DRY_RUN=1  print the train.py commands instead of running them
# Arguments after the positional ones are passed to train.py as config options.

PYTHON=${PYTHON:-python}
SHOTS=16
OUTPUT_ROOT=${OUTPUT_ROOT:-output}
SEED_MIN=${SEED_MIN:-0}
XD_SOURCE_TEST=${XD_SOURCE_TEST:-allow}
XD_TARGETS="caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
DG_TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"
# the script as the user runs it, e.g. scripts/maple/base2new.sh (for messages)
SCRIPT=scripts/$(basename "$(dirname "$0")")/$(basename "$0")

die() {
    echo "Error: $*" >&2
    exit 2
}

require_repo_root() {
    if [[ ! -f train.py || ! -d configs/trainers || ! -d configs/datasets ]]; then
        die "run this script from the repository root (the folder holding train.py), e.g. bash $SCRIPT ..."
    fi
}

cfg_file() {
    local f="configs/trainers/${TRAINER}/$1.yaml"
    [[ -f "$f" ]] || die "config file not found: $f (configs of ${TRAINER}: $(cd "configs/trainers/${TRAINER}" 2>/dev/null && ls ./*.yaml 2>/dev/null | sed 's#^\./##; s/\.yaml$//' | tr '\n' ' '))"
    echo "$f"
}

dataset_file() {
    local f="configs/datasets/$1.yaml"
    [[ -f "$f" ]] || die "unknown dataset '$1': $f not found (datasets: $(cd configs/datasets && ls ./*.yaml | sed 's#^\./##; s/\.yaml$//' | tr '\n' ' '))"
    echo "$f"
}

load_epoch() {
    if [[ -n "${LOADEP:-}" ]]; then
        echo "$LOADEP"
        return
    fi
    local ep
    ep=$(awk '$1 == "MAX_EPOCH:" {print $2; exit}' "$1")
    [[ "$ep" =~ ^[0-9]+$ ]] || die "cannot read OPTIM.MAX_EPOCH from $1; set LOADEP"
    echo "$ep"
}

check_args() {
    # check_args N ARGS "$@": at least N positional arguments (named ARGS), the last of them a seed
    local n=$1 usage="bash $SCRIPT $2 [config options...]"
    shift 2
    [[ $# -ge $n ]] || die "usage: $usage"
    local seed=${!n}
    if [[ "$SEED_MIN" -ge 1 ]]; then
        [[ "$seed" =~ ^[1-9][0-9]*$ ]] || die "SEED must be a positive integer, got '$seed' (usage: $usage)"
    else
        [[ "$seed" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$seed' (usage: $usage)"
    fi
}

# positive_int WHAT VALUE: VALUE is a positive integer
positive_int() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be positive integers, got '$2'"
}

finished() {
    [[ -f "$1/results.json" ]]
}

require_model_dir() {
    if [[ "${DRY_RUN:-0}" != "1" && ! -d "$1" ]]; then
        die "no trained model at $1; $2"
    fi
}

run() {
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}

skip_note() {
    echo "Results exist at $1 (skip this job)"
}

# base2new_train DATA DATASET SEED [opts...]: train on the base classes (16 shots), test on base.
base2new_train() {
    check_args 3 "DATA DATASET SEED" "$@"
    local data=$1 dataset=$2 seed=$3
    shift 3
    require_repo_root
    local cfg cfg_path ds_path dir
    cfg=${CFG:-$(cfg_base2new "$dataset")}
    cfg_path=$(cfg_file "$cfg")
    ds_path=$(dataset_file "$dataset")
    dir=${OUTPUT_ROOT}/base2new/train_base/${dataset}/shots_${SHOTS}/${TRAINER}/${cfg}/seed${seed}
    if finished "$dir"; then skip_note "$dir"; return 0; fi
    run "$PYTHON" train.py --root "$data" --seed "$seed" --trainer "$TRAINER" \
        --dataset-config-file "$ds_path" --config-file "$cfg_path" --output-dir "$dir" \
        DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
}

# base2new_test DATA DATASET SEED [opts...]: evaluate the base-class model on the new classes.
base2new_test() {
    check_args 3 "DATA DATASET SEED" "$@"
    local data=$1 dataset=$2 seed=$3
    shift 3
    require_repo_root
    local cfg cfg_path ds_path tail model_dir dir
    cfg=${CFG:-$(cfg_base2new "$dataset")}
    cfg_path=$(cfg_file "$cfg")
    ds_path=$(dataset_file "$dataset")
    tail=${dataset}/shots_${SHOTS}/${TRAINER}/${cfg}/seed${seed}
    model_dir=${OUTPUT_ROOT}/base2new/train_base/${tail}
    dir=${OUTPUT_ROOT}/base2new/test_new/${tail}
    if finished "$dir"; then skip_note "$dir"; return 0; fi
    require_model_dir "$model_dir" "run ${SCRIPT%/*}/base2new_train.sh $data $dataset $seed first"
    run "$PYTHON" train.py --root "$data" --seed "$seed" --trainer "$TRAINER" \
        --dataset-config-file "$ds_path" --config-file "$cfg_path" --output-dir "$dir" \
        --model-dir "$model_dir" --load-epoch "$(load_epoch "$cfg_path")" --eval-only \
        DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new "$@"
}

# xd_train DATA SEED [opts...]: train on ImageNet, 16 shots, all 1000 classes (XD / DG source model).
xd_train() {
    check_args 2 "DATA SEED" "$@"
    local data=$1 seed=$2
    shift 2
    require_repo_root
    local cfg cfg_path ds_path dir
    cfg=${CFG:-$(cfg_xd)}
    cfg_path=$(cfg_file "$cfg")
    ds_path=$(dataset_file imagenet)
    dir=${OUTPUT_ROOT}/imagenet/${TRAINER}/${cfg}_${SHOTS}shots/seed${seed}
    if finished "$dir"; then skip_note "$dir"; return 0; fi
    run "$PYTHON" train.py --root "$data" --seed "$seed" --trainer "$TRAINER" \
        --dataset-config-file "$ds_path" --config-file "$cfg_path" --output-dir "$dir" \
        DATASET.NUM_SHOTS "$SHOTS" "$@"
}

# xd_test DATA DATASET SEED [opts...]: evaluate the ImageNet model on DATASET (full test split).
xd_test() {
    check_args 3 "DATA DATASET SEED" "$@"
    local data=$1 dataset=$2 seed=$3
    shift 3
    require_repo_root
    local cfg cfg_path ds_path model_dir dir
    if [[ "$XD_SOURCE_TEST" == refuse && "$dataset" == imagenet ]]; then
        die "imagenet is the source dataset; its test is part of xd_train.sh"
    fi
    cfg=${CFG:-$(cfg_xd)}
    cfg_path=$(cfg_file "$cfg")
    ds_path=$(dataset_file "$dataset")
    model_dir=${OUTPUT_ROOT}/imagenet/${TRAINER}/${cfg}_${SHOTS}shots/seed${seed}
    dir=${OUTPUT_ROOT}/evaluation/${TRAINER}/${cfg}_${SHOTS}shots/${dataset}/seed${seed}
    if finished "$dir"; then skip_note "$dir"; return 0; fi
    require_model_dir "$model_dir" "run ${SCRIPT%/*}/xd_train.sh $data $seed first"
    run "$PYTHON" train.py --root "$data" --seed "$seed" --trainer "$TRAINER" \
        --dataset-config-file "$ds_path" --config-file "$cfg_path" --output-dir "$dir" \
        --model-dir "$model_dir" --load-epoch "$(load_epoch "$cfg_path")" --eval-only "$@"
}

# xd_protocol "TARGETS" DATA SEED [opts...]: xd_train, then xd_test on each dataset of TARGETS.
xd_protocol() {
    local targets=$1
    shift
    check_args 2 "DATA SEED" "$@"
    local data=$1 seed=$2
    shift 2
    xd_train "$data" "$seed" "$@"
    local ds
    for ds in $targets; do
        xd_test "$data" "$ds" "$seed" "$@"
    done
}

# cross_dataset DATA SEED [opts...]: xd_train, then xd_test on the 10 other datasets.
cross_dataset() { xd_protocol "$XD_TARGETS" "$@"; }

# domain_generalization DATA SEED [opts...]: xd_train, then xd_test on the 4 ImageNet variants.
domain_generalization() { xd_protocol "$DG_TARGETS" "$@"; }

# few_shot DATA DATASET SEED [opts...]: all classes, K shots for K in $SHOTS_LIST.
few_shot() {
    check_args 3 "DATA DATASET SEED" "$@"
    local data=$1 dataset=$2 seed=$3
    shift 3
    require_repo_root
    local ds_path shots k cfg cfg_path dir
    ds_path=$(dataset_file "$dataset")
    read -r -a shots <<< "${SHOTS_LIST:-1 2 4 8 16}"
    for k in ${shots[@]+"${shots[@]}"}; do
        positive_int "shot counts" "$k"
        cfg=${CFG:-$(cfg_few_shot "$dataset" "$k")}
        cfg_path=$(cfg_file "$cfg")
        dir=${OUTPUT_ROOT}/few_shot/${dataset}/${TRAINER}/${cfg}/shots_${k}/seed${seed}
        if finished "$dir"; then skip_note "$dir"; continue; fi
        run "$PYTHON" train.py --root "$data" --seed "$seed" --trainer "$TRAINER" \
            --dataset-config-file "$ds_path" --config-file "$cfg_path" --output-dir "$dir" \
            DATASET.NUM_SHOTS "$k" "$@"
    done
}

# base2new DATA DATASET SEED [opts...]: both steps.
base2new() {
    check_args 3 "DATA DATASET SEED" "$@"
    base2new_train "$@"
    base2new_test "$@"
}

# prompt_length DATA DATASET SEED [opts...]: base2new once per prompt length N in $NCTX_LIST, with
# the config cfg_prompt_length N (from the method's config.sh; CFG does not apply).
prompt_length() {
    check_args 3 "DATA DATASET SEED" "$@"
    require_repo_root
    declare -F cfg_prompt_length > /dev/null || die "${TRAINER} has no prompt-length configs (no cfg_prompt_length in its config.sh)"
    local nctx n CFG
    read -r -a nctx <<< "${NCTX_LIST:-2 4 8 16}"
    for n in ${nctx[@]+"${nctx[@]}"}; do
        positive_int "prompt lengths" "$n"
        CFG=$(cfg_prompt_length "$n")
        cfg_file "$CFG" > /dev/null
        base2new "$@"
    done
}
