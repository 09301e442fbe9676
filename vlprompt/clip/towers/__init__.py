"""Prompted encoders for every supported tower type, picked from the model's structure.

:func:`prompted_encoders` is the one entry point: it reads :func:`vlprompt.clip.backbone.tower_kinds`
(modules and attributes, never the model's name) and returns

=====================================  ========================================  ===================================
model structure                         text encoder                              image encoder
=====================================  ========================================  ===================================
open_clip ``CLIP`` (OpenAI, LAION, DFN,  ``PromptedTextEncoder``                   ``PromptedVisionEncoder``
MetaCLIP; ViT or ModifiedResNet)                                                  (RN: unprompted only)
``CustomTextCLIP``, causal text tower    :class:`.text.CausalCustomTextEncoder`    by image tower, below
(EVA02, PE-Core)
``CustomTextCLIP``, bidirectional text   :class:`.text.BidirectionalTextEncoder`   by image tower, below
with last pooling (SigLIP, SigLIP2)
timm ``VisionTransformer`` trunk                                                  :class:`.vision.TimmViTPromptedEncoder`
timm ``Eva`` trunk (rotary embeddings)                                            :class:`.vision.TimmEvaPromptedEncoder`
any other image tower                                                             :class:`.vision.PlainVisionEncoder`
                                                                                  (no prompts)
=====================================  ========================================  ===================================
"""
from ..backbone import tower_kinds
from ..prompted import PromptedTextEncoder, PromptedVisionEncoder
from .text import (BidirectionalTextEncoder, CausalCustomTextEncoder, encode_class_sentences, encode_class_texts,
                   encode_sentences, phrase_vectors)
from .vision import PlainVisionEncoder, TimmEvaPromptedEncoder, TimmViTPromptedEncoder

__all__ = [
    "prompted_encoders",
    "prompted_text_encoder",
    "prompted_vision_encoder",
    "BidirectionalTextEncoder",
    "CausalCustomTextEncoder",
    "TimmViTPromptedEncoder",
    "TimmEvaPromptedEncoder",
    "PlainVisionEncoder",
    "encode_class_texts",
    "encode_class_sentences",
    "encode_sentences",
    "phrase_vectors",
    "SUPPORTED_TEXT_TOWERS",
]

SUPPORTED_TEXT_TOWERS = (
    "open_clip CLIP text transformer (causal, EOT pooling)",
    "CustomTextCLIP TextTransformer, causal with EOT pooling (EVA02, PE-Core)",
    "CustomTextCLIP TextTransformer, bidirectional with last-token pooling (SigLIP, SigLIP2)",
)


def prompted_text_encoder(clip_model, n_prompts=0, depth=0):
    """The prompted text encoder for ``clip_model``'s text tower (see the module table)."""
    kind = tower_kinds(clip_model)[0]
    if kind == "causal":
        if hasattr(clip_model, "transformer"):
            return PromptedTextEncoder(clip_model, n_prompts, depth)
        return CausalCustomTextEncoder(clip_model, n_prompts, depth)
    if kind == "bidirectional":
        return BidirectionalTextEncoder(clip_model, n_prompts, depth)
    raise TypeError(
        f"Text tower not supported by prompted encoders ({kind.split(':', 1)[-1]}); supported: "
        + "; ".join(SUPPORTED_TEXT_TOWERS)
    )


def prompted_vision_encoder(clip_model, n_prompts=0, depth=0):
    """The prompted image encoder for ``clip_model``'s image tower (see the module table)."""
    kind = tower_kinds(clip_model)[1]
    if kind in ("clip_vit", "resnet"):
        return PromptedVisionEncoder(clip_model, n_prompts, depth)
    if kind == "timm_vit":
        return TimmViTPromptedEncoder(clip_model, n_prompts, depth)
    if kind == "timm_eva":
        return TimmEvaPromptedEncoder(clip_model, n_prompts, depth)
    return PlainVisionEncoder(clip_model, n_prompts, depth)


def prompted_encoders(clip_model, text=(0, 0), vision=(0, 0)):
    """``(text_encoder, image_encoder)`` for ``clip_model`` with ``(N, J)`` prompt settings per tower."""
    return prompted_text_encoder(clip_model, *text), prompted_vision_encoder(clip_model, *vision)
