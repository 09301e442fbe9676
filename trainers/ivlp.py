"""IVLP: Independent Vision-Language Prompting (the MaPLe paper's baseline), on the vlprompt engine.

Independent (uncoupled) deep prompts in both encoders:

* text: ``ctx`` (N_t, d_t), initialised like MaPLe (``CTX_INIT`` with N_t <= 4: first N_t tokens of
  the phrase, the rest of the phrase kept as frozen tokens; else random), plus
  ``deep_text_prompts[i-1]`` (N_t, d_t) replacing slots 1..N_t at the input of text blocks
  i = 1..J_t-1 (N(0, 0.02^2));
* vision (only if ``PROMPT_DEPTH_VISION >= 1``): ``vision_ctx`` (N_v, d_v) appended after the patch
  tokens before ``ln_pre``, plus ``deep_vision_prompts[i-1]`` (N_v, d_v) replacing the last N_v tokens
  at the input of vision blocks i = 1..J_v-1.

``PROMPT_DEPTH_VISION 0`` (with ``N_CTX_VISION 0``) gives deep *language* prompting
(``vit_b16_c2_ep5_batch4_4ctx_language_only``). Trainable parameters at ViT-B/16: 30,720 for
``2+2ctx`` (J=12/12), 24,576 for ``4ctx_language_only``.

Config ``TRAINER.IVLP.{N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16",
PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9}``. Registered model name ``VLPromptLearner`` (official);
official whole-model checkpoints (``VPT``/``VPT_shallow`` inside the encoders) load too.
"""
import re

import torch.nn as nn

from vlprompt.clip import (
    ClassPromptLearner,
    PromptedCLIP,
    check_prompt_config,
    init_text_context,
    model_dims,
    random_deep_prompts,
    random_prompt,
)
from vlprompt.config import register_cfg_extension
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer, add_trainer_cfg


@register_cfg_extension
def extend_cfg_ivlp(cfg):
    add_trainer_cfg(
        cfg,
        "IVLP",
        dict(N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=9,
             PROMPT_DEPTH_TEXT=9),
    )


def convert_official_vision_keys(state_dict):
    """Official IVLP/VPT keys (prompts inside the encoders) -> this module's keys."""
    out = {}
    for k, v in state_dict.items():
        m = re.fullmatch(r"(?:.*\.)?image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", k)
        if m:
            out[f"deep_vision_prompts.{int(m.group(1)) - 1}"] = v
            continue
        m = re.fullmatch(r"(?:.*\.)?text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", k)
        if m:
            out[f"deep_text_prompts.{int(m.group(1)) - 1}"] = v
            continue
        if re.fullmatch(r"(?:.*\.)?image_encoder\.VPT", k):
            out["vision_ctx"] = v
            continue
        if k.startswith("prompt_learner."):
            out[k[len("prompt_learner."):]] = v
    return out


class VLPromptLearner(ClassPromptLearner):
    """IVLP's independent text and vision prompts.

    ``text_prompts()`` -> ``(prompts (K, text_length, d_t), deep_text [J_t-1 x (N_t, d_t)])``;
    ``vision_prompts()`` -> ``(vision_ctx (N_v, d_v) or None, deep_vision [J_v-1 x (N_v, d_v)])``.
    """

    def __init__(self, mcfg, classnames, clip_model, dims):
        n_t, j_t = check_prompt_config(mcfg.N_CTX_TEXT, mcfg.PROMPT_DEPTH_TEXT, dims["text_layers"],
                                       "TRAINER.IVLP.PROMPT_DEPTH_TEXT", allow_zero_depth=False)
        n_v, j_v = check_prompt_config(mcfg.N_CTX_VISION, mcfg.PROMPT_DEPTH_VISION, dims.get("vision_layers", 0),
                                       "TRAINER.IVLP.PROMPT_DEPTH_VISION")
        init = init_text_context(clip_model, n_t, mcfg.CTX_INIT, rule="maple", where="TRAINER.IVLP.N_CTX_TEXT")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        print("Independent V-L design")
        print(f'Initial text context: "{init.prefix}"')
        print(f"Number of context words (tokens) for Language prompting: {n_t}")
        print(f"Number of context words (tokens) for Vision prompting: {n_v if j_v > 0 else 0}")
        self.text_depth, self.vision_depth = j_t, j_v
        self.n_ctx_vision = n_v if j_v > 0 else 0
        self.ctx = nn.Parameter(init.vectors)
        self.deep_text_prompts = random_deep_prompts(j_t - 1, n_t, dims["d_text"])
        if j_v > 0:
            self.vision_ctx = nn.Parameter(random_prompt(n_v, dims["d_vision"]))
            self.deep_vision_prompts = random_deep_prompts(j_v - 1, n_v, dims["d_vision"])
        else:
            self.vision_ctx = None
            self.deep_vision_prompts = nn.ParameterList()

    def text_prompts(self):
        return self.assemble(self.ctx), list(self.deep_text_prompts)

    def vision_prompts(self):
        return self.vision_ctx, list(self.deep_vision_prompts)


class IVLPCLIP(PromptedCLIP):
    """Frozen CLIP + IVLP prompt learner; ``forward(image)`` -> (B, K) logits."""

    def __init__(self, mcfg, classnames, clip_model):
        dims = model_dims(clip_model)
        j_v = int(mcfg.PROMPT_DEPTH_VISION)
        if j_v > 0 and not dims["is_vit"]:
            raise ValueError(
                "IVLP with vision prompts needs a ViT backbone (e.g. ViT-B/16); set "
                "TRAINER.IVLP.PROMPT_DEPTH_VISION 0 for language-only prompting on a ResNet"
            )
        super().__init__(
            clip_model,
            text_prompts=(int(mcfg.N_CTX_TEXT), int(mcfg.PROMPT_DEPTH_TEXT)),
            vision_prompts=(int(mcfg.N_CTX_VISION), j_v),
        )
        self.prompt_learner = VLPromptLearner(mcfg, classnames, clip_model, dims)

    def text_features(self):
        prompts, deep = self.prompt_learner.text_prompts()
        return self.text_encoder(prompts, self.prompt_learner.eot_idx, deep)

    def forward(self, image):
        text = self.cached_text_features(self.text_features)
        vision_ctx, deep = self.prompt_learner.vision_prompts()
        return self.logits(self.image_encoder(image, vision_ctx, deep), text)


@TRAINER_REGISTRY.register()
class IVLP(ClipPromptTrainer):
    """Independent Vision-Language Prompting (and deep language prompting)."""

    RECIPES = {
        "base2new": {"config": "vit_b16_c2_ep5_batch4_2+2ctx"},
        "cross_dataset": {"config": "vit_b16_c2_ep5_batch4_2+2ctx"},
        "domain_generalization": {"config": "vit_b16_c2_ep5_batch4_2+2ctx"},
        "few_shot": {"config": "vit_b16_c2_ep5_batch4_2+2ctx"},
    }
    TABLE_ORDER = 60

    CFG_NODE = "IVLP"
    MODEL_NAME = "VLPromptLearner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return IVLPCLIP(cfg.TRAINER.IVLP, classnames, clip_model)

    def convert_legacy_state_dict(self, state_dict):
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        return convert_official_vision_keys(state_dict)
