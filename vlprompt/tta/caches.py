"""Mechanics shared by the training-free online test-time procedures (TDA, DMN-ZS).

Pure torch, no config: the procedures in ``trainers/tta/`` call these with plain tensors and numbers.

* :func:`confident_indices` -- indices of the ``int(N * fraction)`` lowest values of a per-view entropy
  (``argsort`` ascending, as TPT's ``select_confident_samples``); TDA ranks views by the softmax entropy of
  their logits, DMN by ``-sum p log(p + 1e-6)`` of their probabilities. The entropies themselves (TPT's
  per-view entropy and ``avg_entropy``) are :mod:`vlprompt.tta.objectives`.
* :func:`affinity_kernel` -- the Tip-Adapter style kernel ``exp(-beta * (1 - cos))`` that both TDA (cache
  logits) and DMN (memory read-out weights) put on cosine similarities.

The official codes write each of these inline (TDA: ``utils.py``; DMN: ``dmn_main.py``); the arithmetic here
keeps their operation order so that results are bit-equal on the same inputs (docs/METHODS.md, TDA and DMN-ZS).
"""
import torch

__all__ = ["confident_indices", "affinity_kernel"]


def confident_indices(entropy, fraction):
    """The ``int(len(entropy) * fraction)`` indices of lowest entropy, lowest first (``argsort`` ascending)."""
    keep = int(entropy.size()[0] * fraction)
    return torch.argsort(entropy, descending=False)[:keep]


def affinity_kernel(similarity, beta):
    """``exp(-(beta - beta * similarity))``: 1 for identical directions, ``exp(-beta)`` for orthogonal ones.

    Written as TDA's ``((-1) * (beta - beta * affinity)).exp()``; DMN's ``exp(-beta * (1 - s))`` is the same
    function (:class:`trainers.tta.dmn.DynamicMemory` keeps DMN's own operation order)."""
    return ((-1) * (beta - beta * similarity)).exp()
