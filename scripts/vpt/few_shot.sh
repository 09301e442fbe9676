#!/usr/bin/env bash
# VPT, few-shot, all classes, K = 1 2 4 8 16 shots (SHOTS_LIST).
# usage: bash scripts/vpt/few_shot.sh DATA DATASET SEED [config options...]   (= scripts/run.sh VPT few_shot ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "VPT" few_shot "$@"
