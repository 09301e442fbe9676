# shellcheck shell=bash
# Shared settings and helpers for scripts/mudpt/*.sh (sourced, not run). Run the scripts from the
# repository root, e.g.  bash scripts/mudpt/base2new_train.sh /path/to/DATA oxford_pets 1
#
# Environment overrides:
#   TRAINER   MuDPT (default) or UMuDPT (then set CFG=vit_b16_bz4_ep5_nctx2_depth9)
#   CFG       config name under configs/trainers/$TRAINER/ (each script has its protocol's default)
#   LOADEP    epoch to load for evaluation (default: OPTIM.MAX_EPOCH of the config file)
#   PYTHON    python interpreter (default: python)
#   DRY_RUN=1 print the train.py commands instead of running them
# Extra arguments after the positional ones are passed to train.py as config options
# (e.g. TRAINER.MUDPT.PREC amp).

TRAINER=${TRAINER:-MuDPT}
PYTHON=${PYTHON:-python}
SHOTS=16

die() {
    echo "Error: $*" >&2
    exit 2
}

require_repo_root() {
    if [[ ! -f train.py || ! -d configs/trainers || ! -d configs/datasets ]]; then
        die "run this script from the repository root (the folder holding train.py), e.g. bash scripts/mudpt/$(basename "$0") ..."
    fi
}

# cfg_file CFG -> path of the method config (checked)
cfg_file() {
    local f="configs/trainers/${TRAINER}/$1.yaml"
    [[ -f "$f" ]] || die "config file not found: $f (set CFG to a file in configs/trainers/${TRAINER}/)"
    echo "$f"
}

# dataset_file DATASET -> path of the dataset config (checked)
dataset_file() {
    local f="configs/datasets/$1.yaml"
    [[ -f "$f" ]] || die "unknown dataset '$1': $f not found (datasets: $(cd configs/datasets && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' '))"
    echo "$f"
}

# load_epoch CFG_FILE -> $LOADEP or the config's OPTIM.MAX_EPOCH
load_epoch() {
    if [[ -n "${LOADEP:-}" ]]; then
        echo "$LOADEP"
        return
    fi
    local ep
    ep=$(awk '$1 == "MAX_EPOCH:" {print $2; exit}' "$1")
    [[ -n "$ep" ]] || die "cannot read OPTIM.MAX_EPOCH from $1; set LOADEP"
    echo "$ep"
}

check_seed() {
    [[ "$1" =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer, got '$1'"
}

# finished DIR -> true when DIR holds a finished run (results.json)
finished() {
    [[ -f "$1/results.json" ]]
}

# require_model_dir DIR HINT -> error unless DIR holds a trained model (skipped with DRY_RUN=1)
require_model_dir() {
    if [[ "${DRY_RUN:-0}" != "1" && ! -d "$1" ]]; then
        die "no trained model at $1; $2"
    fi
}

# run CMD... -> run it, or print it with DRY_RUN=1
run() {
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}
