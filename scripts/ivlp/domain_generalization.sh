#!/usr/bin/env bash
# IVLP, domain generalisation: the ImageNet model (trained if needed) on the 4 ImageNet variants.
# usage: bash scripts/ivlp/domain_generalization.sh DATA SEED [config options...]   (= scripts/run.sh IVLP domain_generalization ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "IVLP" domain_generalization "$@"
