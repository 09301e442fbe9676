# shellcheck shell=bash
# IVLP defaults per protocol (sourced by scripts/ivlp/*.sh): vit_b16_c2_ep5_batch4_2+2ctx everywhere
# (N=2+2, J=12/12, lr 0.0035, 5 epochs), as the official scripts. Deep language prompting:
# CFG=vit_b16_c2_ep5_batch4_4ctx_language_only. The official XD scripts write the ImageNet run under
# output/imagenet... only for MaPLe and load epoch 2 for a 5-epoch run; here every method uses the
# same tree and loads the last epoch.
TRAINER=${TRAINER:-IVLP}
cfg_base2new() { echo "vit_b16_c2_ep5_batch4_2+2ctx"; }
cfg_xd() { echo "vit_b16_c2_ep5_batch4_2+2ctx"; }
cfg_few_shot() { echo "vit_b16_c2_ep5_batch4_2+2ctx"; }
