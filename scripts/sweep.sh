#!/usr/bin/env bash
# Thin wrapper around `python -m vlprompt.sweep` (run from the repository root).
#
#   DATA=/path/to/data bash scripts/sweep.sh --methods CoOp MaPLe --protocol base2new [options...]
#
# Environment:
#   DATA     data root, passed as --root (or give --root yourself)
#   GPUS     GPU ids, e.g. 0,1,2,3 (one job per GPU); unset: --jobs 1, or give --gpus/--jobs yourself
#   OUTPUT   output root (default: output)
#   PYTHON   interpreter (default: python)
# Every other option of `python -m vlprompt.sweep --help` is passed through (e.g. --dry-run, --slurm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f train.py ]] || { echo "Error: $(pwd)/train.py not found; scripts/ must stay in the repository" >&2; exit 2; }
args=()
[[ -n "${DATA:-}" ]] && args+=(--root "$DATA")
[[ -n "${GPUS:-}" ]] && args+=(--gpus "$GPUS")
[[ -n "${OUTPUT:-}" ]] && args+=(--output-root "$OUTPUT")
exec "${PYTHON:-python}" -m vlprompt.sweep ${args[@]+"${args[@]}"} "$@"
