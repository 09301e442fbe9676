# shellcheck shell=bash
# VPT (deep vision prompting) defaults per protocol (sourced by scripts/vpt/*.sh):
# vit_b16_c2_ep5_batch4_4 everywhere (8 vision tokens, depth 12, lr 0.0025, 5 epochs). The official
# XD test script loads epoch 2 of this 5-epoch run; here the last epoch (5) is loaded.
TRAINER=${TRAINER:-VPT}
cfg_base2new() { echo vit_b16_c2_ep5_batch4_4; }
cfg_xd() { echo vit_b16_c2_ep5_batch4_4; }
cfg_few_shot() { echo vit_b16_c2_ep5_batch4_4; }
