"""The shared pieces of the TPT family and the calibration metric, as the official code computes them.

* :func:`select_confident` — TPT's ``select_confident_samples``: per-view entropy ``−Σ softmax·log_softmax``
  (natural log), ``argsort`` ascending, keep the first ``int(N·p)`` views (p = 0.1 of 64 views -> 6).
* :func:`avg_entropy` — TPT's ``avg_entropy``: the entropy of the **marginal** distribution of the selected
  views, ``log p̄ = logsumexp_v(log_softmax(logits_v)) − log N`` clamped at the dtype minimum.
* :func:`expected_calibration_error` — C-TPT's ``ECE_Loss``: 20 equal-width confidence bins, a sample falls in
  the bin with ``lower < confidence <= upper`` (so confidence 0 falls in no bin), ECE = Σ |acc − conf|·n_bin/N.
"""
import math

import torch

__all__ = ["view_entropy", "select_confident", "avg_entropy", "expected_calibration_error"]


def view_entropy(logits):
    """(V, K) -> (V,) natural-log entropy of each row's softmax."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def select_confident(logits, p):
    """``(logits[idx], idx)``: the ``int(V·p)`` rows of lowest entropy, in ascending entropy order."""
    ent = view_entropy(logits)
    idx = torch.argsort(ent, descending=False)[: int(ent.size()[0] * p)]
    return logits[idx], idx


def avg_entropy(logits):
    """Entropy of the mean of the rows' softmax distributions (a scalar)."""
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = logp.logsumexp(dim=0) - math.log(logp.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


def expected_calibration_error(confidences, correct, n_bins=20):
    """ECE (a fraction, not %) of ``confidences`` (N,) in [0, 1] and ``correct`` (N,) booleans (C-TPT's bins)."""
    conf = torch.as_tensor(confidences, dtype=torch.float64)
    corr = torch.as_tensor(correct, dtype=torch.float64)
    n = conf.numel()
    if n == 0:
        return float("nan")
    bounds = torch.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        inside = (conf > lo) & (conf <= hi)
        k = int(inside.sum())
        if k:
            ece += abs(float(corr[inside].mean()) - float(conf[inside].mean())) * k / n
    return ece
