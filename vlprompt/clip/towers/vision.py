"""Prompted image encoders for open_clip ``TimmModel`` towers (``model.visual.trunk`` is a timm model).

Same interface as :class:`vlprompt.clip.prompted.PromptedVisionEncoder`: ``forward(images, prompts=None,
deep_prompts=None)`` -> (B, d_embed), ``dtype``, ``width``, ``n_prompts``, ``depth``, ``is_vit``. Without
prompts (depth 0) every encoder is exactly ``clip_model.encode_image``.

* :class:`TimmViTPromptedEncoder` (timm ``VisionTransformer``: SigLIP, SigLIP2). Prompts are appended
  after the patch tokens (after the positional embedding and patch dropout, before ``norm_pre``; no
  positional embedding on prompts); deep prompts replace the last ``N`` tokens at the input of
  ``blocks[i]``. Pooling: SigLIP has no class token; its MAP attention-pool head reads every token,
  prompts included. Class-token pooling (``token``) is supported too.
* :class:`TimmEvaPromptedEncoder` (timm ``Eva``: EVA02, PE-Core). Rotary position embeddings are
  applied to the tokens after the ``num_prefix_tokens`` prefix (class token) and must line up with the
  patch grid, so prompts are **prefix tokens**: inserted right after the class token (positions
  ``1..N``), with every block's attention told ``num_prefix_tokens + N`` for the pass (restored after,
  also on errors). Deep prompts replace positions ``1..N`` at the input of ``blocks[i]``. Pooling:
  class token (EVA02) or MAP head over every token (PE-Core).
* :class:`PlainVisionEncoder`: any other image tower, without prompts only.

All three are subclasses of :class:`vlprompt.clip.prompted.PromptedVisionEncoder` for its interface
only: they run their own ``__init__`` and ``forward`` (nothing of the open_clip-ViT implementation is
inherited), so code that accepts "a prompted vision encoder" (the feature store's frozen tower,
``vlprompt.features.extract.frozen_tower``) takes the image encoder of any family.

Pools that average the non-prefix tokens (``avg``, ``max``) would mix prompts into the average with a
weight that depends on N; they are refused with prompts.
"""
import contextlib

import torch
import torch.nn as nn

from ..backbone import VISION_PROMPT_FAMILIES, model_dims, tower_kinds
from ..prompted import PromptedVisionEncoder, _as_batched, check_prompt_config, check_vision_prompt_args

__all__ = ["TimmViTPromptedEncoder", "TimmEvaPromptedEncoder", "PlainVisionEncoder"]


class _TimmPromptedBase(PromptedVisionEncoder):
    vision_kind = None

    def __init__(self, clip_model, n_prompts=0, depth=0):
        nn.Module.__init__(self)  # the interface of PromptedVisionEncoder, not its open_clip-ViT set-up
        self.fast = None
        kind = tower_kinds(clip_model)[1]
        if kind != self.vision_kind:
            raise TypeError(f"{type(self).__name__} needs a {self.vision_kind} image tower, got {kind}")
        self.visual = clip_model.visual
        self.trunk = self.visual.trunk
        dims = model_dims(clip_model)
        self.is_vit = True
        self.width = dims["d_vision"]
        self.n_layers = dims["vision_layers"]
        self.n_prompts, self.depth = check_prompt_config(n_prompts, depth, self.n_layers, "vision prompt depth")
        if self.depth == 0:
            self.n_prompts = 0
        pool = "map" if getattr(self.trunk, "attn_pool", None) is not None else self.trunk.global_pool
        self.pool = pool
        if self.depth > 0 and pool not in ("map", "token"):
            raise ValueError(
                f"Vision pooling '{pool}' of this {type(self.trunk).__name__} trunk averages the tokens, prompts "
                "included; vision prompts are supported with class-token ('token') or attention-pool ('map') heads"
            )
        if self.depth > 0 and pool == "token" and not getattr(self.trunk, "num_prefix_tokens", 0):
            raise ValueError("Class-token pooling without a class token: this trunk cannot take vision prompts")

    @property
    def dtype(self):
        return self.trunk.patch_embed.proj.weight.dtype

    def _check(self, prompts, deep_prompts):
        return check_vision_prompt_args(self.depth, prompts, deep_prompts)

    def _prompt_tokens(self, prompts, batch, dtype):
        p = _as_batched(prompts, batch, self.width, "vision prompts")
        if p.shape[1] != self.n_prompts:
            raise ValueError(f"vision prompts: expected {self.n_prompts} tokens, got {p.shape[1]}")
        return p.to(dtype)

    def _deep(self, deep_prompts, i, batch, n, dtype):
        p = _as_batched(deep_prompts[i - 1], batch, self.width, f"deep vision prompt for block {i}")
        if p.shape[1] != n:
            raise ValueError(f"deep vision prompt for block {i}: expected {n} tokens, got {p.shape[1]}")
        return p.to(dtype)

    def _head(self, x):
        x = self.trunk.norm(x)
        return self.visual.head(self.trunk.forward_head(x))


