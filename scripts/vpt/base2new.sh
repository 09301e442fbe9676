#!/usr/bin/env bash
# VPT, base-to-novel, both steps (train on the base classes, then test on the new ones).
# usage: bash scripts/vpt/base2new.sh DATA DATASET SEED [config options...]   (= scripts/run.sh VPT base2new ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "VPT" base2new "$@"
