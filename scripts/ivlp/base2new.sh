#!/usr/bin/env bash
# IVLP, base-to-novel, both steps (train on the base classes, then test on the new ones).
# usage: bash scripts/ivlp/base2new.sh DATA DATASET SEED [config options...]   (= scripts/run.sh IVLP base2new ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "IVLP" base2new "$@"
