# shellcheck shell=bash
# CoCoOp defaults per protocol (sourced by scripts/cocoop/*.sh): vit_b16_c4_ep10_batch1_ctxv1
# everywhere (N=4 "a photo of a", batch 1, 10 epochs), as in the official scripts; few-shot reuses it.
TRAINER=${TRAINER:-CoCoOp}
cfg_base2new() { echo vit_b16_c4_ep10_batch1_ctxv1; }
cfg_xd() { echo vit_b16_c4_ep10_batch1_ctxv1; }
cfg_few_shot() { echo vit_b16_c4_ep10_batch1_ctxv1; }
