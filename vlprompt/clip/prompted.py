"""Prompted CLIP encoders: prompt insertion around a frozen open_clip ``CLIP`` model.

The encoders walk the frozen open_clip modules (token/positional embeddings, residual blocks, final
norms, projections); no CLIP model file is forked. They own **no parameters of their own**: the
frozen modules they reference belong to the CLIP model, and every learnable prompt is passed in by the
caller (a prompt learner), so a trainer that registers only its prompt learner checkpoints only the
learned state.

Conventions (docs/METHODS.md, "Prompted encoders"):

* **Depth** ``J`` counts the input layer: prompts for layer 0 enter with the input, ``deep_prompts[i-1]``
  replaces the prompt tokens at the *input* of transformer block ``i`` for ``i = 1..J-1``; blocks
  ``>= J`` let the previous block's prompt outputs flow on.
* **Text** prompts occupy token positions ``1..N`` (right after SOS) unless another slice is given.
* **Vision** prompts are appended *after* the patch tokens (after class and positional embedding,
  before ``ln_pre``; no positional embedding on prompts); deep prompts replace the *last* ``N`` tokens.
* **Inserted** tokens (``insert=(block, tokens)``, MMRL): prompts that enter at a later block; the
  sequence grows by N there (text: after SOS, causal mask and EOT positions follow; vision: after the
  patch tokens), deep prompts of later blocks replace them. Without ``insert`` nothing changes.
* Prompts are cast to the activation dtype at insertion, so fp32 master copies work with an fp16 CLIP.
* **Block branches, masks, read positions** (MMA, RPO; default None: nothing changes): ``block_residual``
  adds a position-wise branch computed from a block's input to its output (both towers, fast paths kept);
  ``attn_mask`` replaces the causal mask (text: (T, T) or per sequence (K, T, T), plain path with per-block
  fast attention) or is passed to every vision block; ``read_idx`` / ``no_position`` (text) read several
  positions per sequence and leave tokens without positional embedding.
"""
import contextlib
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InvalidValueError
from .backbone import model_dims
from .fast_attention import block_forward, blocks_fast_reason, fast_block_reason, prefix_block_forward, rows_block_forward

__all__ = [
    "PromptedTextEncoder",
    "PromptedVisionEncoder",
    "TextFeatureCache",
    "check_prompt_config",
]


def check_prompt_config(n_prompts, depth, n_layers, where, allow_zero_depth=True):
    """Validate a prompt length ``N`` and depth ``J`` against an encoder with ``n_layers`` blocks.

    ``depth == 0`` means "no prompts at all" (then ``n_prompts`` is ignored) when ``allow_zero_depth``;
    otherwise ``1 <= depth <= n_layers`` and ``n_prompts >= 1`` are required. Raises ``ValueError``
    naming ``where`` (e.g. ``"TRAINER.MAPLE.PROMPT_DEPTH"``) on a bad value.
    """
    depth = int(depth)
    n_prompts = int(n_prompts)
    if depth < 0 or (depth == 0 and not allow_zero_depth):
        lo = 0 if allow_zero_depth else 1
        raise InvalidValueError(f"{where}: prompt depth must be between {lo} and {n_layers}, got {depth}")
    if depth > n_layers:
        raise InvalidValueError(
            f"{where}: prompt depth {depth} is larger than the number of transformer layers ({n_layers}) "
            f"of this backbone; use a depth between 1 and {n_layers}"
        )
    if depth > 0 and n_prompts < 1:
        raise InvalidValueError(f"{where}: the number of prompt tokens must be >= 1 when prompts are used, got {n_prompts}")
    return n_prompts, depth


def check_vision_prompt_args(depth, prompts, deep_prompts):
    """The prompts a vision encoder built for ``depth`` may be given; returns ``deep_prompts`` as a list.
    Shared by every vision tower type (``vlprompt.clip.towers``)."""
    if depth >= 1 and prompts is None:
        raise ValueError("This vision encoder was built with prompts (depth >= 1) but none were given")
    if depth == 0 and (prompts is not None or deep_prompts):
        raise ValueError("This vision encoder was built without prompts (depth 0) but prompts were given")
    deep_prompts = list(deep_prompts) if deep_prompts is not None else []
    if len(deep_prompts) > max(depth - 1, 0):
        raise ValueError(
            f"{len(deep_prompts)} deep vision prompts given, but this encoder was built for depth "
            f"{depth} (at most {max(depth - 1, 0)} deep prompt sets)"
        )
    return deep_prompts


def _as_batched(p, batch, width, what):
    """(N, d) -> (batch, N, d) view; (batch, N, d) passes through. Checks the width."""
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(batch, -1, -1)
    elif p.dim() != 3 or p.shape[0] != batch:
        raise ValueError(f"{what}: expected shape (N, {width}) or ({batch}, N, {width}), got {tuple(p.shape)}")
    if p.shape[-1] != width:
        raise ValueError(f"{what}: expected width {width}, got {p.shape[-1]} (text/vision width mix-up?)")
    return p


