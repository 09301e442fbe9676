#!/usr/bin/env bash
# APLe, base-to-novel, both steps (train on the base classes, then test on the new ones).
# usage: bash scripts/aple/base2new.sh DATA DATASET SEED [config options...]   (= scripts/run.sh APLe base2new ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "APLe" base2new "$@"
