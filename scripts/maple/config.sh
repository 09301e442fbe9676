# shellcheck shell=bash
# MaPLe defaults per protocol (sourced by scripts/maple/*.sh):
#  - base-to-novel: vit_b16_c2_ep5_batch4_2ctx (N=2, J=9, lr 0.0035, 5 epochs)
#  - cross-dataset / domain generalisation: vit_b16_c2_ep5_batch4_2ctx_cross_datasets (J=3, lr 0.0026,
#    2 epochs, evaluated at epoch 2)
#  - few-shot: the official repository has none; the base-to-novel config on all classes
TRAINER=${TRAINER:-MaPLe}
cfg_base2new() { echo vit_b16_c2_ep5_batch4_2ctx; }
cfg_xd() { echo vit_b16_c2_ep5_batch4_2ctx_cross_datasets; }
cfg_few_shot() { echo vit_b16_c2_ep5_batch4_2ctx; }
