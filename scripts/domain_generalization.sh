#!/usr/bin/env bash
# Domain generalisation: train on ImageNet (16 shots), test on ImageNet-V2/-Sketch/-A/-R;
# seeds 1 2 3. Completed runs (results.json present) are skipped, so re-running resumes.
#
#   DATA=/path/to/data [GPUS=0,1] bash scripts/domain_generalization.sh METHOD [CONFIG] [sweep options...]
#
# METHOD is a registered trainer (APLe, MuDPT, CoOp, CoCoOp, MaPLe, IVLP, VPT, ZeroshotCLIP, ...); CONFIG a
# file name in configs/trainers/METHOD/ without .yaml (default: the protocol's config that the trainer
# declares in its RECIPES). Options such as --datasets, --seeds, --dry-run or --slurm are passed to
# python -m vlprompt.sweep (see scripts/sweep.sh for DATA, GPUS, OUTPUT, PYTHON).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/sweep_wrapper.sh"
sweep_protocol domain_generalization "$@"
