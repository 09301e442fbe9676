#!/usr/bin/env bash
# Cross-dataset: train on ImageNet (16 shots, all classes), test on the 10 other datasets;
# seeds 1 2 3. Completed runs (results.json present) are skipped, so re-running resumes.
#
#   DATA=/path/to/data [GPUS=0,1] bash scripts/cross_dataset.sh METHOD [CONFIG] [sweep options...]
#
# METHOD is a registered trainer (APLe, MuDPT, CoOp, CoCoOp, MaPLe, IVLP, VPT, ZeroshotCLIP, ...); CONFIG a
# file name in configs/trainers/METHOD/ without .yaml (default: the protocol's config that the trainer
# declares in its RECIPES). Options such as --datasets, --seeds, --dry-run or --slurm are passed to
# python -m vlprompt.sweep (see scripts/sweep.sh for DATA, GPUS, OUTPUT, PYTHON).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/sweep_wrapper.sh"
sweep_protocol cross_dataset "$@"
