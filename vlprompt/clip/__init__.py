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
