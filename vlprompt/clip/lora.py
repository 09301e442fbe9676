"""Low-rank adapters (LoRA) on the attention projections of the CLIP towers (CLIP-LoRA's placement).

Shared block (plain arguments, no config nodes). It follows the official CLIP-LoRA code
(MaxZanella/CLIP-LoRA, ``loralib/layers.py``: ``PlainMultiheadAttentionLoRA``, ``LinearLoRA``):

* every selected ``nn.MultiheadAttention`` of a residual block is replaced by
  :class:`LoRAMultiheadAttention`: the packed ``in_proj`` is cut into frozen ``q_proj`` / ``k_proj`` /
  ``v_proj`` Linear layers (plus the frozen output ``proj``), and attention runs through
  ``F.scaled_dot_product_attention`` (numerically equal to ``nn.MultiheadAttention`` up to fp32
  rounding);
* a LoRA projection computes ``W x + b + s * (drop(x) @ (B A)^T)`` in training with
  ``s = alpha / sqrt(r)`` (not ``alpha / r``), dropout only on the LoRA branch's input, and
  ``(W + s * B A) x + b`` in evaluation (the official code merges ``W += s B A`` in place at
  ``eval()``; here the merged weight is formed on the fly, the same arithmetic, so the frozen weights
  are never written) and whenever the dropout rate is 0;
* ``w_lora_A`` (r, in) starts like an ``nn.Linear`` weight (``kaiming_uniform_(a=sqrt(5))``),
  ``w_lora_B`` (out, r) at zero, so an adapted model starts equal to the frozen one.

The learnable parameters live in one container, :class:`LoRAAdapters` (``text.<block>.<proj>`` and
``vision.<block>.<proj>`` with ``proj`` in ``q_proj``, ``k_proj``, ``v_proj``, ``proj``); the frozen
CLIP only references them. :func:`official_lora_keys` maps the official checkpoint formats onto it.

Towers of the other backbone families (docs/METHODS.md, "Backbone families"), found from the model's
structure (``backbone.tower_kinds``), with the same placement (one adapter per projection, each with
its own dropout, on the blocks of ``position``):

* text towers of ``CustomTextCLIP`` (SigLIP, EVA02, PE-Core): open_clip ``TextTransformer`` blocks with
  ``nn.MultiheadAttention``, adapted as CLIP's (no causal mask is simply no ``attn_mask``);
* timm attention with a **fused** ``qkv`` Linear (timm ``Attention`` of SigLIP's ``VisionTransformer``,
  ``AttentionRope`` of PE-Core): the Linear is wrapped by :class:`LoRAFusedQKV`, which adds each
  adapter to its third of the output (q rows ``0..d-1``, k ``d..2d-1``, v ``2d..3d-1``: the layout timm
  reshapes into q, k, v), i.e. exactly three LoRA projections on the sliced weight;
* timm attention with **separate** ``q_proj`` / ``k_proj`` / ``v_proj`` Linears (``EvaAttention`` of
  EVA02): each is wrapped by :class:`LoRALinear`; ``proj`` (the output projection, official ``o``) is
  wrapped the same way in every timm attention.

Attention-pool heads (SigLIP's and PE-Core's MAP head) are not transformer blocks and get no adapters,
as CLIP's final projection gets none. Image towers without transformer blocks (ModifiedResNet, timm
ConvNeXt / ResNet trunks) take text-tower LoRA only; an attention whose forward reads a fused weight
directly (timm ``EvaAttention`` with a fused ``qkv`` and separate q/v biases, EVA01-CLIP) is refused.
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import VISION_PROMPT_FAMILIES, tower_kinds
from .errors import ArgError

__all__ = ["POSITIONS", "PROJECTIONS", "lora_block_indices", "LoRAAdapter", "LoRALinear", "LoRAFusedQKV",
           "LoRAMultiheadAttention", "LoRAAdapters", "apply_lora", "official_lora_keys", "LORA_IMAGE_TOWERS"]

#: image towers LoRA can adapt (the transformer image towers of the prompt-capable families)
LORA_IMAGE_TOWERS = VISION_PROMPT_FAMILIES

#: the official ``--position`` choices (run_utils.get_arguments)
POSITIONS = ("bottom", "mid", "up", "half-up", "half-bottom", "all", "top3")
#: official ``--params`` letters -> projection module names
PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}


def lora_block_indices(position, n_layers):
    """Block indices (0-based) of ``position`` in a tower of ``n_layers`` blocks.

    For 12 blocks these are the official lists (``INDEX_POSITIONS_TEXT`` / ``INDEX_POSITIONS_VISION``);
    for ViT-L/14's 24 vision blocks ``half-up`` / ``half-bottom`` / ``all`` equal the official lists too.
    Other depths follow the same rule (bottom = first 4, mid = 4..7, up = last 4, top3 = last 3).
    """
    n = int(n_layers)
    table = {
        "all": list(range(n)),
        "half-up": list(range(n // 2, n)),
        "half-bottom": list(range(n // 2)),
        "bottom": list(range(4)),
        "mid": list(range(4, 8)),
        "up": list(range(n - 4, n)),
        "top3": list(range(n - 3, n)),
    }
    if position not in table:
        raise ArgError("position", f"must be one of {POSITIONS}, got '{position}'")
    idx = table[position]
    if not idx or min(idx) < 0 or max(idx) >= n:
        raise ArgError("position", f"'{position}' needs more than the {n} blocks of this tower")
    return idx


class LoRAAdapter(nn.Module):
    """The learnable part of one LoRA projection: ``w_lora_A`` (r, in), ``w_lora_B`` (out, r), the
    scaling ``alpha / sqrt(r)`` and the dropout on the branch input (active in training mode)."""

    def __init__(self, in_features, out_features, r=2, alpha=1.0, dropout=0.0):
        super().__init__()
        r = int(r)
        if r < 1:
            raise ArgError("r", f"the LoRA rank must be >= 1, got {r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ArgError("dropout", f"the LoRA dropout rate must be in [0, 1), got {dropout}")
        self.r, self.alpha = r, alpha
        self.scaling = alpha / math.sqrt(r)
        self.w_lora_A = nn.Parameter(torch.zeros(r, in_features))
        self.w_lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(float(dropout)) if float(dropout) > 0 else None

    def merged_BA(self):
        """``B @ A`` (out, in), unscaled."""
        return self.w_lora_B @ self.w_lora_A

    def extra_repr(self):
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.6g}"


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a :class:`LoRAAdapter` (referenced, owned by the container)."""

    def __init__(self, base, adapter):
        super().__init__()
        self.base = base
        object.__setattr__(self, "adapter", adapter)  # not a child: the frozen tree never owns LoRA weights

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def forward(self, x):
        a = self.adapter
        w = self.base.weight
        if a.training and a.dropout is not None:
            out = F.linear(x, w, self.base.bias)
            delta = a.merged_BA()
            return out + torch.matmul(a.dropout(x), delta.t().to(x.dtype)) * a.scaling
        merged = w + (a.merged_BA() * a.scaling).to(w.dtype)
        return F.linear(x, merged, self.base.bias)


