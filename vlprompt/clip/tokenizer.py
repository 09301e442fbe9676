"""Tokenizers of the text towers.

* CLIP's BPE tokenizer (open_clip ships the vocabulary, so it works offline): ``SOS words EOT 0...``;
  the tokenizer of OpenAI CLIP, the LAION / DFN / MetaCLIP CLIPs, EVA02-CLIP and PE-Core.
* Any open_clip tokenizer (SigLIP / SigLIP2: a Hugging Face sentencepiece tokenizer, **no start
  token**, ``words EOS pad...`` padded to the fixed context length), wrapped by
  :class:`OpenClipTokenizer`.

:func:`model_tokenizer` picks the tokenizer of a model: the one attached as ``model.vlprompt_tokenizer``
(the small test backbones), else open_clip's tokenizer for the model's open_clip name when its text
tower is bidirectional, else CLIP's BPE with the tower's context length. Every tokenizer exposes the
same layout facts, read from its output rather than assumed: ``first_slot`` (position of the first word:
1 after SOS, 0 without a start token), ``eot_positions(ids)`` and ``count(text)``.

:func:`tokenize` / :func:`count_tokens` keep their CLIP signatures; pass ``model=`` to use the model's
tokenizer.
"""
import functools

import torch
from vlprompt.errors import InvalidValueError, UserRuntimeError

__all__ = ["tokenize", "count_tokens", "model_tokenizer", "ClipBPETokenizer", "OpenClipTokenizer",
           "NoStartBPETokenizer"]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class ClipBPETokenizer:
    """CLIP's BPE: ``[SOS] words [EOT] 0 ...`` in ``context_length`` positions; EOT = argmax id."""

    has_start_token = True

    def __init__(self, context_length=77):
        self.context_length = int(context_length)
        tok = _tokenizer()
        self.sot, self.eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]

    @property
    def first_slot(self):
        return 1

    def encode(self, text):
        return _tokenizer().encode(text)

    def __call__(self, texts, context_length=None):
        if isinstance(texts, str):
            texts = [texts]
        n = int(context_length or self.context_length)
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.sot] + self.encode(t) + [self.eot]
            if len(ids) > n:
                raise InvalidValueError(f"Text is {len(ids)} tokens long, more than the context length {n}: {t!r}")
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def eot_positions(self, ids):
        return ids.argmax(dim=-1)

    def count(self, text):
        return len(self.encode(text))


