# shellcheck shell=bash
# MuDPT defaults per protocol (sourced by scripts/mudpt/*.sh):
#  - base-to-novel and few-shot: vit_b16_bz4_ep10_nctx4_depth9 (10 epochs for every shot count, as
#    the official scripts)
#  - cross-dataset / domain generalisation: vit_b16_bz4_ep10_nctx4_depth9_cross_datasets; every
#    target loads the *ImageNet* model (the official script's bug of loading each target dataset's
#    own model is not reproduced)
# TRAINER=UMuDPT runs the uni-modal variant through the same scripts (then set
# CFG=vit_b16_bz4_ep5_nctx2_depth9). Config options, e.g. TRAINER.MUDPT.PREC amp.
TRAINER=${TRAINER:-MuDPT}
cfg_base2new() { echo vit_b16_bz4_ep10_nctx4_depth9; }
cfg_xd() { echo vit_b16_bz4_ep10_nctx4_depth9_cross_datasets; }
cfg_few_shot() { echo vit_b16_bz4_ep10_nctx4_depth9; }