class LoRAFusedQKV(nn.Module):
    """A frozen fused ``qkv`` ``nn.Linear`` (out = 3 d) with LoRA on some of its q / k / v thirds.

    ``adapters`` maps ``q_proj`` / ``k_proj`` / ``v_proj`` to :class:`LoRAAdapter` s of shape (d, in).
    Output: ``W x + b`` with, for each adapted third ``p``, ``s * drop_p(x) @ (B_p A_p)^T`` added to its
    columns in training (each adapter's own dropout, as three separate LoRA projections), and
    ``(W + s [B_q A_q; B_k A_k; B_v A_v]) x + b`` (zero rows for unadapted thirds) otherwise: the
    arithmetic of :class:`LoRALinear` applied to each third of the weight.
    """

    PARTS = ("q_proj", "k_proj", "v_proj")

    def __init__(self, base, adapters):
        super().__init__()
        if base.out_features % 3:
            raise ArgError("attention", f"a fused qkv Linear has 3 x d outputs, got {base.out_features}")
        bad = [n for n in adapters if n not in self.PARTS]
        if bad:
            raise ArgError("params", f"a fused qkv projection holds only {self.PARTS}, got {bad}")
        self.base = base
        self.part = base.out_features // 3
        object.__setattr__(self, "adapters", dict(adapters))  # owned by the container

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def forward(self, x):
        w, b = self.base.weight, self.base.bias
        ads = [self.adapters.get(n) for n in self.PARTS]
        if not any(a is not None and a.training and a.dropout is not None for a in ads):
            rows = [(a.merged_BA() * a.scaling).to(w.dtype) if a is not None else w.new_zeros(self.part, w.shape[1])
                    for a in ads]
            return F.linear(x, w + torch.cat(rows, dim=0), b)
        out = F.linear(x, w, b)
        pieces = []
        for i, a in enumerate(ads):
            o = out[..., i * self.part:(i + 1) * self.part]
            if a is not None:
                inp = a.dropout(x) if (a.training and a.dropout is not None) else x
                o = o + torch.matmul(inp, a.merged_BA().t().to(x.dtype)) * a.scaling
            pieces.append(o)
        return torch.cat(pieces, dim=-1)