class TimmViTPromptedEncoder(_TimmPromptedBase):
    """Vision prompts in a timm ``VisionTransformer`` trunk (SigLIP / SigLIP2); see the module docstring."""

    vision_kind = "timm_vit"

    def forward(self, images, prompts=None, deep_prompts=None):
        deep_prompts = self._check(prompts, deep_prompts)
        if self.depth == 0:
            return self.visual(images.to(self.dtype))
        t = self.trunk
        x = t.patch_embed(images.to(self.dtype))
        x = t._pos_embed(x)
        x = t.patch_drop(x)
        B = x.shape[0]
        p = self._prompt_tokens(prompts, B, x.dtype)
        n = p.shape[1]
        x = torch.cat([x, p], dim=1)
        x = t.norm_pre(x)
        for i, blk in enumerate(t.blocks):
            if 1 <= i <= len(deep_prompts) and deep_prompts[i - 1] is not None:
                x = torch.cat([x[:, : x.shape[1] - n], self._deep(deep_prompts, i, B, n, x.dtype)], dim=1)
            x = blk(x)
        return self._head(x)


@contextlib.contextmanager
def _prefix_tokens(blocks, count):
    """Temporarily tell every block's attention that the first ``count`` tokens are prefix tokens."""
    saved = [blk.attn.num_prefix_tokens for blk in blocks]
    try:
        for blk in blocks:
            blk.attn.num_prefix_tokens = count
        yield
    finally:
        for blk, v in zip(blocks, saved):
            blk.attn.num_prefix_tokens = v


class TimmEvaPromptedEncoder(_TimmPromptedBase):
    """Vision prompts as prefix tokens in a timm ``Eva`` trunk (EVA02, PE-Core); see the module docstring."""

    vision_kind = "timm_eva"

    def __init__(self, clip_model, n_prompts=0, depth=0):
        super().__init__(clip_model, n_prompts, depth)
        for i, blk in enumerate(self.trunk.blocks):
            if not hasattr(getattr(blk, "attn", None), "num_prefix_tokens"):
                raise TypeError(f"block {i} of this Eva trunk has no attention with num_prefix_tokens")

    def forward(self, images, prompts=None, deep_prompts=None):
        deep_prompts = self._check(prompts, deep_prompts)
        if self.depth == 0:
            return self.visual(images.to(self.dtype))
        t = self.trunk
        x = t.patch_embed(images.to(self.dtype))
        x, rope = t._pos_embed(x)
        B = x.shape[0]
        npt = t.num_prefix_tokens
        p = self._prompt_tokens(prompts, B, x.dtype)
        n = p.shape[1]
        x = torch.cat([x[:, :npt], p, x[:, npt:]], dim=1)
        x = t.norm_pre(x)
        mixed = getattr(t, "rope_mixed", False) and rope is not None
        with _prefix_tokens(t.blocks, npt + n):
            for i, blk in enumerate(t.blocks):
                if 1 <= i <= len(deep_prompts) and deep_prompts[i - 1] is not None:
                    d = self._deep(deep_prompts, i, B, n, x.dtype)
                    x = torch.cat([x[:, :npt], d, x[:, npt + n:]], dim=1)
                x = blk(x, rope=rope[i] if mixed else rope)
        return self._head(x)


class PlainVisionEncoder(PromptedVisionEncoder):
    """Any image tower, unprompted: ``forward(images)`` = ``clip_model.encode_image(images)``."""

    def __init__(self, clip_model, n_prompts=0, depth=0):
        nn.Module.__init__(self)  # the interface of PromptedVisionEncoder, not its open_clip-ViT set-up
        self.fast = None
        self.visual = clip_model.visual
        self.is_vit = False
        self.width = None
        self.n_prompts, self.depth = 0, 0
        if int(depth) > 0:
            kind = tower_kinds(clip_model)[1]
            raise ValueError(
                f"Vision prompts are not supported for this image tower ({kind.split(':', 1)[-1]}); supported "
                f"image towers: {'; '.join(VISION_PROMPT_FAMILIES)}. Use such a backbone or disable vision "
                "prompts (depth 0)."
            )

    @property
    def dtype(self):
        return next(self.visual.parameters()).dtype

    def forward(self, images, prompts=None, deep_prompts=None):
        if prompts is not None or deep_prompts:
            raise ValueError("This image tower takes no prompts")
        return self.visual(images.to(self.dtype))