def _run_block(block, x, attn_mask, batch_first, fast=True):
    """One residual block on a batch-first ``x``: the exact fast path (one contiguous in-projection and
    ``scaled_dot_product_attention``, see :mod:`vlprompt.clip.fast_attention`) when ``fast`` and the
    block is eligible, else the block's own forward (sequence-first blocks get a transposed view)."""
    if fast and fast_block_reason(block) is None:
        return block_forward(block, x, attn_mask)
    if batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


#: encoders use the exact fast paths (fast attention, shared text prefix, length groups) by default;
#: set to False (or pass ``fast=False`` to an encoder) to run open_clip's blocks as they are.
FAST_PATHS = True

#: within the fast paths, compute only the rows that are read later (vision: not the prompt rows before a
#: block that replaces them, only the class token in the last block; text: only the EOT rows in the last
#: block). Exact; False computes every row (``benchmarks/bench_rows_read.py`` measures both).
READ_ROWS_ONLY = True


def _length_groups(lengths, max_groups):
    """Split classes by sequence length: a list of ``(indices, length)`` with ``<= max_groups`` groups.

    Starts from one group per distinct length and merges the adjacent pair whose merge pads the fewest
    tokens until at most ``max_groups`` remain (each class is padded to its group's longest length)."""
    vals, counts = torch.unique(lengths, sorted=True, return_counts=True)
    groups = [[int(v), int(c)] for v, c in zip(vals.tolist(), counts.tolist())]
    while len(groups) > max(1, max_groups):
        costs = [groups[i][1] * (groups[i + 1][0] - groups[i][0]) for i in range(len(groups) - 1)]
        i = min(range(len(costs)), key=costs.__getitem__)
        groups[i + 1][1] += groups[i][1]
        del groups[i]
    out, lo = [], -1
    for length, _ in groups:
        idx = ((lengths > lo) & (lengths <= length)).nonzero().flatten()
        out.append((idx, length))
        lo = length
    return out


def _plus(x, y):
    """``x + y`` (``x`` when the branch gave None)."""
    return x if y is None else x + y


def _grad_reaches(t):
    return torch.is_grad_enabled() and t.requires_grad


def _shareable(p):
    """Whether a prompt tensor is one tensor for every class: (N, d), (1, N, d), a (K, N, d) expanded view
    (stride 0 over classes), or (K, N, d) without gradient and with equal rows."""
    if p.dim() == 3 and p.shape[0] > 1:
        return p.stride(0) == 0 or (not _grad_reaches(p) and bool((p == p[:1]).all()))
    return True


