#!/usr/bin/env bash
# MuDPT (TRAINER=UMuDPT for the uni-modal variant), cross-dataset transfer: the ImageNet model (trained if needed) on the 10 other datasets.
# usage: bash scripts/mudpt/cross_dataset.sh DATA SEED [config options...]   (= scripts/run.sh ${TRAINER:-MuDPT} cross_dataset ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "${TRAINER:-MuDPT}" cross_dataset "$@"
