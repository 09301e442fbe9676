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
import json
import os.path as osp

import torch

from vlprompt.tta import TTA_REGISTRY, TestTimeProcedure, TTAError
from vlprompt.tta.caches import confident_indices

__all__ = ["DMN_BETA2_GRID", "DMN_TIP_TEMPLATES", "DynamicMemory", "DMNState", "DMN_ZS", "dmn_text_probs",
           "dmn_confident_mean", "grid_predictions", "search_beta2"]

DMN_BETA2_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000)


def dmn_text_probs(features, text_feat, logit_scale):
    """``softmax(scale * f @ t^T)`` per view, with DMN's renormalisation of the text features (C, D)."""
    text = text_feat / text_feat.norm(dim=1, keepdim=True)
    return (logit_scale * features @ text.t()).softmax(-1)


def dmn_confident_mean(probs, selection_p):
    """DMN's ``select_confident_samples`` then mean: the mean probability (1, C) of the ``int(N p)`` views of
    lowest entropy ``-sum p log(p + 1e-6)``. A single view (TTA-VLM's ``dmn_weak``) is its own pseudo-label."""
    if probs.size(0) == 1:
        return probs
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


def grid_predictions(p_text, p_memory, grid=DMN_BETA2_GRID):
    """The predictions (N, len(grid)) of ``p_text + beta2 * p_memory`` for every beta2 of ``grid``."""
    return torch.stack([DMNState.combine(p_text, p_memory, b).argmax(1) for b in grid], dim=1)


def search_beta2(predictions, labels, grid=DMN_BETA2_GRID):
    """The official oracle: the beta2 of ``grid`` with the best top-1 accuracy on the test labels, from the
    per-beta2 predictions (N, len(grid)); the first one on ties, as the official strict ``>``.
    Returns ``(beta2, accuracy %, [accuracy % per grid value])``."""
    y = torch.as_tensor(labels).view(-1, 1)
    accs = (100.0 * (torch.as_tensor(predictions) == y).double().mean(0)).tolist()
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))
    return float(grid[best]), accs[best], accs


# ------------------------------------------------------------------------------------------------
# The test-time procedure (vlprompt.tta): TTA.METHOD DMN_ZS
# ------------------------------------------------------------------------------------------------

# DMN's "tip" text prompts (data/imagnet_prompts.py of the official code): Tip-Adapter's 7 ImageNet templates (in
# DMN's order) for the ImageNet family, Caltech101 and SUN397; one template for the other fine-grained sets.
_TIP_SEVEN = [
    "a bad photo of the {}.", "a {} in a video game.", "a origami {}.", "a photo of the small {}.",
    "art of the {}.", "a photo of the large {}.", "itap of a {}.",
]
DMN_TIP_TEMPLATES = {
    "ImageNet": _TIP_SEVEN, "ImageNetA": _TIP_SEVEN, "ImageNetV2": _TIP_SEVEN, "ImageNetR": _TIP_SEVEN,
    "ImageNetSketch": _TIP_SEVEN, "Caltech101": _TIP_SEVEN, "SUN397": _TIP_SEVEN,
    "OxfordFlowers": ["a photo of a {}, a type of flower."],
    "DescribableTextures": ["{} texture."],
    "OxfordPets": ["a photo of a {}, a type of pet."],
    "StanfordCars": ["a photo of a {}, a type of car."],
    "UCF101": ["a photo of a person doing {}."],
    "Food101": ["a photo of {}, a type of food."],
    "FGVCAircraft": ["a photo of a {}, a type of aircraft."],
    "EuroSAT": ["a centered satellite photo of {}."],
}
TEXT_SOURCES = ("base", "tip", "tip_cupl")


def read_cupl_file(path, classnames):
    """``{class name: [sentences]}`` from a CuPL JSON file (the official ``data/gpt3_prompts/*.json``), checked to
    cover every class name (with ``_`` as spaces, as the official ``reset_classnames``)."""
    if not path:
        raise TTAError("TTA.DMN.TEXT tip_cupl needs TTA.DMN.CUPL_FILE: the CuPL descriptions of the dataset's classes "
                       "(data/gpt3_prompts/CuPL_prompts_<dataset>.json of github.com/YBZh/DMN)")
    if not osp.isfile(path):
        raise TTAError(f"TTA.DMN.CUPL_FILE {path} does not exist")
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as e:
        raise TTAError(f"TTA.DMN.CUPL_FILE {path} is not a readable JSON file: {e}") from None
    names = [c.replace("_", " ") for c in classnames]
    missing = [n for n in names if not isinstance(table, dict) or n not in table]
    if missing:
        raise TTAError(f"TTA.DMN.CUPL_FILE {path} has no descriptions for {len(missing)} class(es), e.g. "
                       f"'{missing[0]}': it must be the file of this dataset")
    return [list(table[n]) for n in names]


@torch.no_grad()
def encode_prompt_lists(clip_model, prompt_lists, device):
    """Per class: every prompt encoded, each feature normalised, averaged, renormalised (official
    ``get_text_features``) -> (C, D) fp32."""
    from vlprompt.clip.tokenizer import tokenize

    out = []
    for prompts in prompt_lists:
        emb = clip_model.encode_text(tokenize(prompts, model=clip_model).to(device)).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        out.append(mean / mean.norm())
    return torch.stack(out, dim=0)