class PromptedTextEncoder(nn.Module):
    """CLIP text tower that encodes prompt *embeddings* (with optional deep prompts).

    Args:
        clip_model: an open_clip ``CLIP`` (built-in text transformer, causal mask, argmax pooling).
        n_prompts: number ``N`` of prompt slots replaced by deep prompts (0: no deep prompts).
        depth: prompt depth ``J`` (input layer included); deep prompts may be given for blocks
            ``1..J-1``. ``J <= 1`` means no deep prompts.

    Forward: ``prompts`` (K, T, d_t) token embeddings (SOS, ..., EOT, padding; ``T <= 77``),
    ``eot_idx`` (K,) long positions of EOT, optional ``deep_prompts`` (a sequence of ``J-1`` entries,
    each (N, d_t) broadcast over K, or (K, N, d_t), or None to skip a block) and ``prompt_slice``
    (positions replaced, default ``1..N``). Returns (K, d_embed) text features (not normalised).

    Only positions ``0..max(eot_idx)`` are run through the transformer: with the causal mask no
    position attends to a later one, so this is exact (tested against the full 77-token pass).

    Exact fast paths (``fast``; None: follow :data:`FAST_PATHS`), used when every block is open_clip's
    ``ResidualAttentionBlock`` without hooks (else the blocks' own forwards run, padded to the longest
    EOT): (1) one contiguous in-projection + ``scaled_dot_product_attention`` per block; (2) classes
    grouped by EOT position (at most ``max_length_groups`` groups), each group run only up to its own
    longest EOT; (3) the leading positions shared by all classes (SOS, a generic context, frozen prefix
    words; see :meth:`shared_prefix_length`) computed once, the other positions attending to its keys
    and values. All three are exact because of the causal mask (tested to 1e-6 with gradients).
    """

    def __init__(self, clip_model, n_prompts=0, depth=0, fast=None, max_length_groups=8):
        super().__init__()
        self.fast = fast
        self.max_length_groups = int(max_length_groups)
        if not hasattr(clip_model, "transformer") or not hasattr(clip_model, "token_embedding"):
            raise TypeError(
                f"{type(clip_model).__name__} has no built-in text transformer; prompted encoders need an "
                "open_clip CLIP model (CustomTextCLIP / Hugging Face text towers are not supported)"
            )
        pool = getattr(clip_model, "text_pool_type", "argmax")
        if pool not in ("argmax", "eos"):
            raise InvalidValueError(f"Text pooling '{pool}' is not supported by prompted encoders (need EOT pooling)")
        if getattr(clip_model, "attn_mask", None) is None:
            raise InvalidValueError("The text tower has no causal attention mask; prompted text encoding needs one")
        dims = model_dims(clip_model)
        self.width = dims["d_text"]
        self.n_layers = dims["text_layers"]
        self.context_length = dims["context_length"]
        self.n_prompts, self.depth = check_prompt_config(n_prompts, depth, self.n_layers, "text prompt depth")
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        # a copy of the (T, T) float causal mask; non-persistent, follows device moves
        self.register_buffer("attn_mask", clip_model.attn_mask.detach().clone(), persistent=False)

    @property
    def dtype(self):
        """dtype of the frozen transformer weights (fp16 for an fp16 CLIP)."""
        return self.transformer.get_cast_dtype()

    def embed(self, token_ids):
        """Token ids (K, T) -> token embeddings (K, T, d_t) (fp32, no positional embedding)."""
        return self.token_embedding(token_ids.to(self.token_embedding.weight.device))

    def encode_tokens(self, token_ids):
        """Encode tokenized texts (K, T) with no prompts; equals open_clip ``encode_text``."""
        token_ids = token_ids.to(self.token_embedding.weight.device)
        return self.forward(self.embed(token_ids), token_ids.argmax(dim=-1))

    def forward(self, prompts, eot_idx, deep_prompts=None, prompt_slice=None, truncate=True, shared_prefix=None,
                insert=None, block_residual=None, attn_mask=None, read_idx=None, no_position=None):
        """Text features (K, d_embed). ``shared_prefix`` (optional int): the caller guarantees that token
        positions ``< shared_prefix`` of ``prompts`` are the *same tensor* for every class (e.g. SOS and a
        generic context expanded over classes), so the prefix may be computed once even when gradients
        flow into it; checked against the values (``ValueError`` if the rows differ there). ``None``:
        share only what the values prove without gradients (evaluation); ``0``: never share.

        ``insert`` (optional ``(block, tokens)``; default None: nothing changes): ``tokens`` (N, d_t) or
        (K, N, d_t) are **inserted** at the input of text block ``block`` (0-based) at the positions of
        ``prompt_slice`` (default ``1..N``, right after SOS), so the sequence grows by N from that block on:
        the causal mask is rebuilt for the new length, the EOT positions move by N, and the inserted tokens
        get no positional embedding. Deep prompts of later blocks replace those N slots; deep prompts of
        blocks ``<= block`` must be None (MMRL's representation tokens; docs/METHODS.md, MMRL).

        ``block_residual`` (optional callable ``(i, block, x_in) -> tensor or None``; default None): a branch
        added to the **output** of block ``i``, computed from that block's **input** ``x_in`` (batch-first,
        any subset of the positions: the result must be position-wise, e.g. an adapter on ``block.ln_1(x_in)``;
        MMA). The exact fast paths stay on (the branch is applied to each piece they compute).

        ``attn_mask`` (optional; default None: the causal mask): an additive float (or bool, True = may not
        attend) mask that **replaces** the causal mask, (T, T) for every sequence or (K, T, T) per sequence
        (RPO's read-only prompts). With ``truncate`` it must keep every position from attending to a later one
        (checked), so that the pass may stop at the last position read. ``read_idx`` (optional (K,) or (K, R)
        long; default ``eot_idx``): the positions whose final states are returned ((K, d) or (K, R, d)).
        Either one runs the plain path (blocks one by one on all K sequences, open_clip's block or the exact
        fast attention of :func:`~vlprompt.clip.fast_attention.block_forward` per block, no shared prefix or
        length groups).

        ``no_position`` (optional (K, T) bool): positions that get **no** positional embedding (tokens placed
        after the sentence, e.g. RPO's prompts); exact (the embedding is multiplied by 0 there, by 1 elsewhere)."""
        if prompts.dim() != 3 or prompts.shape[-1] != self.width:
            raise ValueError(f"prompts: expected (K, T, {self.width}), got {tuple(prompts.shape)}")
        K, T, _ = prompts.shape
        if T > self.context_length:
            raise InvalidValueError(f"prompts have {T} tokens, more than the context length {self.context_length} of this "
                                    "backbone's text tower: use fewer context tokens (N_CTX) or shorter class names")
        eot_idx = eot_idx.to(prompts.device).long()
        if eot_idx.shape != (K,):
            raise ValueError(f"eot_idx: expected shape ({K},), got {tuple(eot_idx.shape)}")
        last = int(eot_idx.max().item())
        if read_idx is not None:
            read_idx = read_idx.to(prompts.device).long()
            if read_idx.dim() not in (1, 2) or read_idx.shape[0] != K:
                raise ValueError(f"read_idx: expected shape ({K},) or ({K}, R), got {tuple(read_idx.shape)}")
            last = max(last, int(read_idx.max().item()))
        L = last + 1 if truncate else T
        if L > T:
            raise ValueError(f"position {L - 1} (EOT or a position read) lies beyond the {T} prompt tokens given")
        if attn_mask is not None:
            attn_mask = self._check_mask(attn_mask.to(prompts.device), K, T, L, truncate, insert)
        deep_prompts = list(deep_prompts) if deep_prompts is not None else []
        if len(deep_prompts) > max(self.depth - 1, 0):
            raise ValueError(
                f"{len(deep_prompts)} deep text prompts given, but this encoder was built for depth "
                f"{self.depth} (at most {max(self.depth - 1, 0)} deep prompt sets)"
            )
        if prompt_slice is None:
            prompt_slice = slice(1, 1 + self.n_prompts)
        if insert is not None:
            insert = self._check_insert(insert, K, eot_idx, deep_prompts, prompt_slice)
        elif deep_prompts and prompt_slice.stop > L:
            raise ValueError(f"prompt slots {prompt_slice} reach beyond the EOT token (position {L - 1})")
        n_slots = prompt_slice.stop - prompt_slice.start
        for i, p in enumerate(deep_prompts, start=1):
            if p is not None:
                p = _as_batched(p, K, self.width, f"deep text prompt for block {i}")
                if p.shape[1] != n_slots:
                    raise ValueError(
                        f"deep text prompt for block {i}: expected {n_slots} tokens (slots {prompt_slice.start}.."
                        f"{prompt_slice.stop - 1}), got {p.shape[1]}"
                    )

        dtype = self.dtype
        pos = self.positional_embedding[:L].to(dtype)
        if no_position is not None:
            if tuple(no_position.shape) != (K, T):
                raise ValueError(f"no_position: expected ({K}, {T}), got {tuple(no_position.shape)}")
            pos = pos * (~no_position[:, :L].to(prompts.device)).unsqueeze(-1).to(dtype)
        x = prompts[:, :L].to(dtype) + pos
        mask = self.attn_mask[:L, :L].to(device=x.device)
        fast = FAST_PATHS if self.fast is None else bool(self.fast)
        fast = fast and blocks_fast_reason(self.transformer.resblocks) is None
        if attn_mask is not None or read_idx is not None:  # the plain path, per-block fast attention allowed
            x = self._blocks_plain(x, eot_idx if read_idx is None else read_idx, deep_prompts, prompt_slice,
                                   mask if attn_mask is None else attn_mask, insert, block_residual, fast_blocks=fast)
        elif fast:
            x = self._blocks_fast(x, eot_idx, deep_prompts, prompt_slice, mask, truncate, shared_prefix, insert,
                                  block_residual)
        else:
            x = self._blocks_plain(x, eot_idx, deep_prompts, prompt_slice, mask, insert, block_residual)
        x = self.ln_final(x)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        if self.text_projection is None:
            return x
        return x @ self.text_projection

    def _check_insert(self, insert, K, eot_idx, deep_prompts, prompt_slice):
        """Validate ``insert=(block, tokens)``; returns ``(block, tokens)`` with tokens (K, N, d_t)."""
        try:
            block, tokens = insert
        except (TypeError, ValueError):
            raise ValueError("insert: expected a (block, tokens) pair") from None
        block = int(block)
        if not 0 <= block < self.n_layers:
            raise ValueError(f"insert: block {block} is not a text block (0..{self.n_layers - 1})")
        if any(p is not None for p in deep_prompts[:block]):
            raise ValueError(f"insert at block {block}: deep prompts of blocks <= {block} must be None (the slots "
                             "exist only from the insertion on)")
        a, b = prompt_slice.start, prompt_slice.stop
        if not 1 <= a <= int(eot_idx.min().item()):
            raise ValueError(f"insert: the insertion position {a} must lie between 1 and the earliest EOT "
                             f"({int(eot_idx.min().item())})")
        tokens = _as_batched(tokens, K, self.width, f"inserted text tokens for block {block}")
        if tokens.shape[1] != b - a:
            raise ValueError(f"inserted text tokens for block {block}: expected {b - a} tokens (slots {a}..{b - 1}), "
                             f"got {tokens.shape[1]}")
        return block, tokens

    @staticmethod
    def _causal_mask(n, like):
        """(n, n) additive causal mask (``-inf`` above the diagonal) in ``like``'s dtype and device."""
        return torch.full((n, n), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)

    def _check_mask(self, attn_mask, K, T, L, truncate, insert):
        """A caller's attention mask (see :meth:`forward`), cut to the first ``L`` positions."""
        if insert is not None:
            raise ValueError("attn_mask and insert are exclusive (an insertion changes the sequence length)")
        if attn_mask.dim() not in (2, 3) or tuple(attn_mask.shape[-2:]) != (T, T) or (
                attn_mask.dim() == 3 and attn_mask.shape[0] != K):
            raise ValueError(f"attn_mask: expected ({T}, {T}) or ({K}, {T}, {T}), got {tuple(attn_mask.shape)}")
        m = attn_mask[..., :L, :L]
        if truncate:
            later = torch.ones(L, L, dtype=torch.bool, device=m.device).triu_(1)
            blocked = m[..., later] if m.dtype == torch.bool else torch.isneginf(m[..., later])
            if not bool(blocked.all()):
                raise ValueError("attn_mask lets a position attend to a later one; pass truncate=False for such a mask")
        return m

    @staticmethod
    def _block_mask(block, mask, fast):
        """``mask`` for one block: a per-sequence (K, L, L) mask becomes (K, 1, L, L) for the fast attention
        and (K * heads, L, L) for ``nn.MultiheadAttention`` (batch-major, as it expects)."""
        if mask is None or mask.dim() == 2:
            return mask
        if fast:
            return mask.unsqueeze(1)
        return mask.repeat_interleave(block.attn.num_heads, dim=0)

    def _blocks_plain(self, x, eot_idx, deep_prompts, prompt_slice, mask, insert=None, block_residual=None,
                      fast_blocks=False):
        """The blocks one by one on all K prompts padded to the longest position read (open_clip's own block
        forwards, or :func:`block_forward` with ``fast_blocks``); returns the states at ``eot_idx`` (K, d), or
        (K, R, d) for (K, R) positions."""
        K = x.shape[0]
        batch_first = getattr(self.transformer, "batch_first", True)
        for i, block in enumerate(self.transformer.resblocks):
            if insert is not None and i == insert[0]:
                a, p = prompt_slice.start, insert[1]
                x = torch.cat([x[:, :a], p.to(x.dtype), x[:, a:]], dim=1)
                mask = self._causal_mask(x.shape[1], mask)
                eot_idx = eot_idx + p.shape[1]
            elif 1 <= i <= len(deep_prompts) and deep_prompts[i - 1] is not None:
                p = _as_batched(deep_prompts[i - 1], K, self.width, f"deep text prompt for block {i}")
                x = torch.cat([x[:, : prompt_slice.start], p.to(x.dtype), x[:, prompt_slice.stop:]], dim=1)
            x_in = x
            x = _run_block(block, x, self._block_mask(block, mask, fast_blocks), batch_first, fast=fast_blocks)
            if block_residual is not None:
                x = _plus(x, block_residual(i, block, x_in))
        rows = torch.arange(K, device=x.device)
        return x[rows, eot_idx] if eot_idx.dim() == 1 else x[rows.unsqueeze(1), eot_idx]

    def shared_prefix_length(self, x, eot_idx, deep_prompts, prompt_slice, declared=None, insert=None):
        """How many leading positions all K prompts share (0: none), detected from the inputs.

        A position is shared when its embedding is identical for every class and no deep prompt differs
        there. Without a declaration (``declared is None``) nothing is shared when gradients flow into
        the prompts: equal values do not prove that the rows are one tensor (class-specific contexts
        initialised from the same words are equal but must get their own gradients). A (K, N, d) deep
        prompt shares its slots only if it is an expanded view (stride 0 over classes) or carries no
        gradient and has equal rows. The prefix always ends before the earliest EOT.

        With ``insert`` (see :meth:`forward`; the count is that of the input, before the insertion): when
        the inserted tokens and every later deep prompt are shared and the insertion position lies in
        the prefix, the tokens join the prefix (even a prefix of SOS alone); otherwise the prefix ends
        at the insertion position.
        """
        K = x.shape[0]
        if K < 2 or declared == 0:
            return 0
        limit = int(eot_idx.min().item())
        if declared is None:
            if _grad_reaches(x):
                return 0
        else:
            limit = min(limit, int(declared))
        head = x[:, :limit]
        diff = (head != head[:1]).flatten(2).any(dim=2).any(dim=0).nonzero()
        P = int(diff[0]) if len(diff) else limit
        if declared is not None and P < min(int(declared), limit):
            raise ValueError(
                f"shared_prefix={declared} was given, but the class prompts differ at position {P}; pass the "
                "number of leading positions that are the same for every class (or None to detect it)"
            )
        a, b = prompt_slice.start, prompt_slice.stop
        if insert is not None:
            if self._insert_in_prefix(P, insert, deep_prompts, prompt_slice):
                return P
            P = min(P, a)
            return P if P >= 2 else 0
        for p in deep_prompts:
            if p is None or a >= P:
                continue
            if not _shareable(p) or b > P:
                P = a
        return P if P >= 2 else 0

    @staticmethod
    def _insert_in_prefix(P, insert, deep_prompts, prompt_slice):
        """Whether the tokens of ``insert`` go into a shared prefix of length ``P`` (input positions)."""
        if P < 1 or prompt_slice.start > P:
            return False
        return _shareable(insert[1]) and all(p is None or _shareable(p) for p in deep_prompts)

    def _blocks_fast(self, x, eot_idx, deep_prompts, prompt_slice, mask, truncate, declared, insert=None,
                     block_residual=None):
        """Exact fast path: shared prefix once, classes grouped by length, fast attention blocks."""
        K, L, _ = x.shape
        P = self.shared_prefix_length(x, eot_idx, deep_prompts, prompt_slice, declared, insert=insert)
        lengths = eot_idx + 1 if truncate else torch.full_like(eot_idx, L)
        groups = _length_groups(lengths, self.max_length_groups)
        a, b = prompt_slice.start, prompt_slice.stop
        prefix = x[:1, :P]
        rows = [x[idx, P:n] for idx, n in groups]
        prefix_mask = mask[:P, :P].contiguous()
        rows_mask = [mask[P:n, :n].contiguous() for _, n in groups]
        insert_block = insert[0] if insert is not None else -1
        blocks = self.transformer.resblocks
        last = len(blocks) - 1
        for i, block in enumerate(blocks):
            if i == insert_block:
                p = insert[1].to(x.dtype)
                n_new = p.shape[1]
                if self._insert_in_prefix(P, insert, deep_prompts, prompt_slice):  # one row for every class
                    prefix = torch.cat([prefix[:, :a], p[:1], prefix[:, a:]], dim=1)
                    P += n_new
                else:  # the prefix ends at or before the insertion position
                    rows = [torch.cat([r[:, : a - P], p[idx], r[:, a - P:]], dim=1) for (idx, _), r in zip(groups, rows)]
                groups = [(idx, n + n_new) for idx, n in groups]
                eot_idx = eot_idx + n_new
                full = self._causal_mask(max(n for _, n in groups), mask)
                prefix_mask = full[:P, :P].contiguous()
                rows_mask = [full[P:n, :n].contiguous() for _, n in groups]
            elif 1 <= i <= len(deep_prompts) and deep_prompts[i - 1] is not None:
                p = deep_prompts[i - 1]
                if b <= P:  # slots inside the shared prefix (shared deep prompt: one row)
                    p1 = p[:1] if p.dim() == 3 else p.unsqueeze(0)
                    prefix = torch.cat([prefix[:, :a], p1.to(x.dtype), prefix[:, b:]], dim=1)
                else:
                    pb = _as_batched(p, K, self.width, f"deep text prompt for block {i}").to(x.dtype)
                    new_rows = []
                    for (idx, n), r in zip(groups, rows):
                        lo, hi = a - P, min(b, n) - P
                        if hi > lo:
                            r = torch.cat([r[:, :lo], pb[idx, : hi - lo], r[:, hi:]], dim=1)
                        new_rows.append(r)
                    rows = new_rows
            if i == last and READ_ROWS_ONLY:  # only the EOT states are read: one query row per class
                break
            if P > 0:
                new_prefix, new_rows = prefix_block_forward(block, prefix, rows, prefix_mask, rows_mask)
            else:
                new_prefix, new_rows = prefix, [block_forward(block, r, m) for r, m in zip(rows, rows_mask)]
            if block_residual is not None:  # position-wise: applied to each piece from its own input
                if P > 0:
                    new_prefix = _plus(new_prefix, block_residual(i, block, prefix))
                new_rows = [_plus(n, block_residual(i, block, r)) for n, r in zip(new_rows, rows)]
            prefix, rows = new_prefix, new_rows
        order = torch.cat([idx for idx, _ in groups])
        if READ_ROWS_ONLY:
            feats = []
            for (idx, _), r, m in zip(groups, rows, rows_mask):
                pos = eot_idx[idx] - P
                f = rows_block_forward(blocks[last], r, pos, m, prefix if P > 0 else None)
                if block_residual is not None:
                    y = block_residual(last, blocks[last], r[torch.arange(r.shape[0], device=r.device), pos].unsqueeze(1))
                    f = f if y is None else f + y[:, 0]
                feats.append(f)
            feats = torch.cat(feats)
        else:
            feats = torch.cat([r[torch.arange(r.shape[0], device=r.device), eot_idx[idx] - P]
                               for (idx, _), r in zip(groups, rows)])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(K, device=order.device)
        return feats[inverse]


