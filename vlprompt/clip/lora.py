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
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ArgError

__all__ = ["POSITIONS", "PROJECTIONS", "lora_block_indices", "LoRAAdapter", "LoRALinear", "LoRAMultiheadAttention",
           "LoRAAdapters", "apply_lora", "official_lora_keys"]

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
    towers = {"text": clip_model.transformer}
    visual = clip_model.visual
    if hasattr(visual, "transformer") and hasattr(visual, "class_embedding"):
        towers["vision"] = visual.transformer
    return towers


def apply_lora(clip_model, r=2, alpha=1.0, dropout=0.25, encoders=("text", "vision"), position="all",
               params=("q", "k", "v")):
    """Put LoRA adapters into ``clip_model`` (in place) and return their :class:`LoRAAdapters`.

    ``encoders``: towers to adapt (official ``--encoder``: text, vision or both); ``position``: one of
    :data:`POSITIONS` (official ``--position``); ``params``: letters of :data:`PROJECTIONS` (official
    ``--params``). Defaults are the official ones (r 2, alpha 1, dropout 0.25, q/k/v, all blocks,
    both towers). The vision tower must be a ViT.
    """
    encoders = [encoders] if isinstance(encoders, str) else list(encoders)
    if not encoders or any(e not in ("text", "vision") for e in encoders):
        raise ArgError("encoders", f"must be a non-empty subset of ('text', 'vision'), got {encoders}")
    params = [params] if isinstance(params, str) else list(params)
    bad = [p for p in params if p not in PROJECTIONS]
    if not params or bad:
        raise ArgError("params", f"must be letters among {sorted(PROJECTIONS)}, got {params}")
    names = [PROJECTIONS[p] for p in dict.fromkeys(params)]
    towers = _towers(clip_model)
    container = LoRAAdapters()
    for tower in ("text", "vision"):
        if tower not in encoders:
            continue
        if tower not in towers:
            raise ArgError("encoders", "LoRA on the vision tower needs a ViT backbone (e.g. ViT-B/16), not "
                                       f"a {type(clip_model.visual).__name__}")
        blocks = towers[tower].resblocks
        for i in lora_block_indices(position, len(blocks)):
            mha = blocks[i].attn
            if not isinstance(mha, nn.MultiheadAttention):
                raise ArgError("clip_model", f"{tower} block {i}: attention is a {type(mha).__name__}, not an "
                                             "nn.MultiheadAttention (LoRA applied twice?)")
            e = mha.embed_dim
            adapters = nn.ModuleDict({n: LoRAAdapter(e, e, r, alpha, dropout) for n in names})
            adapters.to(device=mha.in_proj_weight.device)
            blocks[i].attn = LoRAMultiheadAttention(mha, adapters)
            getattr(container, tower)[str(i)] = adapters
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
