#!/usr/bin/env bash
# APLe, few-shot, all classes, K = 1 2 4 8 16 shots (SHOTS_LIST).
# usage: bash scripts/aple/few_shot.sh DATA DATASET SEED [config options...]   (= scripts/run.sh APLe few_shot ...; see there)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "APLe" few_shot "$@"
