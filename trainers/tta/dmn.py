"""DMN-ZS: dual memory networks, zero-shot (training-free) variant (Zhang et al., "Dual Memory Networks: A
Versatile Adaptation Approach for Vision-Language Models", CVPR 2024; official code github.com/YBZh/DMN).

An online test-time procedure. Without labelled data only the **dynamic memory** of DMN is used:

* per class ``memory_size`` = 50 slots of test features (zeros until written) and their entropies;
* each test image gets a pseudo-label from the mean *probability* of its most confident views
  (``int(N * 0.1)`` of N views by entropy with ``log(p + 1e-6)``); its view-0 (original image) feature is
  written to that class's next free slot, or, when the class is full, replaces the highest-entropy slot if
  the new entropy (``log(p + 1e-8)``) is lower than at least one stored entropy;
* read-out (after the write, so the sample is in memory): the class's slots plus its text feature, each
  normalised (empty slots stay 0), weighted by ``exp(-beta (1 - cos))`` (beta 5.5), summed and renormalised
  into a class prototype; memory probabilities = ``softmax(scale * prototype . f)``;
* score = ``p_text(view 0) + beta2 * p_memory`` (probabilities). The official code picks beta2 after the
  whole pass, on the test labels, from a 13-value grid (:data:`DMN_BETA2_GRID`); docs/METHODS.md, "DMN-ZS".

The learnable biases of DMN (all zero without training) are left out: adding a zero tensor is exact, but the
official renormalisations they come with are kept so the arithmetic matches bit for bit.
"""
import torch

from vlprompt.tta.caches import confident_indices

__all__ = ["DMN_BETA2_GRID", "DynamicMemory", "DMNState", "dmn_text_probs", "dmn_confident_mean",
           "search_beta2"]

DMN_BETA2_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000)


def dmn_text_probs(features, text_feat, logit_scale):
    """``softmax(scale * f @ t^T)`` per view, with DMN's renormalisation of the text features (C, D)."""
    text = text_feat / text_feat.norm(dim=1, keepdim=True)
    return (logit_scale * features @ text.t()).softmax(-1)


def dmn_confident_mean(probs, selection_p):
    """DMN's ``select_confident_samples`` then mean: the mean probability (1, C) of the ``int(N p)`` views of
    lowest entropy ``-sum p log(p + 1e-6)``."""
    entropy = -(probs * torch.log(probs + 1e-6)).sum(1)
    idx = confident_indices(entropy, selection_p)
    return probs[idx].mean(0, keepdim=True)


class DynamicMemory:
    """DMN's dynamic memory for C classes: ``feat`` (C, M, D), ``entropy`` (C, M), ``count`` (C, 1)."""

    def __init__(self, text_feat, memory_size=50, beta=5.5):
        num_classes, dim = text_feat.shape
        self.text_feat = text_feat  # (C, D), the "fixed" memory slot of each class
        self.memory_size = int(memory_size)
        self.beta = float(beta)
        device = text_feat.device
        # fp32 as officially (``torch.zeros`` default dtype), whatever the precision of the features
        self.feat = torch.zeros(num_classes, self.memory_size, dim, device=device)
        self.entropy = torch.zeros(num_classes, self.memory_size, device=device)
        self.count = torch.zeros(num_classes, 1, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, feature, mean_prob):
        """Write ``feature`` (1, D) under the pseudo-label of ``mean_prob`` (C,) (official
        ``update_memory_bank``). Returns ``(pseudo_label, entropy, slot or None)``."""
        _, index = mean_prob.max(0)
        label = index.item()
        entropy = -(mean_prob * (torch.log(mean_prob + 1e-8))).sum()
        if self.count[label] == self.memory_size:
            if (entropy < self.entropy[label]).sum() == 0:
                return label, entropy, None
            _, order = torch.sort(self.entropy[label])
            slot = int(order[-1])
        else:
            slot = self.count[label, 0].item()
            self.count[label] += 1
        self.feat[label][slot] = feature
        self.entropy[label][slot] = entropy
        return label, entropy, slot

    @torch.no_grad()
    def probs(self, feature, logit_scale):
        """Memory probabilities (1, C) for the normalised image feature (1, D) (official ``get_image_pred``,
        ``similarity_weighted``)."""
        memory = torch.cat((self.feat, self.text_feat.unsqueeze(1)), dim=1)  # (C, M + 1, D)
        empty = memory.sum(-1) == 0
        keys = memory / memory.norm(dim=-1, keepdim=True)
        keys[empty] = 0
        values = memory / memory.norm(dim=-1, keepdim=True)
        values[empty] = 0
        query = feature / feature.norm(dim=-1, keepdim=True)
        similarity = (query * keys).sum(-1)
        weights = torch.exp(-self.beta * (-similarity + 1))
        prototype = (values * weights.unsqueeze(-1)).sum(1)
        prototype = prototype / prototype.norm(dim=-1, keepdim=True)
        prototype = prototype.unsqueeze(0)
        prototype = prototype / prototype.norm(dim=-1, keepdim=True)
        logits = logit_scale * prototype @ feature.unsqueeze(-1)
        return logits[:, :, 0].softmax(dim=1)

    def nbytes(self):
        return sum(t.element_size() * t.nelement() for t in (self.feat, self.entropy, self.count))


class DMNState:
    """The online state of DMN-ZS over one test stream: the dynamic memory and the per-sample outputs.

    ``step(features)`` takes the normalised features (N, D) of one test image's views (row 0 = the original
    image) and returns ``(p_text (1, C), p_memory (1, C))``; :meth:`combine` forms the score for a beta2.
    """

    def __init__(self, text_feat, logit_scale, memory_size=50, beta=5.5, selection_p=0.1):
        self.text_feat = text_feat
        self.logit_scale = logit_scale
        self.selection_p = float(selection_p)
        self.memory = DynamicMemory(text_feat, memory_size, beta)
        self.last = {}

    @torch.no_grad()
    def step(self, features):
        probs = dmn_text_probs(features, self.text_feat, self.logit_scale)
        p_text = probs[:1]
        mean_prob = dmn_confident_mean(probs, self.selection_p)
        label, entropy, slot = self.memory.update(features[:1], mean_prob[0])
        p_memory = self.memory.probs(features[:1], self.logit_scale)
        self.last = {"pseudo_label": label, "entropy": float(entropy), "slot": slot}
        return p_text, p_memory

    @staticmethod
    def combine(p_text, p_memory, beta2):
        return p_text * 1.0 + p_memory * beta2


def search_beta2(p_text, p_memory, labels, grid=DMN_BETA2_GRID):
    """The official oracle: the beta2 of ``grid`` with the best top-1 accuracy on the test labels (first one
    on ties, as the official strict ``>``). Returns ``(beta2, accuracy %, {beta2: accuracy %})``."""
    best, best_acc, table = None, -1.0, {}
    for beta2 in grid:
        pred = DMNState.combine(p_text, p_memory, beta2).argmax(1)
        acc = 100.0 * float((pred == labels).float().mean())
        table[beta2] = acc
        if acc > best_acc:
            best, best_acc = beta2, acc
    return best, best_acc, table