class PromptedVisionEncoder(nn.Module):
    """CLIP image tower with appended (and optionally deep) vision prompts.

    Args:
        clip_model: an open_clip ``CLIP``. With prompts (``depth >= 1``) its ``visual`` must be a
            ``VisionTransformer`` with class-token pooling; a ModifiedResNet (RN50, ...) is accepted
            only without prompts (then this is exactly ``clip_model.encode_image``).
        n_prompts: number ``N`` of vision prompt tokens.
        depth: prompt depth ``J`` (0: no prompts; 1: shallow, appended at the input only; ``J``: also
            blocks ``1..J-1``).

    Forward: ``images`` (B, 3, H, W); ``prompts`` (N, d_v) or per-image (B, N, d_v), required iff
    ``depth >= 1``; ``deep_prompts`` sequence of ``<= J-1`` entries, each (N, d_v), (B, N, d_v) or None.
    Returns (B, d_embed) image features (not normalised).

    Prompts that start at a later block (``insert=(block, tokens)``, instead of ``prompts``): the N
    tokens are appended at the input of block ``block`` (0-based; after ``ln_pre``, no positional
    embedding), deep prompts of later blocks replace them, those of blocks ``<= block`` must be None.
    ``return_prompt_tokens=True`` also returns the prompt tokens' final states after ``ln_post``
    (B, N, d_v) (MMRL's representation tokens; docs/METHODS.md, MMRL).

    ``fast`` (None: follow :data:`FAST_PATHS`): run open_clip's residual blocks through the exact fast
    attention path (:mod:`vlprompt.clip.fast_attention`); blocks it does not recognise, and blocks with
    hooks, always run their own forward. A ResNet tower is called as it is.
    """

    def __init__(self, clip_model, n_prompts=0, depth=0, fast=None):
        super().__init__()
        self.fast = fast
        visual = clip_model.visual
        self.visual = visual
        dims = model_dims(clip_model)
        self.is_vit = dims["is_vit"]
        if not self.is_vit:
            if int(depth) > 0:
                raise InvalidValueError(
                    f"Vision prompts need a ViT image tower, but this backbone's is a "
                    f"{type(visual).__name__} (e.g. RN50). Use a ViT backbone (ViT-B/16, ...) or disable "
                    "vision prompts (depth 0)."
                )
            self.n_prompts, self.depth = 0, 0
            self.width = None
            return
        if getattr(visual, "attn_pool", None) is not None:
            raise InvalidValueError("Vision towers with an attentional pooler are not supported by prompted encoders")
        if getattr(visual, "pool_type", "tok") != "tok":
            raise InvalidValueError(
                f"Vision pooling '{visual.pool_type}' is not supported by prompted encoders (class-token pooling only)"
            )
        self.width = dims["d_vision"]
        self.n_layers = dims["vision_layers"]
        self.n_prompts, self.depth = check_prompt_config(n_prompts, depth, self.n_layers, "vision prompt depth")

    @property
    def dtype(self):
        """dtype of the frozen image-tower weights (fp16 for an fp16 CLIP)."""
        conv = getattr(self.visual, "conv1", None)
        return conv.weight.dtype if conv is not None else next(self.visual.parameters()).dtype

    def _check_insert(self, insert, prompts, deep_prompts, batch):
        """Validate ``insert=(block, tokens)``; returns ``(block, tokens (B, N, d_v)), deep_prompts``."""
        if prompts is not None:
            raise ValueError("insert and prompts are exclusive: prompts enter at the input, insert at a later block")
        try:
            block, tokens = insert
        except (TypeError, ValueError):
            raise ValueError("insert: expected a (block, tokens) pair") from None
        block = int(block)
        if self.depth == 0:
            raise ValueError("This vision encoder was built without prompts (depth 0) but tokens were inserted")
        if not 0 <= block < self.n_layers:
            raise ValueError(f"insert: block {block} is not a vision block (0..{self.n_layers - 1})")
        deep_prompts = list(deep_prompts) if deep_prompts is not None else []
        if len(deep_prompts) > self.depth - 1:
            raise ValueError(f"{len(deep_prompts)} deep vision prompts given, but this encoder was built for depth "
                             f"{self.depth} (at most {self.depth - 1} deep prompt sets)")
        if any(p is not None for p in deep_prompts[:block]):
            raise ValueError(f"insert at block {block}: deep prompts of blocks <= {block} must be None")
        tokens = _as_batched(tokens, batch, self.width, f"inserted vision tokens for block {block}")
        if tokens.shape[1] != self.n_prompts:
            raise ValueError(f"inserted vision tokens: expected {self.n_prompts} tokens, got {tokens.shape[1]}")
        return (block, tokens), deep_prompts

    def forward(self, images, prompts=None, deep_prompts=None, insert=None, return_prompt_tokens=False,
                block_residual=None, attn_mask=None):
        """See the class docstring. ``block_residual`` (optional callable ``(i, block, x_in) -> tensor or None``):
        a position-wise branch added to the output of block ``i``, computed from its input (MMA).
        ``attn_mask`` (optional (L, L), L = class token + patches + prompts; additive float or bool, True = may
        not attend): passed to every block (RPO's read-only prompts); not with ``insert``."""
        if not self.is_vit:
            if block_residual is not None or attn_mask is not None:
                raise ValueError("This image tower is not a ViT: it takes no block branch or attention mask")
            if prompts is not None or deep_prompts or insert is not None:
                raise ValueError("This image tower is not a ViT and takes no prompts")
            if return_prompt_tokens:
                raise ValueError("This image tower is not a ViT: it has no prompt tokens to return")
            return self.visual(images.to(self.dtype))
        if insert is None:
            deep_prompts = check_vision_prompt_args(self.depth, prompts, deep_prompts)
        else:
            insert, deep_prompts = self._check_insert(insert, prompts, deep_prompts, images.shape[0])
        v = self.visual
        B = images.shape[0]
        x = v.conv1(images.to(self.dtype))
        x = x.reshape(B, x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(B, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        n = 0
        if prompts is not None:
            p = _as_batched(prompts, B, self.width, "vision prompts")
            if p.shape[1] != self.n_prompts:
                raise ValueError(f"vision prompts: expected {self.n_prompts} tokens, got {p.shape[1]}")
            n = p.shape[1]
            x = torch.cat([x, p.to(x.dtype)], dim=1)
        x = v.ln_pre(x)
        if attn_mask is not None:
            if insert is not None:
                raise ValueError("attn_mask and insert are exclusive (an insertion changes the sequence length)")
            if tuple(attn_mask.shape) != (x.shape[1], x.shape[1]):
                raise ValueError(f"attn_mask: expected ({x.shape[1]}, {x.shape[1]}) (class token, patches and "
                                 f"prompts), got {tuple(attn_mask.shape)}")
            attn_mask = attn_mask.to(x.device)
        batch_first = getattr(v.transformer, "batch_first", True)
        fast = (FAST_PATHS if self.fast is None else bool(self.fast)) and blocks_fast_reason(v.transformer.resblocks) is None
        insert_block = insert[0] if insert is not None else -1
        blocks = v.transformer.resblocks

        def replaced(j):  # block j replaces the prompt tokens at its input
            return j != insert_block and 1 <= j <= len(deep_prompts) and deep_prompts[j - 1] is not None

        dropped = False  # the previous block returned the rows before the prompt tokens only
        for i, block in enumerate(blocks):
            if i == insert_block:
                n = insert[1].shape[1]
                x = torch.cat([x, insert[1].to(x.dtype)], dim=1)
            elif replaced(i):
                p = _as_batched(deep_prompts[i - 1], B, self.width, f"deep vision prompt for block {i}")
                if p.shape[1] != n:
                    raise ValueError(f"deep vision prompt for block {i}: expected {n} tokens, got {p.shape[1]}")
                x = torch.cat([x if dropped else x[:, : x.shape[1] - n], p.to(x.dtype)], dim=1)
            x_in = x
            if not fast:
                x = _run_block(block, x, attn_mask, batch_first, fast=False)
                if block_residual is not None:
                    x = _plus(x, block_residual(i, block, x_in))
                continue
            # exact: compute only the rows read later (the prompt tokens' outputs are dropped when the next
            # block replaces them; after the last block only the class token is read)
            if not READ_ROWS_ONLY:
                keep = None
            elif i == len(blocks) - 1:
                keep = None if return_prompt_tokens else 1
            else:
                keep = x.shape[1] - n if n and replaced(i + 1) else None
            x = block_forward(block, x, attn_mask, n_out=keep)
            if block_residual is not None:
                x = _plus(x, block_residual(i, block, x_in if keep is None else x_in[:, :keep]))
            dropped = keep is not None
        pooled = v.ln_post(x[:, 0])
        if v.proj is not None:
            pooled = pooled @ v.proj
        if return_prompt_tokens:
            return pooled, v.ln_post(x[:, x.shape[1] - n:])
        return pooled


class TextFeatureCache:
    """Caches image-independent text features during evaluation (computed once per evaluation).

    ``get(owner, compute)`` returns ``compute()`` unchanged while ``owner`` (the module holding the
    learnable prompts and class buffers) is in train mode or gradients are enabled, and clears the
    cache. In eval mode under ``torch.no_grad()`` the first call computes and stores the features;
    later calls reuse them as long as no parameter or buffer of ``owner`` changed (checked through
    tensor identity, storage and autograd version counters, which optimizer steps, ``load_state_dict``
    and class-list swaps all bump) and the autocast state is the same. In-place writes through
    ``.data`` bypass version counters: call :meth:`clear` after such edits.
    """

    def __init__(self):
        self._key = None
        self._value = None

    def clear(self):
        self._key = None
        self._value = None

    @staticmethod
    def _state_key(owner):
        parts = []
        for t in itertools.chain(owner.parameters(), owner.buffers()):
            parts.append((id(t), t.data_ptr(), t._version, t.dtype, str(t.device)))
        autocast = []
        for dev in ("cuda", "cpu"):
            with contextlib.suppress(Exception):
                autocast.append((torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)))
        return tuple(parts), tuple(autocast)

    def get(self, owner, compute):
        if owner.training or torch.is_grad_enabled():
            self.clear()
            return compute()
        key = self._state_key(owner)
        if self._value is None or key != self._key:
            self._value = compute()
            self._key = key
        return self._value


def normalized_logits(image_features, text_features, logit_scale):
    """``exp(logit_scale) * <f/|f|, t/|t|>`` in fp32: (B, d) x (K, d) -> (B, K), or with per-image text
    features (B, K, d) -> (B, K). Runs outside autocast so that amp/bf16 never round the logits."""
    with torch.autocast(device_type=image_features.device.type, enabled=False):
        return _normalized_logits_fp32(image_features, text_features, logit_scale)


def _normalized_logits_fp32(image_features, text_features, logit_scale):
    f = F.normalize(image_features.float(), dim=-1)
    t = F.normalize(text_features.float(), dim=-1)
    scale = logit_scale.exp().float()
    if t.dim() == 3:
        return scale * torch.einsum("bd,bkd->bk", f, t)
    return scale * f @ t.t()


__all__.append("normalized_logits")

