"""Base class for text prompt learners: class-derived token buffers that follow the label space.

A prompt string per class is ``"<prefix> <classname>."``; after tokenisation with the model's tokenizer,
the ``N`` positions from the first word slot on (the first ``N`` tokens of the prefix) are the
learnable slots. The first word slot is where the tokenizer puts the first word: 1 after CLIP's start
token, 0 for tokenizers without one (SigLIP). Everything else is fixed and derived from the class names:

* ``token_prefix``  (K, S, d_t)       embeddings before the slots (S = first slot: the SOS embedding,
  or nothing)
* ``token_suffix``  (K, T-S-N, d_t)   embeddings after the slots (frozen prefix words, class tokens,
  ".", EOT, padding)
* ``tokenized_prompts`` (K, T) long   the token ids (T = the tower's context length: 77 for CLIP, 64
  for SigLIP, 32 for PE-Core)
* ``eot_idx`` (K,) long               EOT position of each prompt

They are **non-persistent buffers**: never written to checkpoints and rebuilt by
:meth:`ClassPromptLearner.set_classnames` for the current label space, so a model trained on base
classes (or ImageNet) evaluates on novel classes (or other datasets) by building it with the other
class list and loading the learned state. Legacy checkpoints that do contain ``token_prefix`` /
``token_suffix`` (official CoOp/MaPLe files) load too: those keys are dropped on load.
"""
import torch
import torch.nn as nn

from .backbone import model_dims, text_tower
from .prompt_init import clean_classname, prompt_strings
from .tokenizer import model_tokenizer

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
    * :attr:`text_length` (how many positions the text pass needs: ``max(eot_idx) + 1`` for causal
      towers, the full context length for bidirectional ones),
    * :attr:`first_slot` (position of the first learnable slot),
    * :meth:`assemble` (``ctx`` (N, d) or (K, N, d) -> prompts (K, text_length, d)).

    Args:
        clip_model: the frozen open_clip CLIP / CustomTextCLIP (its text tower's ``token_embedding``
            and its tokenizer are used; it is referenced, not registered, so it never enters this
            module's state_dict).
        classnames: list of K class names.
        prompt_prefix: the prefix string (its first ``n_ctx`` tokens are the learnable slots).
        n_ctx: number of learnable slots ``N`` (0 allowed: plain hand-crafted prompts).
    """

    def __init__(self, clip_model, classnames, prompt_prefix, n_ctx):
        super().__init__()
        object.__setattr__(self, "_clip_model", clip_model)
        self.prompt_prefix = prompt_prefix
        self.n_ctx = int(n_ctx)
        dims = model_dims(clip_model)
        self.ctx_dim = text_tower(clip_model).token_embedding.weight.shape[1]
        self.context_length = dims["context_length"]
        self._tokenizer = model_tokenizer(clip_model)
        self.first_slot = int(self._tokenizer.first_slot)
        # causal towers: positions after EOT never reach it, so the pass may stop there
        self.truncatable = dims["text_kind"] == "causal"
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
        tokenized = self._tokenizer(texts, self.context_length)
        n_prefix_tokens = self._tokenizer.count(self.prompt_prefix) if self.prompt_prefix.strip() else 0
        if n_prefix_tokens < self.n_ctx:
            raise ValueError(
                f'The prompt prefix "{self.prompt_prefix}" has {n_prefix_tokens} tokens, fewer than the '
                f"{self.n_ctx} learnable slots"
            )
        embedding = text_tower(self._clip_model).token_embedding
        emb = embedding(tokenized.to(embedding.weight.device)).float()
        device = emb.device
        s = self.first_slot
        self.classnames = [clean_classname(c) for c in classnames]
        self.n_cls = len(classnames)
        self.name_lens = [self._tokenizer.count(c) for c in self.classnames]
        self.token_prefix = emb[:, :s].contiguous()
        self.token_suffix = emb[:, s + self.n_ctx :].contiguous()
        self.tokenized_prompts = tokenized.to(device)
        self.eot_idx = self._tokenizer.eot_positions(tokenized).to(device)
        if self.truncatable:
            self._text_length = int(self.eot_idx.max().item()) + 1
        else:
            self._text_length = int(tokenized.shape[1])
        self._on_classnames_changed()

    def _on_classnames_changed(self):
        """Hook for subclasses (e.g. recompute fixed text features). Called by set_classnames."""

    @property
    def text_length(self):
        """Number of token positions the text pass needs (``max(eot_idx) + 1`` for causal towers, the
        full context length for bidirectional ones)."""
        return self._text_length

    def suffix(self, length=None):
        """``token_suffix`` cut so that prompts are ``length`` tokens long (default: text_length)."""
        length = self.text_length if length is None else length
        return self.token_suffix[:, : max(length - self.first_slot - self.n_ctx, 0)]

    def assemble(self, ctx, length=None):
        """``[prefix (SOS or nothing) | ctx | suffix]`` for every class.

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
