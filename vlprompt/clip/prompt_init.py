"""Prompt initialisation helpers shared by the prompt-learning trainers.

* :func:`random_prompt` / :func:`random_deep_prompts`: N(0, 0.02^2) prompt tokens (fp32).
* :func:`init_text_context`: the shallow text context and the prompt-prefix string, following each
  method's own rule for ``N_CTX`` vs. an init phrase such as ``"a photo of a"``
  (docs/METHODS.md, context initialisation):

  ========  =========================================================================================
  rule      behaviour with ``ctx_init`` set
  ========  =========================================================================================
  coop      CoOp/CoCoOp: ``N`` = number of words of the phrase (``N_CTX`` is ignored); the context is
            the token embeddings at positions 1..N; the prefix string is the phrase.
  maple     MaPLe/IVLP/APLe: if ``N <= 4`` the first ``N`` tokens of the phrase are learnable and the
            prefix string is the *whole* phrase, so the remaining words ("of a" for N=2) stay as
            frozen tokens; if ``N > 4``: random init with an ``"X X ..."`` prefix.
  mudpt     MuDPT: the first ``N`` words; the prefix string is only those words (the rest is dropped).
  ========  =========================================================================================

  Without ``ctx_init`` every rule gives a random context and the prefix ``"X X ... X"`` (N times).
* :func:`clean_classname` (``_`` -> space) and :func:`prompt_strings` (``"<prefix> <classname>."``).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import ArgError
from .templates import clean_classname
from .tokenizer import count_tokens, tokenize
from vlprompt.errors import InvalidValueError

__all__ = [
    "INIT_STD",
    "ContextInit",
    "clean_classname",
    "prompt_strings",
    "random_prompt",
    "random_deep_prompts",
    "init_text_context",
    "token_embeddings",
]

INIT_STD = 0.02
RULES = ("coop", "maple", "mudpt")




def prompt_strings(prefix, classnames):
    """``["<prefix> <classname>.", ...]`` with class names cleaned (no prefix: ``"<classname>."``)."""
    prefix = prefix.strip()
    return [f"{prefix} {clean_classname(c)}." if prefix else f"{clean_classname(c)}." for c in classnames]


def random_prompt(n, dim, std=INIT_STD):
    """A (n, dim) fp32 tensor drawn from N(0, std^2) with the global torch RNG."""
    t = torch.empty(n, dim, dtype=torch.float32)
    nn.init.normal_(t, std=std)
    return t


def random_deep_prompts(count, n, dim, std=INIT_STD):
    """``nn.ParameterList`` of ``count`` independent (n, dim) fp32 prompts, N(0, std^2) each."""
    return nn.ParameterList([nn.Parameter(random_prompt(n, dim, std)) for _ in range(count)])


@torch.no_grad()
def token_embeddings(clip_model, token_ids):
    """Token embeddings (fp32, no positional embedding) of ``token_ids`` (K, T) -> (K, T, d_t)."""
    emb = clip_model.token_embedding
    return emb(token_ids.to(emb.weight.device)).float()


@dataclass
class ContextInit:
    """Result of :func:`init_text_context`.

    Attributes:
        vectors: (n_ctx, d_t) fp32 initial context.
        prefix: the prompt-prefix string placed before the class name; its first ``n_ctx`` tokens
            are the learnable slots (positions 1..n_ctx of the tokenized prompt).
        n_ctx: the number of learnable tokens (may differ from the requested ``N_CTX`` for ``coop``).
        from_phrase: whether the vectors come from the init phrase (False: random).
    """

    vectors: torch.Tensor
    prefix: str
    n_ctx: int
    from_phrase: bool


def _phrase_vectors(clip_model, phrase, n, context_length):
    """Token embeddings of the first ``n`` tokens of ``phrase`` (the model's tokenizer and first word slot)."""
    from .towers.text import phrase_vectors

    return phrase_vectors(clip_model, phrase, n)


def init_text_context(clip_model, n_ctx, ctx_init="", rule="coop", context_length=77, where="n_ctx"):
    """Initial shallow text context for a prompt learner.

    Args:
        clip_model: the frozen open_clip CLIP (its ``token_embedding`` is used).
        n_ctx: requested number of context tokens (``N_CTX``); must be >= 1 except for ``coop`` with a
            phrase (then the number of words is used).
        ctx_init: init phrase (``CTX_INIT``), ``""`` for random init. ``_`` are read as spaces.
        rule: ``"coop"``, ``"maple"`` or ``"mudpt"`` (see the module docstring).
        where: argument named in errors (:class:`vlprompt.clip.errors.ArgError`).

    Returns: :class:`ContextInit`.
    """
    if rule not in RULES:
        raise InvalidValueError(f"Unknown context-init rule '{rule}'; choose one of {RULES}")
    d_t = clip_model.token_embedding.weight.shape[1]
    phrase = clean_classname(ctx_init) if ctx_init else ""
    phrase = " ".join(phrase.split())
    if rule == "coop" and phrase:
        n = len(phrase.split(" "))
        return ContextInit(_phrase_vectors(clip_model, phrase, n, context_length), phrase, n, True)
    n_ctx = int(n_ctx)
    if n_ctx < 1:
        raise ArgError(where, f"must be >= 1, got {n_ctx}")
    if rule == "maple" and phrase and n_ctx <= 4:
        return ContextInit(_phrase_vectors(clip_model, phrase, n_ctx, context_length), phrase, n_ctx, True)
    if rule == "mudpt" and phrase:
        words = phrase.split(" ")
        if n_ctx > len(words):
            raise ArgError(
                where,
                f'{n_ctx} tokens but the init phrase "{phrase}" has only {len(words)} words; use at most '
                "as many tokens as words, or no init phrase",
            )
        prefix = " ".join(words[:n_ctx])
        return ContextInit(_phrase_vectors(clip_model, prefix, n_ctx, context_length), prefix, n_ctx, True)
    return ContextInit(random_prompt(n_ctx, d_t), " ".join(["X"] * n_ctx), n_ctx, False)
