#!/usr/bin/env bash
# Few-shot: 1/2/4/8/16 shots on the 11 datasets, all classes (--shots to choose);
# seeds 1 2 3. Completed runs (results.json present) are skipped, so re-running resumes.
#
#   DATA=/path/to/data [GPUS=0,1] bash scripts/few_shot.sh METHOD [CONFIG] [sweep options...]
#
# METHOD is a registered trainer (APLe, MuDPT, CoOp, CoCoOp, MaPLe, IVLP, VPT, ZeroshotCLIP, ...); CONFIG a
# file name in configs/trainers/METHOD/ without .yaml (default: the protocol's config that the trainer
# declares in its RECIPES). Options such as --datasets, --seeds, --dry-run or --slurm are passed to
# python -m vlprompt.sweep (see scripts/sweep.sh for DATA, GPUS, OUTPUT, PYTHON).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/sweep_wrapper.sh"
sweep_protocol few_shot "$@"
