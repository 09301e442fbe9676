#!/usr/bin/env bash
# CoCoOp, train on ImageNet (16 shots, all classes): the source model of cross_dataset and domain_generalization.
# usage: bash scripts/cocoop/xd_train.sh DATA SEED [config options...]   (= scripts/run.sh CoCoOp xd_train ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "CoCoOp" xd_train "$@"
