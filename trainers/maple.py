"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023), on the vlprompt engine.

Learns, for prompt length ``N`` and depth ``J`` (input layer included):

* ``ctx`` (N, d_t): shallow text prompt. With ``CTX_INIT`` and ``N <= 4`` it starts from the first N
  tokens of the phrase and the prompt string keeps the whole phrase, so for N=2 "of a" stay frozen
  tokens: ``[SOS, p1, p2, "of", "a", <class>, ".", EOT]``; otherwise N(0, 0.02^2);
* ``proj``: Linear(d_t -> d_v), the layer-0 coupling: vision prompts at the input are ``proj(ctx)``;
* ``compound_prompts_text[i-1]`` (N, d_t), i = 1..J-1: deep text prompts (slots 1..N of block i);
* ``compound_prompt_projections[i-1]``: Linear(d_t -> d_v) per deep layer (all start from the same
  weights, as in the official code); block i of the image tower gets
  ``compound_prompt_projections[i-1](compound_prompts_text[i-1])`` as its last N tokens.

3,555,072 trainable parameters at ViT-B/16, N=2, J=9 (the paper's 3.55M).

Config ``TRAINER.MAPLE.{N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9}``.
Registered model name ``MultiModalPromptLearner`` as in the official repository, but only the
prompt learner is registered and saved (the official checkpoints hold the whole CLIP; those load
too: the ``prompt_learner.`` keys are picked out).
"""
import copy

import torch.nn as nn

from vlprompt.clip import ClassPromptLearner, PromptedCLIP, check_prompt_config, init_text_context, random_deep_prompts
from vlprompt.config import register_cfg_extension
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer, add_trainer_cfg


@register_cfg_extension
def extend_cfg_maple(cfg):
    add_trainer_cfg(cfg, "MAPLE", dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9))


class MultiModalPromptLearner(ClassPromptLearner):
    """MaPLe's coupled prompts.

    ``forward()`` -> ``(prompts (K, text_length, d_t), shared_ctx (N, d_v), deep_text [J-1 x (N, d_t)],
    deep_vision [J-1 x (N, d_v)])``.
    """

    def __init__(self, mcfg, classnames, clip_model, dims):
        n_layers = min(dims["text_layers"], dims["vision_layers"])
        n_ctx, depth = check_prompt_config(mcfg.N_CTX, mcfg.PROMPT_DEPTH, n_layers, "TRAINER.MAPLE.PROMPT_DEPTH",
                                           allow_zero_depth=False)
        init = init_text_context(clip_model, n_ctx, mcfg.CTX_INIT, rule="maple", where="TRAINER.MAPLE.N_CTX")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        print("MaPLe design: Multi-modal Prompt Learning")
        print(f'Initial context: "{init.prefix}"')
        print(f"Number of MaPLe context words (tokens): {n_ctx}")
        self.depth = depth
        d_t, d_v = dims["d_text"], dims["d_vision"]
        self.ctx = nn.Parameter(init.vectors)
        self.proj = nn.Linear(d_t, d_v)
        self.compound_prompts_text = random_deep_prompts(depth - 1, n_ctx, d_t)
        single = nn.Linear(d_t, d_v)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    def text_prompts(self):
        """``(prompts (K, text_length, d_t), deep_text [J-1 x (N, d_t)])``."""
        return self.assemble(self.ctx), list(self.compound_prompts_text)

    def vision_prompts(self):
        """``(shared_ctx = proj(ctx) (N, d_v), deep_vision [J-1 x (N, d_v)])``."""
        deep = [layer(p) for layer, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return self.proj(self.ctx), deep

    def forward(self):
        prompts, deep_text = self.text_prompts()
        shared_ctx, deep_vision = self.vision_prompts()
        return prompts, shared_ctx, deep_text, deep_vision


class MaPLeCLIP(PromptedCLIP):
    """Frozen CLIP + MaPLe prompt learner; ``forward(image)`` -> (B, K) logits."""

    def __init__(self, mcfg, classnames, clip_model):
        from vlprompt.clip import model_dims

        dims = model_dims(clip_model)
        if not dims["is_vit"]:
            raise ValueError("MaPLe prompts the image tower: it needs a ViT backbone (e.g. ViT-B/16), not a ResNet")
        n, j = int(mcfg.N_CTX), int(mcfg.PROMPT_DEPTH)
        super().__init__(clip_model, text_prompts=(n, j), vision_prompts=(n, j))
        self.prompt_learner = MultiModalPromptLearner(mcfg, classnames, clip_model, dims)

    def text_features(self):
        prompts, deep_text = self.prompt_learner.text_prompts()
        return self.text_encoder(prompts, self.prompt_learner.eot_idx, deep_text)

    def forward(self, image):
        text = self.cached_text_features(self.text_features)
        shared_ctx, deep_vision = self.prompt_learner.vision_prompts()
        image_features = self.image_encoder(image, shared_ctx, deep_vision)
        return self.logits(image_features, text)


@TRAINER_REGISTRY.register()
class MaPLe(ClipPromptTrainer):
    """Multi-modal Prompt Learning (MaPLe)."""

    RECIPES = {
        "base2new": {"config": "vit_b16_c2_ep5_batch4_2ctx"},
        "cross_dataset": {"config": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"},
        "domain_generalization": {"config": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"},
        "few_shot": {"config": "vit_b16_c2_ep5_batch4_2ctx"},
    }
    TABLE_ORDER = 70

    CFG_NODE = "MAPLE"
    MODEL_NAME = "MultiModalPromptLearner"

    def build_custom_clip(self, cfg, classnames, clip_model):
        return MaPLeCLIP(cfg.TRAINER.MAPLE, classnames, clip_model)
