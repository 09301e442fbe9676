"""Prompted text encoders for open_clip ``CustomTextCLIP`` text towers (``model.text``).

Same interface as :class:`vlprompt.clip.prompted.PromptedTextEncoder`: ``forward(prompts (K, T, d_t),
eot_idx (K,), deep_prompts=None, prompt_slice=None)``, ``embed``, ``encode_tokens``, ``width``,
``n_layers``, ``dtype``. Like it, they own no parameters: the frozen modules belong to the CLIP model.

* :class:`CausalCustomTextEncoder`: a causal ``TextTransformer`` with EOT (argmax) pooling (EVA02-CLIP,
  PE-Core): the same computation as open_clip ``CLIP``'s built-in tower, so today's
  ``PromptedTextEncoder`` runs it through a view of ``model.text`` (EOT-truncated pass included).
* :class:`BidirectionalTextEncoder`: no causal mask and **last-position** pooling (SigLIP, SigLIP2).
  Every position attends to every other one, padding included, and the pooled token is position
  ``T-1`` of the fixed context length (64), so the pass always runs the full length; prompt slots
  start at the tokenizer's first word position (0: SigLIP has no start token).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbone import model_dims, text_tower, tower_kinds
from ..prompted import PromptedTextEncoder, check_prompt_config
from ..tokenizer import model_tokenizer, tokenize

__all__ = ["CausalCustomTextEncoder", "BidirectionalTextEncoder", "encode_class_texts", "encode_sentences",
           "encode_class_sentences", "phrase_vectors"]


class _TextTowerView:
    """The attributes of an open_clip ``CLIP`` that a CLIP text encoder reads, taken from ``model.text``."""

    def __init__(self, clip_model):
        tt = text_tower(clip_model)
        self.visual = clip_model.visual
        self.text = tt
        self.transformer = tt.transformer
        self.token_embedding = tt.token_embedding
        self.positional_embedding = tt.positional_embedding
        self.ln_final = tt.ln_final
        self.text_projection = tt.text_projection
        self.attn_mask = tt.attn_mask
        self.pool_type = tt.pool_type
        self.text_pool_type = tt.pool_type
        self.logit_scale = clip_model.logit_scale


class CausalCustomTextEncoder(PromptedTextEncoder):
    """``PromptedTextEncoder`` over the causal ``TextTransformer`` of a ``CustomTextCLIP`` (EVA02, PE-Core).

    Checked: causal mask present, EOT (argmax) pooling, no appended class token.
    """

    def __init__(self, clip_model, n_prompts=0, depth=0):
        kind = tower_kinds(clip_model)[0]
        if kind != "causal":
            raise TypeError(f"CausalCustomTextEncoder needs a causal text tower with EOT pooling, got {kind}")
        super().__init__(_TextTowerView(clip_model), n_prompts, depth)


class BidirectionalTextEncoder(nn.Module):
    """Prompted bidirectional text tower with last-position pooling (SigLIP / SigLIP2).

    ``prompts`` must span the whole context length (``T == context_length``, padding included): the
    pooled position is ``T-1`` and with full attention every token affects it, so no truncation is
    exact. ``eot_idx`` is checked for shape and not used for pooling. Default prompt slots:
    ``first_slot .. first_slot+N-1`` with ``first_slot`` from the model's tokenizer.
    """

    def __init__(self, clip_model, n_prompts=0, depth=0):
        super().__init__()
        kind = tower_kinds(clip_model)[0]
        if kind != "bidirectional":
            raise TypeError(f"BidirectionalTextEncoder needs a bidirectional text tower with last pooling, got {kind}")
        tt = text_tower(clip_model)
        dims = model_dims(clip_model)
        self.width = dims["d_text"]
        self.n_layers = dims["text_layers"]
        self.context_length = dims["context_length"]
        self.n_prompts, self.depth = check_prompt_config(n_prompts, depth, self.n_layers, "text prompt depth")
        self.first_slot = model_tokenizer(clip_model).first_slot
        object.__setattr__(self, "_tokenizer", model_tokenizer(clip_model))
        self.token_embedding = tt.token_embedding
        self.positional_embedding = tt.positional_embedding
        self.transformer = tt.transformer
        self.ln_final = tt.ln_final
        self.text_projection = tt.text_projection

    @property
    def dtype(self):
        return self.transformer.get_cast_dtype()

    def embed(self, token_ids):
        """Token ids (K, T) -> token embeddings (K, T, d_t) (no positional embedding)."""
        return self.token_embedding(token_ids.to(self.token_embedding.weight.device))

    def encode_tokens(self, token_ids):
        """Encode tokenized texts (K, context_length) with no prompts; equals open_clip ``encode_text``."""
        token_ids = token_ids.to(self.token_embedding.weight.device)
        return self.forward(self.embed(token_ids), self._tokenizer.eot_positions(token_ids))

    def forward(self, prompts, eot_idx, deep_prompts=None, prompt_slice=None, truncate=True, shared_prefix=None):
        # ``truncate`` and ``shared_prefix`` are accepted for interface compatibility: without a causal mask
        # no position is independent of later ones, so this tower is always run in full
        if prompts.dim() != 3 or prompts.shape[-1] != self.width:
            raise ValueError(f"prompts: expected (K, T, {self.width}), got {tuple(prompts.shape)}")
        K, T, _ = prompts.shape
        if T != self.context_length:
            raise ValueError(
                f"prompts have {T} tokens; this bidirectional text tower pools position {self.context_length - 1} "
                f"and needs the full context length {self.context_length} (padding included)"
            )
        if eot_idx.shape != (K,):
            raise ValueError(f"eot_idx: expected shape ({K},), got {tuple(eot_idx.shape)}")
        deep_prompts = list(deep_prompts) if deep_prompts is not None else []
        if len(deep_prompts) > max(self.depth - 1, 0):
            raise ValueError(
                f"{len(deep_prompts)} deep text prompts given, but this encoder was built for depth "
                f"{self.depth} (at most {max(self.depth - 1, 0)} deep prompt sets)"
            )
        if prompt_slice is None:
            prompt_slice = slice(self.first_slot, self.first_slot + self.n_prompts)
        dtype = self.dtype
        x = prompts.to(dtype) + self.positional_embedding.to(dtype)
        batch_first = getattr(self.transformer, "batch_first", True)
        for i, block in enumerate(self.transformer.resblocks):
            if 1 <= i <= len(deep_prompts) and deep_prompts[i - 1] is not None:
                p = deep_prompts[i - 1]
                if p.dim() == 2:
                    p = p.unsqueeze(0).expand(K, -1, -1)
                n_slots = prompt_slice.stop - prompt_slice.start
                if p.shape[0] != K or p.shape[1] != n_slots or p.shape[2] != self.width:
                    raise ValueError(
                        f"deep text prompt for block {i}: expected ({n_slots}, {self.width}) or "
                        f"({K}, {n_slots}, {self.width}), got {tuple(p.shape)}"
                    )
                x = torch.cat([x[:, : prompt_slice.start], p.to(x.dtype), x[:, prompt_slice.stop:]], dim=1)
            x = block(x, attn_mask=None) if batch_first else block(x.transpose(0, 1), attn_mask=None).transpose(0, 1)
        x = self.ln_final(x)[:, -1]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        if self.text_projection is None:
            return x
        return x @ self.text_projection


@torch.no_grad()
def encode_class_texts(clip_model, classnames, templates, device=None, chunk_size=256):
    """L2-normalised zero-shot text features (K, d) with the **model's** tokenizer and context length
    (any family; same ensembling as :func:`vlprompt.clip.zeroshot.encode_class_texts`)."""
    from ..templates import format_classnames

    if isinstance(templates, str):
        templates = [templates]
    if device is None:
        device = next(clip_model.parameters()).device
    names = format_classnames(classnames)
    acc = None
    for template in templates:
        texts = [template.format(n) for n in names]
        feats = []
        for i in range(0, len(texts), chunk_size):
            tokens = tokenize(texts[i:i + chunk_size], model=clip_model).to(device)
            feats.append(clip_model.encode_text(tokens).float())
        feats = F.normalize(torch.cat(feats), dim=-1)
        acc = feats if acc is None else acc + feats
    return F.normalize(acc / len(templates), dim=-1)


@torch.no_grad()
def encode_sentences(clip_model, sentences, device=None, chunk_size=256):
    """L2-normalised features (n, d) fp32 of ``sentences`` (plain strings), with the model's tokenizer and
    text encoder (equal to open_clip's ``encode_text``; causal towers run only up to the longest sentence's
    EOT, which matters for long description lists)."""
    from . import prompted_text_encoder

    if device is None:
        device = next(clip_model.parameters()).device
    encoder = prompted_text_encoder(clip_model)
    feats = []
    for i in range(0, len(sentences), chunk_size):
        tokens = tokenize(list(sentences[i:i + chunk_size]), model=clip_model).to(device)
        feats.append(encoder.encode_tokens(tokens).float())
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def encode_class_sentences(clip_model, sentences_per_class, device=None, chunk_size=256):
    """One L2-normalised feature (K, d) per class from its own sentences (CuPL's ensembling): every
    sentence's feature normalised, averaged over the class's sentences, re-normalised."""
    out = []
    for sentences in sentences_per_class:
        if not sentences:
            raise ValueError("every class needs at least one sentence")
        out.append(encode_sentences(clip_model, sentences, device, chunk_size).mean(dim=0))
    return F.normalize(torch.stack(out), dim=-1)


@torch.no_grad()
def phrase_vectors(clip_model, phrase, n, context_length=None):
    """Token embeddings (n, d_t) fp32 of the first ``n`` word tokens of ``phrase`` under the **model's**
    tokenizer (from its first word slot: 1 after CLIP's start token, 0 for SigLIP). The family-aware
    form of ``prompt_init._phrase_vectors`` (``context_length`` is accepted and the model's is used)."""
    tok = model_tokenizer(clip_model)
    n_tok = tok.count(phrase)
    if n_tok < n:
        raise ValueError(
            f'The init phrase "{phrase}" has {n_tok} tokens, fewer than the {n} context tokens to '
            "initialise; use a longer phrase, fewer context tokens, or an empty CTX_INIT (random init)"
        )
    embedding = text_tower(clip_model).token_embedding
    ids = tok([phrase]).to(embedding.weight.device)
    s = tok.first_slot
    return embedding(ids).float()[0, s:s + n].clone()