def _linear_like(weight, bias):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.requires_grad_(False)
    return lin


class LoRAMultiheadAttention(nn.Module):
    """Drop-in for a block's ``nn.MultiheadAttention`` with LoRA on some of q/k/v/out.

    ``adapters`` maps projection names (``q_proj``, ``k_proj``, ``v_proj``, ``proj``) to
    :class:`LoRAAdapter` s. Call signature and return value as ``nn.MultiheadAttention`` (attention
    weights are not returned: ``(output, None)``); ``key_padding_mask`` is not supported.
    """

    def __init__(self, mha, adapters):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ArgError("attention", "LoRA needs attention with a packed in_proj (q/k/v of the same width)")
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.head_dim = e, mha.num_heads, mha.head_dim
        self.batch_first = mha.batch_first
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias
        b = b.detach() if b is not None else None
        projs = {
            "q_proj": _linear_like(w[:e], None if b is None else b[:e]),
            "k_proj": _linear_like(w[e:2 * e], None if b is None else b[e:2 * e]),
            "v_proj": _linear_like(w[2 * e:], None if b is None else b[2 * e:]),
            "proj": _linear_like(mha.out_proj.weight.detach(),
                                 None if mha.out_proj.bias is None else mha.out_proj.bias.detach()),
        }
        for name, lin in projs.items():
            setattr(self, name, LoRALinear(lin, adapters[name]) if name in adapters else lin)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None:
            raise ValueError("LoRAMultiheadAttention does not support key_padding_mask (CLIP never uses one)")
        if attn_mask is not None and is_causal:
            raise ValueError("give either attn_mask or is_causal, not both")
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        tgt_len, bsz, embed_dim = query.shape
        src_len = key.shape[0]
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill_(attn_mask, float("-inf"))
            else:
                attn_mask = attn_mask.to(q.dtype)
            if attn_mask.dim() == 2:
                if attn_mask.shape != (tgt_len, src_len):
                    raise ValueError(f"attn_mask is {tuple(attn_mask.shape)}, expected {(tgt_len, src_len)}")
                attn_mask = attn_mask.unsqueeze(0).unsqueeze(0)
            elif attn_mask.dim() == 3:
                if attn_mask.shape != (bsz * self.num_heads, tgt_len, src_len):
                    raise ValueError(f"attn_mask is {tuple(attn_mask.shape)}, expected "
                                     f"{(bsz * self.num_heads, tgt_len, src_len)}")
                attn_mask = attn_mask.view(bsz, self.num_heads, tgt_len, src_len)
            else:
                raise ValueError(f"attn_mask must have 2 or 3 dimensions, got {attn_mask.dim()}")
        h, d = self.num_heads, self.head_dim
        q = q.view(tgt_len, bsz * h, d).transpose(0, 1).reshape(bsz, h, tgt_len, d)
        k = k.view(src_len, bsz * h, d).transpose(0, 1).reshape(bsz, h, src_len, d)
        v = v.view(src_len, bsz * h, d).transpose(0, 1).reshape(bsz, h, src_len, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal)
        out = out.permute(2, 0, 1, 3).contiguous().view(bsz * tgt_len, embed_dim)
        out = self.proj(out).view(tgt_len, bsz, -1)
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, None


class LoRAAdapters(nn.Module):
    """Container of every LoRA adapter: ``text.<i>.<proj>`` and ``vision.<i>.<proj>``.

    Its state_dict holds only the LoRA matrices (``text.0.q_proj.w_lora_A`` ...), which do not depend
    on the class list.
    """

    def __init__(self):
        super().__init__()
        self.text = nn.ModuleDict()
        self.vision = nn.ModuleDict()

    def layout(self):
        """``{tower: {block index: [projection names]}}``."""
        return {t: {int(i): list(m.keys()) for i, m in getattr(self, t).items()} for t in ("text", "vision")}


