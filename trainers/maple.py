"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023): text prompts coupled to the image
tower by linear projections, at every layer up to the prompt depth. What is learned, the init rule,
parameter counts and configs: docs/METHODS.md (## MaPLe). In a notebook:
``CoupledPrompts(clip_model, ["cat", "dog"], n_ctx=2, depth=9)``.
"""
import copy

import torch.nn as nn

from vlprompt.clip import ClassPromptLearner, DeepPromptedCLIP, init_text_context, prompt_geometry, random_deep_prompts
from vlprompt.clip.backbone import model_dims
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer


class CoupledPrompts(ClassPromptLearner):
    """MaPLe's coupled prompts: vision prompts are linear projections of the text prompts.

    ``text_prompts()`` -> ``(prompts (K, text_length, d_t), deep_text [J-1 x (N, d_t)])``;
    ``vision_prompts()`` -> ``(proj(ctx) (N, d_v), deep_vision [J-1 x (N, d_v)])``.
    """

    def __init__(self, clip_model, classnames, n_ctx=2, depth=9, ctx_init="a photo of a"):
        n_ctx, depth = prompt_geometry(clip_model, n_ctx, depth)
        init = init_text_context(clip_model, n_ctx, ctx_init, rule="maple")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        print("MaPLe design: Multi-modal Prompt Learning")
        print(f'Initial context: "{init.prefix}"')
        print(f"Number of MaPLe context words (tokens): {n_ctx}")
        self.depth = depth
        self.text_geometry = self.vision_geometry = (n_ctx, depth)
        self.shared_prefix_length = 1 + n_ctx  # SOS + the generic context
        dims = model_dims(clip_model)
        d_t, d_v = dims["d_text"], dims["d_vision"]
        self.ctx = nn.Parameter(init.vectors)
        self.proj = nn.Linear(d_t, d_v)
        self.compound_prompts_text = random_deep_prompts(depth - 1, n_ctx, d_t)
        single = nn.Linear(d_t, d_v)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    def text_prompts(self):
        return self.assemble(self.ctx), list(self.compound_prompts_text)

    def vision_prompts(self):
        deep = [layer(p) for layer, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return self.proj(self.ctx), deep


MultiModalPromptLearner = CoupledPrompts  # the official class name


@TRAINER_REGISTRY.register()
class MaPLe(ClipPromptTrainer):
    """Multi-modal Prompt Learning (MaPLe)."""

    CARD = MethodCard(
        config="vit_b16_c2_ep5_batch4_2ctx",
        recipes={"cross_dataset": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"},
        order=70,
        backbones=PROMPTABLE_VISION,  # vision prompts: transformer image towers only
        cfg_node="MAPLE",
        cfg_defaults=dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9),
        cfg_args={"n_ctx": "N_CTX", "depth": "PROMPT_DEPTH", "ctx_init": "CTX_INIT"},
        model_name="MultiModalPromptLearner",
    )

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.MAPLE
        learner = CoupledPrompts(clip_model, classnames, n_ctx=m.N_CTX, depth=m.PROMPT_DEPTH, ctx_init=m.CTX_INIT)
        return DeepPromptedCLIP(clip_model, learner)
