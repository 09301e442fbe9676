# shellcheck shell=bash
# Helpers shared by scripts/aple/*.sh (sourced). Every script runs from the repository root:
#     bash scripts/aple/base2new.sh /path/to/DATA oxford_pets 1
#
# Environment:
#   CFG       config name in configs/trainers/APLe/ (default: the protocol's config, see each script)
#   LOADEP    epoch loaded for evaluation (default: OPTIM.MAX_EPOCH read from the config file)
#   OUTPUT    output root (default: output)
#   PYTHON    interpreter (default: python)
#   DRY_RUN=1 print the train.py commands instead of running them
# Arguments after the positional ones go to train.py as config options, e.g. TRAINER.APLE.ADAPTER reference_code.

TRAINER=APLe
PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-output}
XD_SHOTS=16

# the ten cross-dataset targets and the four domain-generalisation targets
XD_TARGETS=(caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101)
DG_TARGETS=(imagenetv2 imagenet_sketch imagenet_a imagenet_r)

aple_die() {
    echo "Error: $*" >&2
    exit 2
}

aple_check_root() {
    [[ -f train.py && -d configs/trainers/APLe && -d configs/datasets ]] ||
        aple_die "run from the repository root (where train.py is): bash scripts/aple/$(basename "$0") ..."
}

aple_check_seed() {
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || aple_die "SEED must be a positive integer, got '$1'"
}

aple_cfg_file() {
    local f="configs/trainers/APLe/$1.yaml"
    [[ -f "$f" ]] || aple_die "no config $f (available: $(ls configs/trainers/APLe | sed 's/\.yaml$//' | tr '\n' ' '))"
    echo "$f"
}

aple_dataset_file() {
    local f="configs/datasets/$1.yaml"
    [[ -f "$f" ]] || aple_die "unknown dataset '$1' (no $f)"
    echo "$f"
}

# aple_load_epoch CFG_FILE: $LOADEP, else the config's OPTIM.MAX_EPOCH
aple_load_epoch() {
    if [[ -n "${LOADEP:-}" ]]; then
        echo "$LOADEP"
        return
    fi
    local ep
    ep=$(awk '$1 == "MAX_EPOCH:" {print $2; exit}' "$1")
    [[ "$ep" =~ ^[0-9]+$ ]] || aple_die "cannot read OPTIM.MAX_EPOCH from $1; set LOADEP"
    echo "$ep"
}

# aple_done DIR: true (and a note) when DIR already holds results.json
aple_done() {
    if [[ -f "$1/results.json" ]]; then
        echo "Results exist at $1 (skip this job)"
        return 0
    fi
    return 1
}

# aple_need_model DIR HINT: the model to evaluate must exist (not checked with DRY_RUN=1)
aple_need_model() {
    [[ "${DRY_RUN:-0}" == "1" || -d "$1" ]] || aple_die "no trained model at $1; $2"
}

# aple_train ARGS...: python train.py --trainer APLe ARGS... (or print it with DRY_RUN=1)
aple_train() {
    local cmd=("$PYTHON" train.py --trainer "$TRAINER" "$@")
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        printf '%q ' "${cmd[@]}"
        echo
    else
        "${cmd[@]}"
    fi
}
