from .backbone import (
    BUILTIN_BACKBONES,
    CLIP_NAME_TO_OPENCLIP,
    MissingWeightsError,
    build_clip_from_cfg,
    build_clip_model,
    model_dims,
    normalize_backbone_name,
    register_builtin_backbone,
)
from .tokenizer import tokenize
from .templates import CUSTOM_TEMPLATES, APLE_TEMPLATES, IMAGENET_TEMPLATES_SELECT, get_template, format_classnames
from .zeroshot import encode_class_texts
from .tokenizer import count_tokens
from .prompted import (
    PromptedTextEncoder,
    PromptedVisionEncoder,
    TextFeatureCache,
    check_prompt_config,
    normalized_logits,
)
from .prompt_init import ContextInit, clean_classname, init_text_context, prompt_strings, random_deep_prompts, random_prompt
from .prompt_learner import CLASS_DERIVED_KEYS, ClassPromptLearner, drop_class_derived_keys
from .precision import PRECISIONS, Precision, convert_clip_to_fp16, resolve_precision
from .errors import ArgError
from .blocks import PromptedCLIP, DeepPromptedCLIP, IndependentPrompts, VisionPrompts, ZeroShotHead, prompt_geometry, require_vit
from .blocks import ZERO_SHOT_TEXT_MODES, zero_shot_text
