#!/usr/bin/env bash
# MuDPT (TRAINER=UMuDPT for the uni-modal variant), base-to-novel, both steps (train on the base classes, then test on the new ones).
# usage: bash scripts/mudpt/base2new.sh DATA DATASET SEED [config options...]   (= scripts/run.sh ${TRAINER:-MuDPT} base2new ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "${TRAINER:-MuDPT}" base2new "$@"
