"""Exact fast paths for open_clip's ``ResidualAttentionBlock`` used by the prompted encoders.

Why: open_clip's blocks call ``nn.MultiheadAttention(batch_first=True)``, which transposes its input
to a sequence-first, non-contiguous view. When that input requires grad (VPT, IVLP, MaPLe: the
prompts make every block's input require grad) ``F.linear`` on the view runs as ``L`` small batched
GEMMs instead of one GEMM. :func:`block_forward` computes the same block with one contiguous
``(N*L, E)`` in-projection and a direct :func:`torch.nn.functional.scaled_dot_product_attention`
call: same operations (``ln_1``, attention, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``; the additive
float mask added to the scores before the softmax), only grouped differently, so results agree to
float rounding (tested to 1e-6 in fp32, gradients included).

:func:`prefix_block_forward` is the same block for a batch of sequences that all start with one shared
prefix: the prefix rows are computed once (batch 1) and the other rows attend to the prefix's keys and
values broadcast over the batch. With a causal mask this is exact (prefix positions never attend to
later positions, so their states are the same for every sequence); see
:class:`vlprompt.clip.prompted.PromptedTextEncoder`.

:func:`fast_block_reason` says why a block is *not* eligible (``None`` when it is); the encoders then
call the block's own ``forward`` so that numerics never change silently:

* any block type other than open_clip's ``ResidualAttentionBlock`` (``CustomResidualAttentionBlock``
  with qk-norm / scaled cosine attention, timm or Hugging Face blocks, ...);
* cross-attention blocks (``ln_1_kv``), attention with separate k/v dims, ``bias_k``/``bias_v`` or
  ``add_zero_attn``, or attention dropout active in training mode;
* a block (or its attention) with forward hooks, or global module hooks: hooks expect the block's own
  ``forward`` to run (the tests use them to inspect block inputs). Global hooks (``FlopCounterMode``, a
  profiler's module tracker) print one warning line the first time they switch the fast paths off.
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module_mod

__all__ = ["fast_block_reason", "block_forward", "prefix_block_forward", "rows_block_forward", "blocks_fast_reason"]

_RAB = None


def _rab_class():
    global _RAB
    if _RAB is None:
        from open_clip.transformer import ResidualAttentionBlock

        _RAB = ResidualAttentionBlock
    return _RAB


def _has_hooks(m):
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None))


def _global_hooks():
    return bool(getattr(_module_mod, "_global_forward_hooks", None) or getattr(_module_mod, "_global_forward_pre_hooks", None))


def fast_block_reason(block):
    """``None`` if :func:`block_forward` computes exactly ``block(x, attn_mask=...)``, else why not."""
    if type(block) is not _rab_class():
        return f"{type(block).__name__} is not open_clip's ResidualAttentionBlock"
    if hasattr(block, "ln_1_kv"):
        return "cross-attention block"
    attn = block.attn
    if type(attn) is not nn.MultiheadAttention:
        return f"attention is {type(attn).__name__}, not nn.MultiheadAttention"
    if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
        return "attention with separate q/k/v projections"
    if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
        return "attention with bias_k/bias_v/add_zero_attn"
    if attn.dropout > 0 and attn.training:
        return "attention dropout in training mode"
    if _has_hooks(block) or _has_hooks(attn):
        return "the block has forward hooks"
    return None


#: set once the global-hooks notice has been printed (one line per process)
_GLOBAL_HOOKS_NOTICE = {"shown": False}

GLOBAL_HOOKS_NOTICE = (
    "Warning: global module forward hooks are registered (e.g. torch.utils.flop_counter.FlopCounterMode or a "
    "profiler's module tracker), so the prompted encoders run open_clip's own block forward instead of "
    "vlprompt's exact fast paths while they are (same results, slower; counts and timings then describe the "
    "slower path). To keep the fast paths, hook the modules you need (module.register_forward_hook) instead "
    "of all modules."
)


def _notice_global_hooks():
    if not _GLOBAL_HOOKS_NOTICE["shown"]:
        _GLOBAL_HOOKS_NOTICE["shown"] = True
        print(GLOBAL_HOOKS_NOTICE, file=sys.stderr, flush=True)


def blocks_fast_reason(blocks):
    """``None`` if every block in ``blocks`` is eligible (and no global hooks are set), else the first reason.

    Global module hooks switch the fast paths off (a hook expects the block's own ``forward``); the first
    time that happens in a process, one warning line on stderr says so (:data:`GLOBAL_HOOKS_NOTICE`)."""
    if _global_hooks():
        _notice_global_hooks()
        return "global module forward hooks are registered"
    for i, b in enumerate(blocks):
        r = fast_block_reason(b)
        if r is not None:
            return f"block {i}: {r}"
    return None


def _heads(t, N, L, parts, H, E):
    """(N*L, parts*E) projections -> (parts, N, H, L, E/H)."""
    return t.view(N, L, parts, H, E // H).permute(2, 0, 3, 1, 4)


def _qkv(block, h):
    """ln_1-normed ``h`` (N, L, E) -> q, k, v each (N, H, L, E/H), via one (N*L, E) GEMM."""
    attn = block.attn
    N, L, E = h.shape
    qkv = _heads(F.linear(h.reshape(N * L, E), attn.in_proj_weight, attn.in_proj_bias), N, L, 3, attn.num_heads, E)
    return qkv[0], qkv[1], qkv[2]


def _q(block, h):
    """ln_1-normed query rows ``h`` (N, R, E) -> q (N, H, R, E/H): the first third of the in-projection."""
    attn = block.attn
    N, R, E = h.shape
    b = attn.in_proj_bias
    q = F.linear(h.reshape(N * R, E), attn.in_proj_weight[:E], None if b is None else b[:E])
    return _heads(q, N, R, 1, attn.num_heads, E)[0]


def _kv(block, h):
    """ln_1-normed ``h`` (N, L, E) -> k, v each (N, H, L, E/H): the last two thirds of the in-projection."""
    attn = block.attn
    N, L, E = h.shape
    b = attn.in_proj_bias
    kv = F.linear(h.reshape(N * L, E), attn.in_proj_weight[E:], None if b is None else b[E:])
    kv = _heads(kv, N, L, 2, attn.num_heads, E)
    return kv[0], kv[1]


def _attend(block, q, k, v, mask, N, L, E):
    attn = block.attn
    if mask is not None:
        mask = mask.to(q.dtype) if mask.dtype != torch.bool else mask
    p = attn.dropout if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    o = o.transpose(1, 2).reshape(N * L, E)
    return F.linear(o, attn.out_proj.weight, attn.out_proj.bias).view(N, L, E)


def _finish(block, x, o):
    x = x + block.ls_1(o)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(block, x, attn_mask=None, n_out=None):
    """``block(x, attn_mask=attn_mask)`` for a batch-first ``x`` (N, L, E). ``attn_mask`` (L, L): additive
    float, or bool with ``nn.MultiheadAttention``'s meaning (True = may *not* attend).

    ``n_out`` (optional int): return only the first ``n_out`` positions' outputs (N, n_out, E); every
    position still serves as key and value, so these rows are exactly those of the full block. The
    other rows' queries, attention outputs, out-projection and MLP are not computed: the encoders use
    this where those rows are discarded next (deep prompts replaced at the next block, every token but
    the class token after the last block)."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill(attn_mask, float("-inf"))
    N, L, E = x.shape
    h = block.ln_1(x)
    if n_out is None or n_out >= L:
        q, k, v = _qkv(block, h)
        o = _attend(block, q, k, v, attn_mask, N, L, E)
        return _finish(block, x, o)
    R = int(n_out)
    k, v = _kv(block, h)
    q = _q(block, h[:, :R])
    o = _attend(block, q, k, v, None if attn_mask is None else attn_mask[:R], N, R, E)
    return _finish(block, x[:, :R], o)


def prefix_block_forward(block, prefix, rows, prefix_mask, rows_mask):
    """One block for sequences ``[prefix | rows[j]]`` sharing ``prefix``.

    ``prefix`` (1, P, E): the shared first P positions; ``rows``: a list of (N_j, S_j, E) tensors (the
    positions after the prefix, grouped by length); ``prefix_mask`` (P, P) and ``rows_mask[j]``
    (S_j, P + S_j): the additive mask rows of the full mask for those positions. Returns the new
    ``(prefix, rows)``; equal to running the block on the full (padded) sequences when the mask is causal.
    """
    P, E = prefix.shape[1], prefix.shape[2]
    hp = block.ln_1(prefix)
    qp, kp, vp = _qkv(block, hp)
    new_prefix = _finish(block, prefix, _attend(block, qp, kp, vp, prefix_mask, 1, P, E))
    new_rows = []
    for x, m in zip(rows, rows_mask):
        N, S, _ = x.shape
        q, k, v = _qkv(block, block.ln_1(x))
        k = torch.cat([kp.expand(N, -1, -1, -1), k], dim=2)
        v = torch.cat([vp.expand(N, -1, -1, -1), v], dim=2)
        new_rows.append(_finish(block, x, _attend(block, q, k, v, m, N, S, E)))
    return new_prefix, new_rows


def rows_block_forward(block, x, pos, attn_mask=None, prefix=None):
    """One block's output at one position per sequence: (N, E), row ``pos[n]`` of the block's output for
    sequence ``[prefix | x[n]]``.

    ``x`` (N, S, E); ``pos`` (N,) long positions within ``x``; ``attn_mask`` (S, P + S): the additive
    mask rows of ``x``'s positions (P = 0 without ``prefix``); ``prefix`` (1, P, E): shared leading
    positions (keys and values only). Every position serves as key and value; only the selected rows'
    queries, attention, out-projection and MLP are computed. The text encoder uses it in the last block,
    where only the EOT state is read (exact: the other rows' outputs are never used)."""
    N, S, E = x.shape
    ar = torch.arange(N, device=x.device)
    h = block.ln_1(x)
    k, v = _kv(block, h)
    if prefix is not None and prefix.shape[1] > 0:
        kp, vp = _kv(block, block.ln_1(prefix))
        k = torch.cat([kp.expand(N, -1, -1, -1), k], dim=2)
        v = torch.cat([vp.expand(N, -1, -1, -1), v], dim=2)
    q = _q(block, h[ar, pos].unsqueeze(1))
    m = None if attn_mask is None else attn_mask[pos].unsqueeze(1).unsqueeze(1)  # (N, 1, 1, P + S)
    o = _attend(block, q, k, v, m, N, 1, E)
    return _finish(block, x[ar, pos].unsqueeze(1), o)[:, 0]
