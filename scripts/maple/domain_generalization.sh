#!/usr/bin/env bash
# MaPLe, domain generalisation: the ImageNet model (trained if needed) on the 4 ImageNet variants.
# usage: bash scripts/maple/domain_generalization.sh DATA SEED [config options...]   (= scripts/run.sh MaPLe domain_generalization ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "MaPLe" domain_generalization "$@"
