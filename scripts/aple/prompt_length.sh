#!/usr/bin/env bash
# APLe prompt-length ablation on one dataset and seed: base-to-novel (train + new-class test) with
# N = 2, 4, 8 and 16 prompt tokens per layer (configs vit_b16_c<N>_ep5_batch4_<N>ctx; everything else
# is the base-to-novel recipe). N > 4 starts from random prompts (MaPLe's init rule).
# usage: bash scripts/aple/prompt_length.sh DATA DATASET SEED [config options...]
# (NCTX_LIST="2 16" restricts the sweep; plots: python -m vlprompt.results ... prompt_length_APLe)
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/common.sh"
[[ $# -ge 3 ]] || aple_die "usage: bash scripts/aple/prompt_length.sh DATA DATASET SEED [config options...]"
read -r -a NCTX <<< "${NCTX_LIST:-2 4 8 16}"
for n in "${NCTX[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || aple_die "prompt lengths must be positive integers, got '$n'"
    CFG=vit_b16_c${n}_ep5_batch4_${n}ctx
    aple_cfg_file "$CFG" > /dev/null
    CFG=$CFG bash "$HERE/base2new.sh" "$@"
done
