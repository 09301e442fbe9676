#!/usr/bin/env bash
# APLe prompt-length ablation: base-to-novel on one dataset with N = 2, 4, 8, 16 prompt tokens per layer,
# each with its config vit_b16_c<N>_ep5_batch4_<N>ctx (everything else is the base-to-novel recipe; N > 4
# starts from random prompts, MaPLe's init rule). NCTX_LIST="2 16" restricts N. Plots:
# python -m vlprompt.results OUTPUT --plots DIR (prompt_length_APLe).
# usage: bash scripts/aple/prompt_length.sh DATA DATASET SEED [config options...]
# (= scripts/run.sh APLe:vit_b16_c2_ep5_batch4_2ctx,APLe:vit_b16_c4_ep5_batch4_4ctx,... base2new ...)
set -euo pipefail
methods=()
for n in ${NCTX_LIST:-2 4 8 16}; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "Error: NCTX_LIST must hold positive integers, got '$n'" >&2; exit 2; }
    methods+=("APLe:vit_b16_c${n}_ep5_batch4_${n}ctx")
done
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run.sh" "$(IFS=,; echo "${methods[*]}")" base2new "$@"
