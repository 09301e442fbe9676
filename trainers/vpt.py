"""VPT-deep (the MaPLe paper's "Deep VPT" baseline): learned vision prompts, fixed hand-crafted text
("<CTX_INIT> <class>."). Details, parameter counts and configs: docs/METHODS.md (## VPT).
"""
from vlprompt.clip import DeepPromptedCLIP, VisionPrompts, prompt_strings
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer

from .ivlp import convert_official_vision_keys


@TRAINER_REGISTRY.register()
class VPT(ClipPromptTrainer):
    """Deep vision prompt tuning with fixed hand-crafted text prompts."""

    CARD = MethodCard(
        config="vit_b16_c2_ep5_batch4_4",  # every protocol
        order=50,
        backbones=PROMPTABLE_VISION,  # vision prompts: transformer image towers only
        cfg_node="VPT",
        cfg_defaults=dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1),
        cfg_args={"n_ctx": "N_CTX_VISION", "depth": "PROMPT_DEPTH_VISION", "templates": "CTX_INIT"},
        model_name="prompt_learner",
    )

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.VPT
        learner = VisionPrompts(clip_model, classnames, n_ctx=m.N_CTX_VISION, depth=m.PROMPT_DEPTH_VISION)
        template = prompt_strings(m.CTX_INIT, ["{}"])[0]  # "a photo of a {}."
        print("Vision Prompting Design")
        print(f'Fixed hand-crafted prompts: "{template}"')
        print(f"Number of context words (tokens) for Vision prompting: {learner.vision_geometry[0]}")
        return DeepPromptedCLIP(clip_model, learner, fixed_text_templates=[template])

    def convert_legacy_state_dict(self, state_dict):
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        return convert_official_vision_keys(state_dict)
