# shellcheck shell=bash
# CoOp defaults per protocol (sourced by scripts/coop/*.sh).
#  - base-to-novel: vit_b16_ctxv1 (N=4 "a photo of a", 200 epochs); ImageNet: vit_b16_ep50_ctxv1
#    (the CoCoOp paper's CoOp baseline)
#  - cross-dataset / domain generalisation: vit_b16_ep50_ctxv1 (ImageNet, 50 epochs)
#  - few-shot (COOP.md): 1 shot *_ep50, 2/4 shots *_ep100, 8/16 shots the 200-epoch config; ImageNet
#    *_ep50 for every shot count. FS_BACKBONE=rn50 gives the paper's main RN50 setting (default
#    vit_b16); N_CTX/CSC/CLASS_TOKEN_POSITION: pass TRAINER.COOP.* options after the positional args.
TRAINER=${TRAINER:-CoOp}
cfg_base2new() {
    if [[ "$1" == "imagenet" ]]; then echo vit_b16_ep50_ctxv1; else echo vit_b16_ctxv1; fi
}
cfg_xd() {
    echo vit_b16_ep50_ctxv1
}
cfg_few_shot() {
    local bb=${FS_BACKBONE:-vit_b16}
    if [[ "$1" == "imagenet" || "$2" -le 1 ]]; then
        echo "${bb}_ep50"
    elif [[ "$2" -le 4 ]]; then
        echo "${bb}_ep100"
    else
        echo "${bb}"
    fi
}
