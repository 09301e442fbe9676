#!/usr/bin/env bash
# One method under one protocol: the generic entry behind every per-method script.
#
#   bash scripts/run.sh METHOD PROTOCOL DATA [DATASET|all] [SEED...] [--] [config options...]
#
# METHOD    a trainer (CoOp, MaPLe, APLe, ...), TRAINER:CONFIG for another config of
#           configs/trainers/TRAINER/, or several of them separated by commas
# PROTOCOL  base2new, cross_dataset, domain_generalization, few_shot, or one step of them:
#           base2new_train, base2new_test (base2new without its tests / only its tests),
#           xd_train (the ImageNet source run), xd_test (tests of the source model on DATASET)
# DATA      the data root (train.py --root)
# DATASET   a dataset yaml name (or several, comma-separated; default all: the protocol's list)
# SEED      one or more seeds (default 1 2 3)
# options   KEY VALUE pairs for train.py; they name the run's config folder (<cfg>_<key><value>), so
#           a variant never reuses the default run's folder, and OPTIM.MAX_EPOCH sets the load epoch
#
# The runs, their folders (the CoOp/MaPLe output tree), the default config of each protocol (the
# trainer's RECIPES) and the load epochs come from `python -m vlprompt.sweep`; this script only maps
# its arguments. Finished runs (results.json present) are skipped. Environment:
#   CFG=NAME        config name for METHOD (as METHOD:NAME)
#   OUTPUT=DIR      output root (default: output)
#   DRY_RUN=1       print the train.py commands of the runs still to do, run nothing
#   SHOTS_LIST="1 2 4 8 16"  few-shot shot counts
#   LOADEP=E        epoch the tests load (default: OPTIM.MAX_EPOCH of the options, else of the config)
#   FS_BACKBONE=rn50  few_shot with the recipe's configs on another backbone (vit_b16_* -> rn50_*)
#   BACKBONES="ViT-B/16 ViT-B-16-SigLIP@webli"  run on each backbone (NAME[@TAG]; the sweep's --backbones)
#   GPUS=0,1        one job per GPU (default: one job at a time)
#   PYTHON          interpreter (default: python)
#   SWEEP_OPTS      further options of python -m vlprompt.sweep, e.g. "--jobs 2" or "--slurm ..."
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")

die() {
    echo "Error: $*" >&2
    exit 2
}

if [[ $# -lt 3 ]]; then
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$HERE/run.sh" >&2
    exit 2
fi
method=$1 protocol=$2 data=$3
shift 3
IFS=, read -r -a methods <<< "$method"
if [[ -n "${CFG:-}" ]]; then
    [[ ${#methods[@]} -eq 1 ]] || die "CFG=$CFG needs a single METHOD, got $method"
    methods=("${methods[0]%%:*}:$CFG")
fi
only=()
case "$protocol" in
    base2new | cross_dataset | domain_generalization | few_shot) protocols=("$protocol") ;;
    base2new_train) protocols=(base2new) only=(--only train) ;;
    base2new_test) protocols=(base2new) only=(--only test) ;;
    xd_train) protocols=(cross_dataset) only=(--only train) ;;
    xd_test) protocols=(cross_dataset domain_generalization) only=(--only test) ;;
    *) die "unknown protocol '$protocol' (base2new, cross_dataset, domain_generalization, few_shot; steps:" \
        "base2new_train, base2new_test, xd_train, xd_test)" ;;
esac

args=(--methods "${methods[@]}" --protocol "${protocols[@]}" --root "$data" --output-root "${OUTPUT:-output}")
args+=(--repo-root "$REPO" ${only[@]+"${only[@]}"})
# DATASET: a lower-case yaml name (or a comma-separated list, or all), never a seed or a config key
if [[ $# -gt 0 && "$1" =~ ^[a-z0-9_,]+$ && ! "$1" =~ ^[0-9]+$ ]]; then
    if [[ "$1" != all ]]; then
        IFS=, read -r -a datasets <<< "$1"
        args+=(--datasets "${datasets[@]}")
    fi
    shift
fi
seeds=()
while [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; do
    seeds+=("$1")
    shift
done
[[ ${#seeds[@]} -eq 0 ]] || args+=(--seeds "${seeds[@]}")
if [[ $# -gt 0 && "$1" == -- ]]; then shift; fi
if [[ $# -gt 0 ]]; then
    [[ "$1" == *.* || "$1" =~ ^[A-Z_]+$ ]] || die "expected config options (KEY VALUE ...) after the seeds, got '$1'"
    (( $# % 2 == 0 )) || die "config options must be KEY VALUE pairs, got: $*"
    args+=(--opts "$@")
fi
[[ -z "${SHOTS_LIST:-}" ]] || { read -r -a shots <<< "$SHOTS_LIST"; args+=(--shots "${shots[@]}"); }
[[ -z "${LOADEP:-}" ]] || args+=(--load-epoch "$LOADEP")
[[ -z "${FS_BACKBONE:-}" || "$protocol" != few_shot ]] || args+=(--backbone "$FS_BACKBONE")
[[ -z "${BACKBONES:-}" ]] || { read -r -a bbs <<< "$BACKBONES"; args+=(--backbones "${bbs[@]}"); }
[[ -z "${GPUS:-}" ]] || args+=(--gpus "$GPUS")
[[ "${DRY_RUN:-0}" != 1 ]] || args+=(--print-commands)
# shellcheck disable=SC2206
[[ -z "${SWEEP_OPTS:-}" ]] || args+=(${SWEEP_OPTS})
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m vlprompt.sweep "${args[@]}"