def _towers(clip_model):
    """``{tower: (style, blocks)}`` of the towers LoRA can adapt (style ``mha``: open_clip residual blocks
    with ``nn.MultiheadAttention``; ``timm``: timm blocks) and the image tower's kind."""
    towers = {}
    # open_clip CLIP holds its text transformer itself, CustomTextCLIP in ``model.text``
    tt = clip_model if hasattr(clip_model, "transformer") else getattr(clip_model, "text", None)
    if hasattr(getattr(tt, "transformer", None), "resblocks"):
        towers["text"] = ("mha", tt.transformer.resblocks)
    vision_kind = tower_kinds(clip_model)[1]
    visual = clip_model.visual
    if vision_kind == "clip_vit":
        towers["vision"] = ("mha", visual.transformer.resblocks)
    elif vision_kind in ("timm_vit", "timm_eva"):
        towers["vision"] = ("timm", visual.trunk.blocks)
    return towers, vision_kind


def _plan_mha(block, names, make, where):
    """Check one open_clip residual block; returns ``apply() -> adapters`` (changes nothing before)."""
    mha = block.attn
    if not isinstance(mha, nn.MultiheadAttention):
        raise ArgError("clip_model", f"{where}: attention is a {type(mha).__name__}, not an "
                                     "nn.MultiheadAttention (LoRA applied twice?)")
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        raise ArgError("attention", f"{where}: LoRA needs attention with a packed in_proj (q/k/v of the same width)")

    def apply():
        e = mha.embed_dim
        adapters = nn.ModuleDict({n: make(e, e) for n in names})
        adapters.to(device=mha.in_proj_weight.device)
        block.attn = LoRAMultiheadAttention(mha, adapters)
        return adapters

    return apply


