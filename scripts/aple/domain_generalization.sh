#!/usr/bin/env bash
# APLe domain generalisation for one seed: the ImageNet model of the cross-dataset protocol (trained
# here if missing) evaluated on ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R (A and R
# rebuild the prompts for their 200-class subsets).
# usage: bash scripts/aple/domain_generalization.sh DATA SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
domain_generalization "$@"