@TTA_REGISTRY.register()
class DMN_ZS(TestTimeProcedure):
    """DMN-ZS as a test-time procedure: online, training-free (module docstring; docs/METHODS.md, "DMN-ZS").

    ``step`` returns ``log(p_text + BETA2 * p_memory)``: its argmax is DMN's prediction and its softmax the
    normalised mixture ``(p_text + BETA2 p_memory) / (1 + BETA2)``, the confidence recorded for ECE."""

    EPISODIC = False
    CFG_NODE = "DMN"
    CFG_DEFAULTS = dict(
        N_VIEWS=32,  # official -b 32 (view 0 + 31 augmented views); 1 = TTA-VLM's "dmn_weak"
        SELECTION_P=0.1,  # int(32 * 0.1) = 3 confident views give the pseudo-label
        MEMORY_SIZE=50,
        BETA=5.5,  # sharpness of the read-out weights exp(-beta (1 - cos))
        BETA2=1.0,  # weight of the memory probabilities in each prediction (TTA-VLM's fixed 1.0)
        SEARCH_BETA2=True,  # also report the official oracle: the best beta2 of the grid on the test labels
        TEXT="base",  # base: the base model's classifier; tip / tip_cupl: DMN's prompts (zero-shot CLIP only)
        CUPL_FILE="",  # TEXT tip_cupl: the official CuPL JSON of the dataset
    )

    @classmethod
    def refusal(cls, base):
        if base.kind not in ("zero_shot", "prompt_learner"):
            return ("DMN-ZS reads one text classifier and the image features of the base model; this base model "
                    "has neither a zero-shot head nor a prompt learner's classifier")
        return None

    @classmethod
    def n_views(cls, cfg):
        n = int(cfg.TTA.DMN.N_VIEWS)
        if n < 1:
            raise TTAError(f"TTA.DMN.N_VIEWS must be >= 1, got {n}")
        if n > 1 and int(n * float(cfg.TTA.DMN.SELECTION_P)) < 1:
            raise TTAError(f"TTA.DMN.N_VIEWS {n} with TTA.DMN.SELECTION_P {cfg.TTA.DMN.SELECTION_P} keeps no view "
                           "for the pseudo-label (int(N_VIEWS * SELECTION_P) = 0): use more views or a larger fraction")
        return n

    def __init__(self, cfg, base):
        super().__init__(cfg, base)
        node = self.node
        text = str(node.TEXT).lower()
        if text not in TEXT_SOURCES:
            raise TTAError(f"TTA.DMN.TEXT must be one of {', '.join(TEXT_SOURCES)}, got '{node.TEXT}'")
        if int(node.MEMORY_SIZE) < 1:
            raise TTAError(f"TTA.DMN.MEMORY_SIZE must be >= 1, got {node.MEMORY_SIZE}")
        if text == "base":
            feats = base.text_features()
            feats = feats / feats.norm(dim=-1, keepdim=True)
        else:
            dataset = cfg.DATASET.NAME
            if base.kind != "zero_shot":
                raise TTAError(f"TTA.DMN.TEXT {text} builds DMN's own prompt classifier, which only zero-shot CLIP "
                               f"has ({base.name} is a prompt learner): use TTA.DMN.TEXT base")
            if dataset not in DMN_TIP_TEMPLATES:
                raise TTAError(f"DMN has no official prompt list for {dataset}: use TTA.DMN.TEXT base")
            names = [c.replace("_", " ") for c in base.classnames]
            lists = [[t.format(n) for t in DMN_TIP_TEMPLATES[dataset]] for n in names]
            if text == "tip_cupl":
                lists = [a + b for a, b in zip(lists, read_cupl_file(node.CUPL_FILE, base.classnames))]
            with base.autocast():
                feats = encode_prompt_lists(base.clip_model, lists, base.device)
        self.text_feat = feats.float()
        self.text_source = text
        self.logit_scale = base.logit_scale.detach().exp().float()
        self.beta2 = float(node.BETA2)
        self.search = bool(node.SEARCH_BETA2)
        self.state = None

    def reset(self):
        n = self.node
        self.state = DMNState(self.text_feat, self.logit_scale, memory_size=int(n.MEMORY_SIZE),
                              beta=float(n.BETA), selection_p=float(n.SELECTION_P))
        self.grid_predictions = []  # per sample, the prediction under every beta2 of the official grid

    @torch.no_grad()
    def step(self, sample):
        feats = sample.image_features.float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        p_text, p_memory = self.state.step(feats)
        if self.search:
            self.grid_predictions.append(grid_predictions(p_text, p_memory)[0])
        return torch.log(DMNState.combine(p_text, p_memory, self.beta2))[0].float()

    def finish(self, labels):
        """The official beta2 search (an oracle on the test labels, ``labels`` in stream order): extra metrics."""
        if not self.search or not self.grid_predictions:
            return {}
        beta2, acc, _ = search_beta2(torch.stack(self.grid_predictions), labels)
        return {"searched_accuracy": acc, "searched_beta2": beta2}

    def state_summary(self):
        mem = self.state.memory
        filled = mem.count[:, 0]
        return {
            "text": self.text_source, "beta2": self.beta2, "memory_size": mem.memory_size, "beta": mem.beta,
            "classes_in_memory": int((filled > 0).sum()), "memory_entries": int(filled.sum()),
            "memory_bytes": mem.nbytes(),
        }