def _plan_timm(block, names, make, where):
    """Check one timm block's attention; returns ``apply() -> adapters`` (changes nothing before)."""
    attn = getattr(block, "attn", None)
    qkv = getattr(attn, "qkv", None)
    parts = [n for n in names if n != "proj"]
    if isinstance(qkv, LoRAFusedQKV) or any(isinstance(getattr(attn, n, None), LoRALinear)
                                           for n in ("q_proj", "k_proj", "v_proj", "proj")):
        raise ArgError("clip_model", f"{where}: this attention already holds LoRA adapters (LoRA applied twice?)")
    if isinstance(qkv, nn.Linear):
        if getattr(attn, "q_bias", None) is not None and not getattr(attn, "qkv_bias_separate", False):
            raise ArgError("clip_model", f"{where}: {type(attn).__name__} computes its fused qkv projection from "
                                         "the weight directly (separate q/v biases, e.g. EVA01-CLIP), which LoRA "
                                         "cannot wrap; supported: fused qkv Linears (SigLIP, PE-Core) and separate "
                                         "q/k/v Linears (EVA02)")
        if qkv.out_features % 3:
            raise ArgError("clip_model", f"{where}: fused qkv Linear with {qkv.out_features} outputs (not 3 x d)")
        shapes = {n: (qkv.in_features, qkv.out_features // 3) for n in parts}
    elif all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
        shapes = {n: (getattr(attn, n).in_features, getattr(attn, n).out_features) for n in parts}
    else:
        raise ArgError("clip_model", f"{where}: attention {type(attn).__name__} has neither a fused qkv Linear nor "
                                     "q_proj/k_proj/v_proj Linears; LoRA supports timm Attention, AttentionRope "
                                     "and EvaAttention")
    if "proj" in names:
        if not isinstance(getattr(attn, "proj", None), nn.Linear):
            raise ArgError("params", f"{where}: attention {type(attn).__name__} has no output Linear 'proj'")
        shapes["proj"] = (attn.proj.in_features, attn.proj.out_features)

    def apply():
        # creation order = the order of ``params`` (as for nn.MultiheadAttention: the same RNG draws)
        adapters = nn.ModuleDict({n: make(*shapes[n]) for n in names})
        adapters.to(device=next(attn.parameters()).device)
        if isinstance(qkv, nn.Linear):
            if parts:
                attn.qkv = LoRAFusedQKV(qkv, {n: adapters[n] for n in parts})
        else:
            for n in parts:
                setattr(attn, n, LoRALinear(getattr(attn, n), adapters[n]))
        if "proj" in names:
            attn.proj = LoRALinear(attn.proj, adapters["proj"])
        return adapters

    return apply


def apply_lora(clip_model, r=2, alpha=1.0, dropout=0.25, encoders=("text", "vision"), position="all",
               params=("q", "k", "v")):
    """Put LoRA adapters into ``clip_model`` (in place) and return their :class:`LoRAAdapters`.

    ``encoders``: towers to adapt (official ``--encoder``: text, vision or both); ``position``: one of
    :data:`POSITIONS` (official ``--position``); ``params``: letters of :data:`PROJECTIONS` (official
    ``--params``). Defaults are the official ones (r 2, alpha 1, dropout 0.25, q/k/v, all blocks,
    both towers). The image tower must be a transformer (:data:`LORA_IMAGE_TOWERS`); the towers of
    every family are found from the model's structure (module docstring).
    """
    encoders = [encoders] if isinstance(encoders, str) else list(encoders)
    if not encoders or any(e not in ("text", "vision") for e in encoders):
        raise ArgError("encoders", f"must be a non-empty subset of ('text', 'vision'), got {encoders}")
    params = [params] if isinstance(params, str) else list(params)
    bad = [p for p in params if p not in PROJECTIONS]
    if not params or bad:
        raise ArgError("params", f"must be letters among {sorted(PROJECTIONS)}, got {params}")
    names = [PROJECTIONS[p] for p in dict.fromkeys(params)]
    towers, vision_kind = _towers(clip_model)
    container = LoRAAdapters()

    def make(i, o):
        return LoRAAdapter(i, o, r, alpha, dropout)

    for tower in encoders:  # every check before the first change: an error leaves the model as it was
        if tower not in towers:
            if tower == "text":
                raise ArgError("encoders", "LoRA on the text tower needs an open_clip text transformer; this "
                                           "backbone's text tower is not one")
            visual = clip_model.visual
            name = type(getattr(visual, "trunk", visual)).__name__
            raise ArgError("encoders", f"LoRA on the vision tower needs a ViT (transformer) image tower, and this "
                                       f"backbone's is a {name}; supported image towers: "
                                       f"{'; '.join(LORA_IMAGE_TOWERS)}. Adapt the text tower only (encoder "
                                       "'text') or use such a backbone (e.g. ViT-B/16, ViT-B-16-SigLIP, EVA02-B-16)")
    plans = []
    for tower in ("text", "vision"):
        if tower not in encoders:
            continue
        style, blocks = towers[tower]
        plan = _plan_mha if style == "mha" else _plan_timm
        for i in lora_block_indices(position, len(blocks)):
            plans.append((tower, i, plan(blocks[i], names, make, f"{tower} block {i}")))
    for tower, i, apply in plans:
        getattr(container, tower)[str(i)] = apply()
    return container


def official_lora_keys(state, layout):
    """Map an official CLIP-LoRA checkpoint onto :class:`LoRAAdapters` keys.

    ``state`` is either the file written by the official ``save_lora`` (``{"weights": {"layer_<n>":
    {"q_proj": {"w_lora_A", "w_lora_B"}, ...}}, "metadata": ...}``, layers numbered text blocks first,
    then vision blocks, in block order) or a flat ``lora_state_dict`` of the official model
    (``transformer.resblocks.<i>.attn.q_proj.w_lora_A``, ``visual.transformer.resblocks.<i>...``).
    ``layout`` is :meth:`LoRAAdapters.layout`. Returns a flat dict (unknown keys are left as they are).
    """
    out = {}
    if isinstance(state.get("weights"), dict):
        order = [(t, i) for t in ("text", "vision") for i in sorted(layout[t])]
        for n, (tower, i) in enumerate(order):
            layer = state["weights"].get(f"layer_{n}", {})
            for proj, mats in layer.items():
                for mat, value in mats.items():
                    out[f"{tower}.{i}.{proj}.{mat}"] = value
        return out
    pattern = re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\.attn\.(q_proj|k_proj|v_proj|proj)\.(w_lora_A|w_lora_B)$")
    for k, v in state.items():
        m = pattern.search(k)
        if m:
            tower = "vision" if re.search(r"(?:^|\.)visual\.transformer\.resblocks\.", k) else "text"
            out[f"{tower}.{int(m.group(1))}.{m.group(2)}.{m.group(3)}"] = v
        else:
            out[k] = v
    return out
