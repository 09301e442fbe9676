"""CLIP's BPE tokenizer (open_clip ships the vocabulary, so this works offline)."""
import functools

import torch


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts, context_length=77):
    """Tokenize a string or list of strings into a (n, context_length) LongTensor (SOS ... EOT 0...)."""
    if isinstance(texts, str):
        texts = [texts]
    tok = _tokenizer()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
    for i, t in enumerate(texts):
        ids = [sot] + tok.encode(t) + [eot]
        if len(ids) > context_length:
            raise ValueError(
                f"Text is {len(ids)} tokens long, more than the context length {context_length}: {t!r}"
            )
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def count_tokens(text):
    """Number of BPE tokens of ``text`` (no SOS/EOT)."""
    return len(_tokenizer().encode(text))
