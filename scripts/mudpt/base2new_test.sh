#!/usr/bin/env bash
# MuDPT (TRAINER=UMuDPT for the uni-modal variant), base-to-novel step 2: evaluate the trained model on the new classes.
# usage: bash scripts/mudpt/base2new_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh ${TRAINER:-MuDPT} base2new_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "${TRAINER:-MuDPT}" base2new_test "$@"
