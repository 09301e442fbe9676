#!/usr/bin/env bash
# Domain generalisation: train on ImageNet (skipped when finished), evaluate on ImageNetV2,
# ImageNet-Sketch, ImageNet-A and ImageNet-R (A/R: their 200-class subsets; prompts are rebuilt
# for those class names when the model is loaded).
# usage: bash scripts/vpt/domain_generalization.sh DATA SEED [config options...]
# Run from the repository root. Environment: CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/vpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
domain_generalization "$@"
