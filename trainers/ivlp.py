"""IVLP: Independent Vision-Language Prompting (the MaPLe paper's baseline): uncoupled deep prompts in
both towers (:class:`vlprompt.clip.IndependentPrompts`); ``PROMPT_DEPTH_VISION 0`` gives deep language
prompting. Details, parameter counts and configs: docs/METHODS.md (## IVLP).
"""
import re

from vlprompt.clip import DeepPromptedCLIP, IndependentPrompts
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer


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


VLPromptLearner = IndependentPrompts  # the official class name


@TRAINER_REGISTRY.register()
class IVLP(ClipPromptTrainer):
    """Independent Vision-Language Prompting (and deep language prompting)."""

    CARD = MethodCard(
        config="vit_b16_c2_ep5_batch4_2+2ctx",  # every protocol
        order=60,
        backbones=PROMPTABLE_VISION,  # vision prompts: transformer image towers only
        cfg_node="IVLP",
        cfg_defaults=dict(N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16",
                          PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9),
        cfg_args={"n_ctx_text": "N_CTX_TEXT", "depth_text": "PROMPT_DEPTH_TEXT", "n_ctx_vision": "N_CTX_VISION",
                  "depth_vision": "PROMPT_DEPTH_VISION", "ctx_init": "CTX_INIT"},
        model_name="VLPromptLearner",
    )

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        learner = IndependentPrompts.from_cfg(clip_model, classnames, cfg.TRAINER.IVLP)
        return DeepPromptedCLIP(clip_model, learner)

    def convert_legacy_state_dict(self, state_dict):
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        return convert_official_vision_keys(state_dict)
