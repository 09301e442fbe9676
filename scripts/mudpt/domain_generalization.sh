#!/usr/bin/env bash
# MuDPT (TRAINER=UMuDPT for the uni-modal variant), domain generalisation: the ImageNet model (trained if needed) on the 4 ImageNet variants.
# usage: bash scripts/mudpt/domain_generalization.sh DATA SEED [config options...]   (= scripts/run.sh ${TRAINER:-MuDPT} domain_generalization ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "${TRAINER:-MuDPT}" domain_generalization "$@"
