#!/usr/bin/env bash
# MuDPT (TRAINER=UMuDPT for the uni-modal variant), train on ImageNet (16 shots, all classes): the source model of cross_dataset and domain_generalization.
# usage: bash scripts/mudpt/xd_train.sh DATA SEED [config options...]   (= scripts/run.sh ${TRAINER:-MuDPT} xd_train ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "${TRAINER:-MuDPT}" xd_train "$@"
