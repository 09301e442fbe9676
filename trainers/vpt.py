"""VPT: deep vision prompting (the MaPLe paper's "Deep VPT" baseline), on the vlprompt engine.

Only the image tower is prompted: ``vision_ctx`` (N_v, d_v) appended after the patch tokens before
``ln_pre``, plus ``deep_vision_prompts[i-1]`` (N_v, d_v) replacing the last N_v tokens at the input of
blocks i = 1..J_v-1 (all N(0, 0.02^2)). The text side is fixed: hand-crafted prompts
``"<CTX_INIT> <class>."`` ("a photo of a {}." by default, as the official code hard-codes) encoded by
the frozen text encoder once per class list.

73,728 trainable parameters at ViT-B/16 with the official config (N_v=8, J_v=12).

Config ``TRAINER.VPT.{N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1}``
(official defaults; the official config ``vit_b16_c2_ep5_batch4_4`` sets 8 tokens and depth 12).
Note: the official VPT trainer calls ``model.float()``, so it ran in fp32 despite ``PREC fp16``.
Registered model name ``prompt_learner`` (official).
"""
import torch
import torch.nn as nn

from vlprompt.clip import (
    PromptedCLIP,
    check_prompt_config,
    clean_classname,
    model_dims,
    prompt_strings,
    random_deep_prompts,
    random_prompt,
    tokenize,
)
from vlprompt.config import register_cfg_extension
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer, add_trainer_cfg

from .ivlp import convert_official_vision_keys


@register_cfg_extension
def extend_cfg_vpt(cfg):
    add_trainer_cfg(cfg, "VPT", dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1))


class VisionPromptLearner(nn.Module):
    """Deep vision prompts: ``forward()`` -> ``(vision_ctx (N_v, d_v), deep [J_v-1 x (N_v, d_v)])``."""

    def __init__(self, n_ctx, depth, dims):
        super().__init__()
        self.n_ctx, self.depth = n_ctx, depth
        self.vision_ctx = nn.Parameter(random_prompt(n_ctx, dims["d_vision"]))
        self.deep_vision_prompts = random_deep_prompts(depth - 1, n_ctx, dims["d_vision"])

    def forward(self):
        return self.vision_ctx, list(self.deep_vision_prompts)


class VPTCLIP(PromptedCLIP):
    """Frozen CLIP + deep vision prompts + fixed hand-crafted text features."""

    def __init__(self, mcfg, classnames, clip_model):
        dims = model_dims(clip_model)
        if not dims["is_vit"]:
            raise ValueError("VPT prompts the image tower: it needs a ViT backbone (e.g. ViT-B/16), not a ResNet")
        n_v, j_v = check_prompt_config(mcfg.N_CTX_VISION, mcfg.PROMPT_DEPTH_VISION, dims["vision_layers"],
                                       "TRAINER.VPT.PROMPT_DEPTH_VISION", allow_zero_depth=False)
        super().__init__(clip_model, vision_prompts=(n_v, j_v))
        self.prompt_prefix = " ".join(clean_classname(mcfg.CTX_INIT).split())
        print("Vision Prompting Design")
        print(f'Initial context: "{self.prompt_prefix}"')
        print(f"Number of context words (tokens) for Vision prompting: {n_v}")
        print("Using fixed hand crafted prompts")
        self.prompt_learner = VisionPromptLearner(n_v, j_v, dims)
        self.set_classnames(classnames)

    def set_classnames(self, classnames):
        self.classnames = [clean_classname(c) for c in classnames]
        self.tokenized_prompts = tokenize(prompt_strings(self.prompt_prefix, classnames))
        self._fixed_text = None  # encoded lazily, on the model's device
        self.text_cache.clear()

    @torch.no_grad()
    def fixed_text_features(self):
        """(K, d_e) features of the hand-crafted prompts (frozen; computed once per class list)."""
        if self._fixed_text is None:
            self._fixed_text = self.text_encoder.encode_tokens(self.tokenized_prompts).float()
        return self._fixed_text

    def forward(self, image):
        vision_ctx, deep = self.prompt_learner()
        return self.logits(self.image_encoder(image, vision_ctx, deep), self.fixed_text_features())


@TRAINER_REGISTRY.register()
class VPT(ClipPromptTrainer):
    """Deep vision prompt tuning with fixed hand-crafted text prompts."""

    RECIPES = {
        "base2new": {"config": "vit_b16_c2_ep5_batch4_4"},
        "cross_dataset": {"config": "vit_b16_c2_ep5_batch4_4"},
        "domain_generalization": {"config": "vit_b16_c2_ep5_batch4_4"},
        "few_shot": {"config": "vit_b16_c2_ep5_batch4_4"},
    }
    TABLE_ORDER = 50

    CFG_NODE = "VPT"
    MODEL_NAME = "prompt_learner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return VPTCLIP(cfg.TRAINER.VPT, classnames, clip_model)

    def convert_legacy_state_dict(self, state_dict):
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        return convert_official_vision_keys(state_dict)
