#!/usr/bin/env bash
# MuDPT (TRAINER=UMuDPT for the uni-modal variant), few-shot, all classes, K = 1 2 4 8 16 shots (SHOTS_LIST).
# usage: bash scripts/mudpt/few_shot.sh DATA DATASET SEED [config options...]   (= scripts/run.sh ${TRAINER:-MuDPT} few_shot ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "${TRAINER:-MuDPT}" few_shot "$@"
