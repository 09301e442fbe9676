"""Mechanics shared by the training-free online test-time procedures (TDA, DMN-ZS).

Pure torch, no config: the procedures in ``trainers/tta/`` call these with plain tensors and numbers.

* :func:`softmax_entropy` -- per-row entropy ``-sum softmax * log_softmax`` (natural log), the confidence
  measure of TPT's view selection and of TDA's cache priority.
* :func:`marginal_entropy` -- the entropy of the *mean probability* of a few views (TPT's ``avg_entropy``):
  ``log p_bar = logsumexp_v(log p_v) - log N``, clamped at the dtype minimum.
* :func:`confident_indices` -- indices of the ``int(N * fraction)`` lowest-entropy rows (``argsort``
  ascending, as in TPT's ``select_confident_samples``).
* :func:`affinity_kernel` -- the Tip-Adapter style kernel ``exp(-beta * (1 - cos))`` that both TDA (cache
  logits) and DMN (memory read-out weights) put on cosine similarities.

The official codes write each of these inline (TDA: ``utils.py``; DMN: ``dmn_main.py``); the arithmetic here
keeps their operation order so that results are bit-equal on the same inputs (docs/METHODS.md, TDA and DMN-ZS).
"""
import math

import torch

__all__ = ["softmax_entropy", "marginal_entropy", "confident_indices", "affinity_kernel"]


def softmax_entropy(logits):
    """Entropy (natural log) of ``softmax(logits)`` per row: shape (N,) for (N, C) logits."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def marginal_entropy(logits):
    """Entropy of the mean of the rows' softmax distributions (a 0-d tensor), computed in log space."""
    log_p = logits - logits.logsumexp(dim=-1, keepdim=True)
    log_mean = log_p.logsumexp(dim=0) - math.log(log_p.shape[0])
    log_mean = torch.clamp(log_mean, min=torch.finfo(log_mean.dtype).min)
    return -(log_mean * torch.exp(log_mean)).sum(dim=-1)


def confident_indices(entropy, fraction):
    """The ``int(len(entropy) * fraction)`` indices of lowest entropy, lowest first (``argsort`` ascending)."""
    keep = int(entropy.size()[0] * fraction)
    return torch.argsort(entropy, descending=False)[:keep]


def affinity_kernel(similarity, beta):
    """``exp(-(beta - beta * similarity))``: 1 for identical directions, ``exp(-beta)`` for orthogonal ones.

    Written as TDA's ``((-1) * (beta - beta * affinity)).exp()``; DMN's ``exp(-beta * (1 - s))`` is the same
    function (:class:`trainers.tta.dmn.DynamicMemory` keeps DMN's own operation order)."""
    return ((-1) * (beta - beta * similarity)).exp()
