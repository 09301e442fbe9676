#!/usr/bin/env bash
# APLe prompt-length ablation on one dataset and seed: base-to-novel (train + new-class test) with
# N = 2, 4, 8 and 16 prompt tokens per layer (configs vit_b16_c<N>_ep5_batch4_<N>ctx; everything else
# is the base-to-novel recipe). N > 4 starts from random prompts (MaPLe's init rule).
# (NCTX_LIST="2 16" restricts the sweep; plots: python -m vlprompt.results ... prompt_length_APLe)
# usage: bash scripts/aple/prompt_length.sh DATA DATASET SEED [config options...]
# Run from the repository root. Environment: NCTX_LIST, LOADEP, OUTPUT, PYTHON, DRY_RUN=1 (see
# scripts/lib/prompt_protocols.sh); per-protocol default configs: scripts/aple/config.sh.
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/config.sh"
source "$HERE/../lib/prompt_protocols.sh"
prompt_length "$@"
