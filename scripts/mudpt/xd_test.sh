#!/usr/bin/env bash
# MuDPT (TRAINER=UMuDPT for the uni-modal variant), evaluate the ImageNet model on DATASET (full test set).
# usage: bash scripts/mudpt/xd_test.sh DATA DATASET SEED [config options...]   (= scripts/run.sh ${TRAINER:-MuDPT} xd_test ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "${TRAINER:-MuDPT}" xd_test "$@"
