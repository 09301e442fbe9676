# shellcheck shell=bash
# APLe defaults per protocol (sourced by scripts/aple/*.sh; configs/trainers/APLe/):
#  - base-to-novel: vit_b16_c2_ep5_batch4_2ctx (N=2, depth 9, lr 0.0035, 5 epochs: MaPLe's recipe)
#  - cross-dataset / domain generalisation: vit_b16_c2_ep5_batch4_2ctx_cross_datasets (the same
#    recipe on ImageNet; MaPLe's XD recipe is CFG=vit_b16_c2_ep2_batch4_2ctx_depth3_cross_datasets)
#  - few-shot: vit_b16_c2_ep5_batch4_2ctx_fewshot
#  - prompt-length ablation (prompt_length.sh): vit_b16_c<N>_ep5_batch4_<N>ctx for N in NCTX_LIST
# APLe-only settings: TRAINER is always APLe; OUTPUT sets the output root (default: output); seeds
# are positive; xd_test.sh refuses imagenet (the source dataset, tested by xd_train.sh).
# Config options, e.g. the public code's behaviours: TRAINER.APLE.ADAPTER reference_code.
TRAINER=APLe
OUTPUT_ROOT=${OUTPUT:-output}
SEED_MIN=1
XD_SOURCE_TEST=refuse
cfg_base2new() { echo vit_b16_c2_ep5_batch4_2ctx; }
cfg_xd() { echo vit_b16_c2_ep5_batch4_2ctx_cross_datasets; }
cfg_few_shot() { echo vit_b16_c2_ep5_batch4_2ctx_fewshot; }
cfg_prompt_length() { echo "vit_b16_c$1_ep5_batch4_$1ctx"; }
