"""Base class for text prompt learners: class-derived token buffers that follow the label space.

A prompt string per class is ``"<prefix> <classname>."``; after tokenisation, positions ``1..N`` (the
first ``N`` tokens of the prefix) are the learnable slots. Everything else is fixed and derived from
the class names:

* ``token_prefix``  (K, 1, d_t)       SOS embedding
* ``token_suffix``  (K, T-1-N, d_t)   embeddings after the slots (frozen prefix words, class tokens,
  ".", EOT, padding)
* ``tokenized_prompts`` (K, T) long   the token ids (T = context length, 77)
* ``eot_idx`` (K,) long               EOT position of each prompt

They are **non-persistent buffers**: never written to checkpoints and rebuilt by
:meth:`ClassPromptLearner.set_classnames` for the current label space, so a model trained on base
classes (or ImageNet) evaluates on novel classes (or other datasets) by building it with the other
class list and loading the learned state. Legacy checkpoints that do contain ``token_prefix`` /
``token_suffix`` (official CoOp/MaPLe files) load too: those keys are dropped on load.
"""
import torch
import torch.nn as nn

from .prompt_init import clean_classname, prompt_strings, token_embeddings
from .tokenizer import count_tokens, tokenize

__all__ = ["ClassPromptLearner", "CLASS_DERIVED_KEYS", "drop_class_derived_keys"]

#: names of buffers rebuilt from class names (also the legacy keys dropped on load)
CLASS_DERIVED_KEYS = ("token_prefix", "token_suffix", "tokenized_prompts", "eot_idx", "fixed_text_features")


def drop_class_derived_keys(state_dict):
    """Return a copy of ``state_dict`` without class-derived entries (at any module prefix)."""
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in CLASS_DERIVED_KEYS}


class ClassPromptLearner(nn.Module):
    """Holds the class-derived text buffers for prompts with ``n_ctx`` learnable slots.

    Subclasses add their learnable parameters and a ``forward``. Useful members:

    * :meth:`set_classnames` (rebuild buffers for another class list; ``classnames``, ``n_cls``,
      ``name_lens`` follow),
    * :attr:`text_length` (``max(eot_idx) + 1``: how many positions the truncated text pass needs),
    * :meth:`assemble` (``ctx`` (N, d) or (K, N, d) -> prompts (K, text_length, d)).

    Args:
        clip_model: the frozen open_clip CLIP (only its ``token_embedding`` is used; it is referenced,
            not registered, so it never enters this module's state_dict).
        classnames: list of K class names.
        prompt_prefix: the prefix string (its first ``n_ctx`` tokens are the learnable slots).
        n_ctx: number of learnable slots ``N`` (0 allowed: plain hand-crafted prompts).
    """

    def __init__(self, clip_model, classnames, prompt_prefix, n_ctx):
        super().__init__()
        object.__setattr__(self, "_clip_model", clip_model)
        self.prompt_prefix = prompt_prefix
        self.n_ctx = int(n_ctx)
        self.ctx_dim = clip_model.token_embedding.weight.shape[1]
        self.context_length = clip_model.positional_embedding.shape[0]
        for name in ("token_prefix", "token_suffix", "tokenized_prompts", "eot_idx"):
            self.register_buffer(name, None, persistent=False)
        self._register_load_state_dict_pre_hook(self._drop_legacy_keys)
        self.set_classnames(classnames)

    @staticmethod
    def _drop_legacy_keys(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for k in CLASS_DERIVED_KEYS:
            state_dict.pop(prefix + k, None)

    @torch.no_grad()
    def set_classnames(self, classnames):
        """Rebuild the class-derived buffers for ``classnames`` (a list of K names)."""
        classnames = list(classnames)
        if not classnames:
            raise ValueError("The class list is empty")
        texts = prompt_strings(self.prompt_prefix, classnames)
        tokenized = tokenize(texts, self.context_length)
        n_prefix_tokens = count_tokens(self.prompt_prefix) if self.prompt_prefix.strip() else 0
        if n_prefix_tokens < self.n_ctx:
            raise ValueError(
                f'The prompt prefix "{self.prompt_prefix}" has {n_prefix_tokens} tokens, fewer than the '
                f"{self.n_ctx} learnable slots"
            )
        emb = token_embeddings(self._clip_model, tokenized)
        device = emb.device
        self.classnames = [clean_classname(c) for c in classnames]
        self.n_cls = len(classnames)
        self.name_lens = [count_tokens(c) for c in self.classnames]
        self.token_prefix = emb[:, :1].contiguous()
        self.token_suffix = emb[:, 1 + self.n_ctx :].contiguous()
        self.tokenized_prompts = tokenized.to(device)
        self.eot_idx = tokenized.argmax(dim=-1).to(device)
        self._text_length = int(self.eot_idx.max().item()) + 1
        self._on_classnames_changed()

    def _on_classnames_changed(self):
        """Hook for subclasses (e.g. recompute fixed text features). Called by set_classnames."""

    @property
    def text_length(self):
        """Number of token positions the truncated text pass needs (``max(eot_idx) + 1``)."""
        return self._text_length

    def suffix(self, length=None):
        """``token_suffix`` cut so that prompts are ``length`` tokens long (default: text_length)."""
        length = self.text_length if length is None else length
        return self.token_suffix[:, : max(length - 1 - self.n_ctx, 0)]

    def assemble(self, ctx, length=None):
        """``[SOS | ctx | suffix]`` for every class.

        ``ctx``: (N, d_t) shared or (K, N, d_t) per class. Returns (K, length, d_t) with ``length``
        defaulting to :attr:`text_length` (fp32 if ``ctx`` is fp32).
        """
        K = self.n_cls
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(K, -1, -1)
        if ctx.shape[0] != K or ctx.shape[1] != self.n_ctx:
            raise ValueError(f"ctx: expected ({self.n_ctx}, d) or ({K}, {self.n_ctx}, d), got {tuple(ctx.shape)}")
        prefix = self.token_prefix.to(ctx.dtype)
        suffix = self.suffix(length).to(ctx.dtype)
        return torch.cat([prefix, ctx, suffix], dim=1)
