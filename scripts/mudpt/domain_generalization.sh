#!/usr/bin/env bash
# Domain generalisation: train on ImageNet (skipped when finished), then evaluate that ImageNet model
# on ImageNetV2, ImageNet-Sketch, ImageNet-A and ImageNet-R (A and R: their 200-class subsets; the
# class-derived prompt buffers are rebuilt for them when the model is loaded).
# usage: bash scripts/mudpt/domain_generalization.sh DATA SEED [config options...]
# Run from the repository root. Environment: TRAINER, CFG, LOADEP, SHOTS_LIST, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/mudpt/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
domain_generalization "$@"
