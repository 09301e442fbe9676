"""Small random-weight open_clip ``CustomTextCLIP`` models with the tower structure of SigLIP, EVA02
and PE-Core (built in a second, not the minutes a base-size model takes on a CPU).

Each mirrors its family's open_clip config (``ViT-B-16-SigLIP``, ``EVA02-B-16``, ``PE-Core-B-16``) and
timm architecture (``vit_base_patch16_siglip_224``, ``eva02_base_patch16_clip_224``,
``vit_pe_core_base_patch16_224``) with the same options, at 12 layers (the depth of the base models, so the shipped prompt depths fit), patch 32 (7x7 grid) and narrow
widths (text 32, vision 48: different, so width mix-ups fail loudly). The SigLIP one has SigLIP's
32000-word vocabulary and token layout (no start token, EOS 1, padding to 64) through
:class:`vlprompt.clip.tokenizer.NoStartBPETokenizer`, so code that tokenizes with CLIP's tokenizer
instead of the model's fails on it as it would on real SigLIP. The timm trunks are registered in
timm's model registry under ``vlprompt_tiny_*`` so that open_clip builds them through its normal path.
Weights come from a fixed seed that does not disturb the caller's RNG streams.

``build_rn_tiny`` is the CLIP-ResNet reference of the family tests: an open_clip ``CLIP`` with a
ModifiedResNet image tower (RN50's family: stem, four stages of one bottleneck each, attention pooling)
at width 8, and the same 12-layer text tower as ``test-vit-tiny``. Register it as a backbone name with
``vlprompt.clip.register_builtin_backbone("test-rn-tiny", "vlprompt.clip.towers.tiny:build_rn_tiny")``.
``build_timm_resnet_tiny`` stands for "any other timm trunk": a ``CustomTextCLIP`` whose image tower is a
timm ``ResNet`` (one basic block per stage, widths 8-64; average pool, its classifier as the projection; no transformer
blocks, so no vision prompts and no image-tower LoRA) beside the same 12-layer causal text tower.
"""
from functools import partial

import numpy as np
import torch

__all__ = ["build_siglip_tiny", "build_eva02_tiny", "build_pecore_tiny", "build_rn_tiny", "build_timm_resnet_tiny",
           "TINY_FAMILIES"]

_COMMON = dict(img_size=224, patch_size=32, embed_dim=48, depth=12, num_heads=2)
_DROP = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def _clean(kwargs):
    return {k: v for k, v in kwargs.items() if k not in _DROP}


def _register():
    from timm.models import register_model
    from timm.models._registry import is_model

    if is_model("vlprompt_tiny_siglip"):
        return

    @register_model
    def vlprompt_tiny_siglip(pretrained=False, **kwargs):
        from timm.models.vision_transformer import VisionTransformer

        args = dict(_COMMON, mlp_ratio=2.0, class_token=False, global_pool="map")
        return VisionTransformer(**dict(args, **_clean(kwargs)))

    @register_model
    def vlprompt_tiny_eva02(pretrained=False, **kwargs):
        from timm.models.eva import Eva

        args = dict(_COMMON, qkv_fused=False, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True,
                    scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(7, 7), global_pool="token")
        return Eva(**dict(args, **_clean(kwargs)))

    @register_model
    def vlprompt_tiny_pecore(pretrained=False, **kwargs):
        from timm.layers import LayerNorm
        from timm.models.eva import Eva

        args = dict(_COMMON, mlp_ratio=4.0, global_pool="map", attn_type="rope", use_pre_transformer_norm=True,
                    use_rot_pos_emb=True, ref_feat_shape=(7, 7), rope_grid_offset=1.0, rope_grid_indexing="xy",
                    attn_pool_num_heads=2, attn_pool_mlp_ratio=4.0, norm_layer=partial(LayerNorm, eps=1e-5))
        return Eva(**dict(args, **_clean(kwargs)))

    @register_model
    def vlprompt_tiny_resnet(pretrained=False, **kwargs):
        from timm.models.resnet import BasicBlock, ResNet

        args = dict(block=BasicBlock, layers=(1, 1, 1, 1), stem_width=8, channels=(8, 16, 32, 64))
        return ResNet(**dict(args, **_clean(kwargs)))


_TEXT = dict(vocab_size=49408, width=32, heads=2, layers=12, mlp_ratio=2.0)

#: family -> CustomTextCLIP kwargs (open_clip model-config layout)
TINY_FAMILIES = {
    "siglip": dict(
        embed_dim=48, init_logit_bias=-10.0, init_logit_scale=float(np.log(10.0)),
        vision_cfg=dict(image_size=224, timm_model_name="vlprompt_tiny_siglip", timm_pool="map", timm_proj="none"),
        text_cfg=dict(_TEXT, vocab_size=32000, context_length=64, no_causal_mask=True, pool_type="last", proj_bias=True,
                      norm_kwargs={"eps": 1e-6}),
    ),
    "eva02": dict(
        embed_dim=40,
        vision_cfg=dict(image_size=224, timm_model_name="vlprompt_tiny_eva02", timm_pool="token", timm_proj=None),
        text_cfg=dict(_TEXT, context_length=77),
    ),
    "pecore": dict(
        embed_dim=40,
        vision_cfg=dict(image_size=224, timm_model_name="vlprompt_tiny_pecore", timm_pool="map", timm_proj=None),
        text_cfg=dict(_TEXT, context_length=32),
    ),
}


def build_tiny(family, seed=20240101):
    """A small random-weight ``CustomTextCLIP`` of ``family`` (``siglip``, ``eva02``, ``pecore``)."""
    import open_clip

    from ..tokenizer import ClipBPETokenizer, NoStartBPETokenizer

    _register()
    cfg = TINY_FAMILIES[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CustomTextCLIP(**cfg)
    ctx = cfg["text_cfg"]["context_length"]
    if family == "siglip":
        tok = NoStartBPETokenizer(ctx, vocab_size=cfg["text_cfg"]["vocab_size"])
    else:
        tok = ClipBPETokenizer(ctx)
    object.__setattr__(model, "vlprompt_tokenizer", tok)
    from ..backbone import adapt_model

    return adapt_model(model)


def build_siglip_tiny(**_):
    return build_tiny("siglip")


def build_eva02_tiny(**_):
    return build_tiny("eva02")


def build_pecore_tiny(**_):
    return build_tiny("pecore")


def build_rn_tiny(seed=20240101, **_):
    """A small random-weight open_clip ``CLIP`` with a ModifiedResNet image tower (see the module docstring)."""
    import open_clip

    from ..backbone import adapt_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(
            embed_dim=40, quick_gelu=True,
            vision_cfg=dict(image_size=224, layers=(1, 1, 1, 1), width=8, head_width=32),
            text_cfg=dict(_TEXT, context_length=77),
        )
    return adapt_model(model)


def build_timm_resnet_tiny(seed=20240101, **_):
    """A small random-weight ``CustomTextCLIP`` with a timm ``ResNet`` image trunk (see the module docstring)."""
    import open_clip

    from ..backbone import adapt_model

    _register()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CustomTextCLIP(
            embed_dim=40,
            vision_cfg=dict(image_size=224, timm_model_name="vlprompt_tiny_resnet", timm_pool="avg", timm_proj=None),
            text_cfg=dict(_TEXT, context_length=77),
        )
    return adapt_model(model)
