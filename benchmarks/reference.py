"""The reference arm: the way the official implementations compute a training step and an evaluation,
restated by us on top of vlprompt's trainers so that both arms share weights, inputs and code outside
the differences listed here (``with official_way(trainer): ...``):

* **text**: every class prompt padded to the full 77-token context and run through all 77 positions
  (the official ``TextEncoder`` runs ``x[K, 77, d]``), no shared prefix, no length groups;
* **blocks**: OpenAI CLIP's sequence-first residual block (``x`` as (L, N, E); ``ln_1`` ->
  ``multi_head_attention_forward`` with the causal mask -> ``ln_2`` -> ``mlp``), i.e. the arithmetic of
  the official forked ``clip/model.py``, instead of vlprompt's fast path;
* **evaluation**: text features recomputed for every test batch (the official ``CustomCLIP.forward``
  runs the text encoder on every call), no cache;
* **CoCoOp**: the per-image Python loop of the official ``CustomCLIP.forward`` (``forward_loop``) in
  training and evaluation.

What stays shared (also computed this way by the official code, or a vlprompt-only method): the
prompt learners, APLe's pass sharing between its three stages, VPT's fixed text features.
"""
import contextlib

import torch
import torch.nn.functional as F

from vlprompt.clip.prompted import _run_block as _own_block  # the blocks' own forward (official_way patches it)

__all__ = ["official_way", "official_block"]


def official_block(block, x, attn_mask, batch_first=True, fast=False):
    """OpenAI CLIP's residual block on a batch-first ``x`` (N, L, E), computed sequence-first. A block
    whose attention is not ``nn.MultiheadAttention`` (CLIP-LoRA's adapted attention, which the official
    CLIP-LoRA code also runs as its own module) runs its own forward."""
    attn = block.attn
    if type(attn) is not torch.nn.MultiheadAttention:
        return _own_block(block, x, attn_mask, batch_first, fast=False)
    x = x.transpose(0, 1).contiguous()  # (L, N, E) as in the official CLIP
    h = block.ln_1(x)
    mask = attn_mask.to(h.dtype) if attn_mask is not None else None
    o = F.multi_head_attention_forward(
        h, h, h, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False, attn_mask=mask,
    )[0]
    x = x + block.ls_1(o)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x.transpose(0, 1)


@contextlib.contextmanager
def official_way(trainer):
    """Within the block, ``trainer`` computes its step and its evaluation the official way (see module doc)."""
    from vlprompt.clip import prompted

    enc_cls = prompted.PromptedTextEncoder
    cache_cls = type(getattr(trainer.model, "text_cache", None) or prompted.TextFeatureCache())
    saved = {
        "fast": prompted.FAST_PATHS,
        "run_block": prompted._run_block,
        "forward": enc_cls.forward,
        "get": cache_cls.get,
    }
    orig_forward = enc_cls.forward

    def full_pass(self, prompts, eot_idx, deep_prompts=None, prompt_slice=None, truncate=True, shared_prefix=None,
                  insert=None):
        K, T, d = prompts.shape
        if T < self.context_length:  # the official prompts hold all 77 positions (padding embeddings)
            prompts = torch.cat([prompts, prompts.new_zeros(K, self.context_length - T, d)], dim=1)
        # MMRL's inserted tokens: 77 + N positions from the insertion block on, as in the official code
        return orig_forward(self, prompts, eot_idx, deep_prompts, prompt_slice, truncate=False, shared_prefix=0,
                            insert=insert)

    model = trainer.model
    loop = getattr(model, "forward_loop", None)
    prompted.FAST_PATHS = False
    prompted._run_block = official_block
    enc_cls.forward = full_pass
    cache_cls.get = lambda self, owner, compute: compute()
    if loop is not None:
        model.forward = loop  # instance attribute: nn.Module.__call__ finds it first
    try:
        yield
    finally:
        prompted.FAST_PATHS = saved["fast"]
        prompted._run_block = saved["run_block"]
        enc_cls.forward = saved["forward"]
        cache_cls.get = saved["get"]
        if loop is not None:
            del model.forward
