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
from vlprompt.clip import DeepPromptedCLIP, VisionPrompts, prompt_strings
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer

from .ivlp import convert_official_vision_keys


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
    CFG_DEFAULTS = dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1)
    CFG_ARGS = {"n_ctx": "N_CTX_VISION", "depth": "PROMPT_DEPTH_VISION", "templates": "CTX_INIT"}
    MODEL_NAME = "prompt_learner"

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.VPT
        learner = VisionPrompts(clip_model, classnames, n_ctx=m.N_CTX_VISION, depth=m.PROMPT_DEPTH_VISION)
        template = prompt_strings(m.CTX_INIT, ["{}"])[0]  # "a photo of a {}."
        print("Vision Prompting Design")
        print(f'Fixed hand-crafted prompts: "{template}"')
        print(f"Number of context words (tokens) for Vision prompting: {learner.vision_geometry[0]}")
        return DeepPromptedCLIP(clip_model, learner, vision=learner.vision_geometry, fixed_text_templates=[template])

    def convert_legacy_state_dict(self, state_dict):
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        return convert_official_vision_keys(state_dict)
