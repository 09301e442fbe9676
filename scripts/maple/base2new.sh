#!/usr/bin/env bash
# MaPLe, base-to-novel, both steps (train on the base classes, then test on the new ones).
# usage: bash scripts/maple/base2new.sh DATA DATASET SEED [config options...]   (= scripts/run.sh MaPLe base2new ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "MaPLe" base2new "$@"