class NoStartBPETokenizer(ClipBPETokenizer):
    """SigLIP's token layout: ``words [EOS] pad ...`` (no start token), always padded to the full
    context length. Used by the small random-weight SigLIP test backbone (the real SigLIP tokenizer is
    a Hugging Face sentencepiece model that needs a download).

    With ``vocab_size``, word ids are CLIP BPE ids mapped into ``[2, vocab_size)`` by a fixed
    permutation-like fold, EOS is 1 and padding 0 (SigLIP's ids for ``</s>`` and its 32000-word
    vocabulary): ids differ from CLIP's, so code that tokenizes with CLIP's tokenizer instead of the
    model's fails (out-of-range start token) or picks other embeddings, as it would with real SigLIP.
    """

    has_start_token = False

    def __init__(self, context_length=64, pad_id=0, vocab_size=None):
        super().__init__(context_length)
        self.pad_id = int(pad_id)
        self.vocab_size = vocab_size
        if vocab_size is not None:
            self.eot = 1

    @property
    def first_slot(self):
        return 0

    def encode(self, text):
        ids = _tokenizer().encode(text)
        if self.vocab_size is None:
            return ids
        return [2 + (i * 7919) % (self.vocab_size - 2) for i in ids]

    def __call__(self, texts, context_length=None):
        if isinstance(texts, str):
            texts = [texts]
        n = int(context_length or self.context_length)
        out = torch.full((len(texts), n), self.pad_id, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.encode(t) + [self.eot]
            if len(ids) > n:
                raise InvalidValueError(f"Text is {len(ids)} tokens long, more than the context length {n}: {t!r}")
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def eot_positions(self, ids):
        return (ids == self.eot).int().argmax(dim=-1)


class OpenClipTokenizer:
    """Wraps ``open_clip.get_tokenizer(name)``; the layout is read from the tokenizer's own output.

    ``first_slot``: where "a" lands in ``tok(["a"])`` compared with ``tok([""])``; the EOS id is the token
    at that position in ``tok([""])``; ``count(text)`` = EOS position - ``first_slot``.
    """

    def __init__(self, open_clip_name):
        import open_clip

        try:
            self._tok = open_clip.get_tokenizer(open_clip_name)
        except ImportError as e:  # the packages of Hugging Face tokenizers (requirements.txt names them)
            missing = getattr(e, "name", None) or "transformers"
            raise UserRuntimeError(
                f"The tokenizer of {open_clip_name} needs the Python package `{missing}`, which is not installed. "
                'SigLIP-family tokenizers are Hugging Face tokenizers: run pip install -e ".[siglip]" in the '
                "vlprompt checkout (or: pip install transformers sentencepiece)"
            ) from None
        except Exception as e:  # an offline Hugging Face download
            raise UserRuntimeError(
                f"The tokenizer of {open_clip_name} could not be loaded ({type(e).__name__}: {e}). SigLIP-family "
                "tokenizers are Hugging Face tokenizers: install `transformers` and `sentencepiece`, and have "
                "the tokenizer files in the Hugging Face cache (run once with network)"
            ) from e
        self.context_length = int(getattr(self._tok, "context_length", 77))
        empty = self._tok([""])[0]
        word = self._tok(["a"])[0]
        diff = (empty != word).nonzero()
        self._first = int(diff[0]) if len(diff) else 0
        self.eot = int(empty[self._first])
        self.has_start_token = self._first > 0

    @property
    def first_slot(self):
        return self._first

    def __call__(self, texts, context_length=None):
        if isinstance(texts, str):
            texts = [texts]
        n = int(context_length or self.context_length)
        ids = self._tok(list(texts), context_length=n)
        for t, row in zip(texts, ids):
            if not (row == self.eot).any():
                raise InvalidValueError(f"Text is longer than the context length {n}: {t!r}")
        return ids

    def eot_positions(self, ids):
        return (ids == self.eot).int().argmax(dim=-1)

    def count(self, text):
        ids = self([text])[0]
        return int(self.eot_positions(ids.unsqueeze(0))[0]) - self._first


def model_tokenizer(model):
    """The tokenizer of ``model`` (see the module docstring); cached on the model."""
    tok = getattr(model, "vlprompt_tokenizer", None)
    if tok is not None:
        return tok
    from .backbone import model_dims

    dims = model_dims(model)
    if dims["text_kind"] == "bidirectional":
        name = getattr(model, "vlprompt_tokenizer_name", None)
        if not name:
            raise RuntimeError(
                "This model's text tower is bidirectional (SigLIP-like) and has no known tokenizer: build it "
                "with vlprompt.clip.build_clip_model, or set model.vlprompt_tokenizer"
            )
        tok = OpenClipTokenizer(name)
    else:
        tok = ClipBPETokenizer(dims["context_length"] or 77)
    object.__setattr__(model, "vlprompt_tokenizer", tok)
    return tok


def tokenize(texts, context_length=None, model=None):
    """Tokenize a string or list of strings into a (n, context_length) LongTensor.

    Without ``model``: CLIP's BPE (``SOS ... EOT 0...``, context length 77 unless given). With
    ``model``: that model's tokenizer and, unless given, its context length.
    """
    if model is None:
        return ClipBPETokenizer(context_length or 77)(texts)
    return model_tokenizer(model)(texts, context_length)


def count_tokens(text, model=None):
    """Number of word tokens of ``text`` (no start / end tokens) under CLIP's BPE or ``model``'s tokenizer."""
    if model is None:
        return len(_tokenizer().encode(text))
    return model_tokenizer(model).count(text)
