"""TDA: training-free dynamic adapter (Karmanov et al., "Efficient Test-Time Adaptation of Vision-Language
Models", CVPR 2024; official code github.com/kdiAAA/TDA).

An online test-time procedure: two class-keyed caches of test features filled while the test stream is
read, no gradient anywhere.

* **Positive cache** (capacity 3 per class): every test sample is offered under its pseudo-label, with its
  prediction entropy as priority; a full class keeps its lowest-entropy entries.
* **Negative cache** (capacity 2 per class): only samples whose *normalised* entropy lies strictly between
  0.2 and 0.5 are offered; each entry keeps the sample's probability row, turned at read-out into a 0/1
  mask of the classes with probability in (0.03, 1.0).
* **Logits** = ``clip_logits + A(pos) - A(neg)`` with ``A = alpha * exp(-beta * (1 - f . keys)) @ values``;
  the current sample is inserted before its own prediction (it can attend to itself).

The official per-dataset hyper-parameters (its ``configs/<dataset>.yaml``, the same for RN50 and ViT-B/16)
are :data:`TDA_DATASET_PARAMS`; its per-dataset template lists :data:`TDA_TEMPLATES`. What is kept from the
official code and what is switchable is in docs/METHODS.md, "TDA".
"""
import math
import operator

import torch
import torch.nn.functional as F

from vlprompt.tta import TTA_REGISTRY, TestTimeProcedure, TTAError
from vlprompt.tta.caches import affinity_kernel, confident_indices
from vlprompt.tta.objectives import avg_entropy, view_entropy

__all__ = [
    "TDA_DATASET_PARAMS", "TDA_MULTIVIEW_DATASETS", "TDA_TEMPLATES", "TDA_NEGATIVE_DEFAULTS", "TDA",
    "ClassCache", "TDAState", "tda_clip_outputs", "normalized_entropy", "tda_params_for", "resolve_positive_params",
]

# Positive cache (alpha, beta) per dataset, from the official configs/*.yaml (commit e697fb0). Every other
# value is the same in all 15 files: positive shot_capacity 3; negative shot_capacity 2, alpha 0.117,
# beta 1.0, entropy_threshold (0.2, 0.5), mask_threshold (0.03, 1.0); both caches enabled.
TDA_DATASET_PARAMS = {
    "ImageNet": (2.0, 5.0),
    "ImageNetA": (2.0, 5.0),
    "ImageNetV2": (1.0, 8.0),
    "ImageNetR": (1.0, 8.0),
    "ImageNetSketch": (2.363, 7.45),
    "Caltech101": (5.0, 5.0),
    "DescribableTextures": (2.0, 3.0),
    "EuroSAT": (4.0, 8.0),
    "FGVCAircraft": (2.0, 2.0),
    "Food101": (1.0, 1.0),
    "OxfordFlowers": (1.0, 5.0),
    "OxfordPets": (2.0, 7.0),
    "StanfordCars": (1.0, 7.0),
    "SUN397": (2.0, 3.0),
    "UCF101": (3.0, 8.0),
}

TDA_POSITIVE_CAPACITY = 3
TDA_NEGATIVE_DEFAULTS = {
    "shot_capacity": 2, "alpha": 0.117, "beta": 1.0,
    "entropy_lower": 0.2, "entropy_upper": 0.5, "mask_lower": 0.03, "mask_upper": 1.0,
}

# The official run feeds 64 views (the original + 63 AugMix views, AugMix on) to the four ImageNet shifts and
# one preprocessed view (CLIP's own transform) to ImageNet and the 10 cross-domain sets.
TDA_MULTIVIEW_DATASETS = ("ImageNetA", "ImageNetV2", "ImageNetR", "ImageNetSketch")
TDA_MULTIVIEW_VIEWS = 64

# CLIP's 7 selected ImageNet templates, in the official order of TDA's datasets/imagenet.py.
_SEVEN = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]
# The 80 ImageNet templates of CLIP's prompt-engineering notebook, in the order of TDA's
# datasets/imagenet_r.py and imagenet_sketch.py.
_EIGHTY = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]
# Template lists of the official datasets/*.py (used when TDA builds its own zero-shot classifier).
TDA_TEMPLATES = {
    "ImageNet": _SEVEN, "ImageNetA": _SEVEN, "ImageNetV2": _SEVEN,
    "ImageNetR": _EIGHTY, "ImageNetSketch": _EIGHTY,
    "Caltech101": _SEVEN, "StanfordCars": _SEVEN, "SUN397": _SEVEN,
    "DescribableTextures": ["{} texture."],
    "EuroSAT": ["a centered satellite photo of {}."],
    "FGVCAircraft": ["a photo of a {}, a type of aircraft."],
    "Food101": ["a photo of {}, a type of food."],
    "OxfordFlowers": ["a photo of a {}, a type of flower."],
    "OxfordPets": ["a photo of a {}, a type of pet."],
    "UCF101": ["a photo of a person doing {}."],
}


def tda_params_for(dataset_name):
    """The official positive (alpha, beta) of ``dataset_name`` or ``None`` for a dataset TDA never tuned."""
    return TDA_DATASET_PARAMS.get(dataset_name)


def normalized_entropy(loss, num_classes, base="log2"):
    """TDA's ``get_entropy``: the natural-log entropy divided by ``log2(C)`` (official, mixed bases: values
    stay below ln 2 ~ 0.693) or by ``ln(C)`` (``base="ln"``, a true [0, 1] normalisation)."""
    top = math.log2(num_classes) if base == "log2" else math.log(num_classes)
    return float(loss / top)


class ClassCache:
    """One TDA cache: ``{class index: [entry, ...]}`` with at most ``capacity`` entries per class, each
    list sorted by ascending entropy (the last entry is the one a better sample replaces).

    An entry is ``(feature (1, D), loss (tensor), prob (1, C) or None)``. ``update`` follows the official
    ``update_cache``: a new class starts a list; a list below capacity appends; a full list replaces its
    last (highest-entropy) entry only if the new loss is strictly smaller; then the list is re-sorted with
    Python's stable sort (ties keep insertion order).
    """

    def __init__(self, capacity):
        if int(capacity) < 1:
            raise ValueError(f"a TDA cache needs a capacity of at least 1, got {capacity}")
        self.capacity = int(capacity)
        self.entries = {}

    def __len__(self):
        return sum(len(v) for v in self.entries.values())

    def __bool__(self):
        return bool(self.entries)

    def update(self, label, feature, loss, prob=None):
        entry = (feature, loss, prob)
        items = self.entries.get(label)
        if items is None:
            self.entries[label] = [entry]
            return
        if len(items) < self.capacity:
            items.append(entry)
        elif loss < items[-1][1]:
            items[-1] = entry
        self.entries[label] = sorted(items, key=operator.itemgetter(1))

    def keys_and_labels(self):
        """Cached features (K, D) and their class indices, classes ascending, each class's entries in order."""
        labels = [c for c in sorted(self.entries) for _ in self.entries[c]]
        keys = torch.cat([e[0] for c in sorted(self.entries) for e in self.entries[c]], dim=0)
        return keys, labels

    def logits(self, feature, alpha, beta, num_classes, mask=None):
        """``alpha * exp(-beta (1 - feature @ keys^T)) @ values`` (1, C).

        Values are the one-hot pseudo-labels (positive cache) or, with ``mask=(lower, upper)``, the cached
        probability rows turned into ``(p > lower) & (p < upper)`` 0/1 rows (negative cache)."""
        keys, labels = self.keys_and_labels()
        keys = keys.permute(1, 0)
        if mask is None:
            values = F.one_hot(torch.tensor(labels, dtype=torch.int64), num_classes=num_classes)
        else:
            probs = torch.cat([e[2] for c in sorted(self.entries) for e in self.entries[c]], dim=0)
            values = ((probs > mask[0]) & (probs < mask[1])).type(torch.int8)
        values = values.to(device=feature.device, dtype=feature.dtype)
        affinity = feature @ keys
        return alpha * (affinity_kernel(affinity, beta) @ values)

    def nbytes(self):
        """Bytes held by the cached tensors (features, losses, probability rows)."""
        total = 0
        for items in self.entries.values():
            for feature, loss, prob in items:
                total += feature.element_size() * feature.nelement()
                if torch.is_tensor(loss):
                    total += loss.element_size() * loss.nelement()
                if prob is not None:
                    total += prob.element_size() * prob.nelement()
        return total


@torch.no_grad()
def tda_clip_outputs(features, text_weights, logit_scale=100.0, selection_p=0.1):
    """TDA's ``get_clip_logits`` on precomputed L2-normalised image features of one test image.

    ``features`` (N, D): one row per view (N = 1: the single preprocessed view); ``text_weights`` (D, C):
    the class text features as columns. Returns ``(feature (1, D), clip_logits (1, C), loss, prob (1, C),
    pred)``. With several views the ``int(0.1 N)`` lowest-entropy views are kept: the feature is the mean of
    their normalised features (not renormalised, as officially), the logits the mean of their logits, the
    loss the entropy of their mean probability, ``prob`` the mean of their softmaxes.
    """
    clip_logits = logit_scale * features @ text_weights
    if features.size(0) > 1:
        idx = confident_indices(view_entropy(clip_logits), selection_p)
        output = clip_logits[idx]
        feature = features[idx].mean(0).unsqueeze(0)
        clip_logits = output.mean(0).unsqueeze(0)
        loss = avg_entropy(output)
        prob = output.softmax(1).mean(0).unsqueeze(0)
        pred = int(output.mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t())
    else:
        feature = features
        loss = view_entropy(clip_logits)
        prob = clip_logits.softmax(1)
        pred = int(clip_logits.topk(1, 1, True, True)[1].t()[0])
    return feature, clip_logits, loss, prob, pred


class TDAState:
    """The online state of TDA over one test stream (one dataset): both caches and their hyper-parameters.

    ``step(features)`` processes one test image (its view features) in the official order: (1) positive
    cache update under the pseudo-label; (2) negative cache update if ``lower < normalised entropy < upper``;
    (3) logits = clip logits + positive cache logits - negative cache logits (each only if that cache is
    non-empty and enabled). Returns the final logits (1, C).
    """

    def __init__(self, text_weights, pos_alpha, pos_beta, pos_capacity=TDA_POSITIVE_CAPACITY,
                 neg_alpha=0.117, neg_beta=1.0, neg_capacity=2, entropy_bounds=(0.2, 0.5),
                 mask_bounds=(0.03, 1.0), pos_enabled=True, neg_enabled=True, logit_scale=100.0,
                 selection_p=0.1, entropy_base="log2"):
        self.text_weights = text_weights  # (D, C)
        self.num_classes = text_weights.size(1)
        self.pos_alpha, self.pos_beta = float(pos_alpha), float(pos_beta)
        self.neg_alpha, self.neg_beta = float(neg_alpha), float(neg_beta)
        self.entropy_bounds = (float(entropy_bounds[0]), float(entropy_bounds[1]))
        self.mask_bounds = (float(mask_bounds[0]), float(mask_bounds[1]))
        self.pos_enabled, self.neg_enabled = bool(pos_enabled), bool(neg_enabled)
        self.logit_scale = float(logit_scale)
        self.selection_p = float(selection_p)
        self.entropy_base = entropy_base
        self.pos = ClassCache(pos_capacity)
        self.neg = ClassCache(neg_capacity)
        self.last = {}

    @torch.no_grad()
    def step(self, features):
        feature, clip_logits, loss, prob, pred = tda_clip_outputs(
            features, self.text_weights, self.logit_scale, self.selection_p)
        entropy = normalized_entropy(loss, self.num_classes, self.entropy_base)
        if self.pos_enabled:
            self.pos.update(pred, feature, loss)
        lower, upper = self.entropy_bounds
        to_negative = self.neg_enabled and lower < entropy < upper
        if to_negative:
            self.neg.update(pred, feature, loss, prob)
        final = clip_logits.clone()
        if self.pos_enabled and self.pos:
            final += self.pos.logits(feature, self.pos_alpha, self.pos_beta, self.num_classes)
        if self.neg_enabled and self.neg:
            final -= self.neg.logits(feature, self.neg_alpha, self.neg_beta, self.num_classes, self.mask_bounds)
        self.last = {"pseudo_label": pred, "entropy": entropy, "to_negative": to_negative,
                     "clip_logits": clip_logits}
        return final

    def nbytes(self):
        return self.pos.nbytes() + self.neg.nbytes()


# ------------------------------------------------------------------------------------------------
# The test-time procedure (vlprompt.tta): TTA.METHOD TDA
# ------------------------------------------------------------------------------------------------

TEXT_SOURCES = ("base", "official")


def resolve_positive_params(alpha, beta, dataset_name):
    """The positive cache's (alpha, beta, source): the given values, or where a value is < 0 the official one of
    ``dataset_name``; a dataset TDA was never tuned on (the toy world, a user's folder) takes ImageNet's, and the
    source says so (printed at start and recorded in results.json)."""
    alpha, beta = float(alpha), float(beta)
    if alpha >= 0 and beta >= 0:
        return alpha, beta, "TTA.TDA.POS_ALPHA/POS_BETA"
    official = tda_params_for(dataset_name)
    source = f"official for {dataset_name}"
    if official is None:
        official = TDA_DATASET_PARAMS["ImageNet"]
        source = (f"ImageNet's: TDA has no official values for {dataset_name} (set TTA.TDA.POS_ALPHA and "
                  "TTA.TDA.POS_BETA to choose)")
    return (alpha if alpha >= 0 else official[0]), (beta if beta >= 0 else official[1]), source


@TTA_REGISTRY.register()
class TDA(TestTimeProcedure):
    """TDA as a test-time procedure: online, training-free (module docstring; docs/METHODS.md, "TDA")."""

    EPISODIC = False
    CFG_NODE = "TDA"
    CFG_DEFAULTS = dict(
        POS_ENABLED=True,
        POS_SHOT_CAPACITY=TDA_POSITIVE_CAPACITY,
        POS_ALPHA=-1.0,  # < 0: the official value of DATASET.NAME (TDA_DATASET_PARAMS; ImageNet's elsewhere)
        POS_BETA=-1.0,  # < 0: the official value of DATASET.NAME (ditto)
        NEG_ENABLED=True,
        NEG_SHOT_CAPACITY=TDA_NEGATIVE_DEFAULTS["shot_capacity"],
        NEG_ALPHA=TDA_NEGATIVE_DEFAULTS["alpha"],
        NEG_BETA=TDA_NEGATIVE_DEFAULTS["beta"],
        NEG_ENTROPY_LOWER=TDA_NEGATIVE_DEFAULTS["entropy_lower"],
        NEG_ENTROPY_UPPER=TDA_NEGATIVE_DEFAULTS["entropy_upper"],
        NEG_MASK_LOWER=TDA_NEGATIVE_DEFAULTS["mask_lower"],
        NEG_MASK_UPPER=TDA_NEGATIVE_DEFAULTS["mask_upper"],
        N_VIEWS=-1,  # < 0: official (64 views on ImageNet-A/V2/R/Sketch, 1 view elsewhere)
        SELECTION_P=0.1,  # fraction of confident views kept when N_VIEWS > 1
        USE_MODEL_LOGIT_SCALE=False,  # official: 100 hard-coded; True: the model's exp(logit_scale) (TTA-VLM)
        ENTROPY_NORM="log2",  # official: ln-entropy / log2(C); "ln": ln-entropy / ln(C)
        TEXT="base",  # base: the base model's classifier; official: TDA's template lists (zero-shot CLIP only)
    )

    @classmethod
    def refusal(cls, base):
        if base.kind not in ("zero_shot", "prompt_learner"):
            return ("TDA reads one text classifier and the image features of the base model; this base model "
                    "has neither a zero-shot head nor a prompt learner's classifier")
        return None

    @classmethod
    def augmix_auto(cls, dataset_name):
        """Official TDA: its multi-view datasets (the ImageNet shifts) get AugMix views (``AugMixAugmenter(...,
        augmix=True)`` in ``get_ood_preprocess``); the single-view datasets use view 0 only, where AugMix is moot."""
        return True

    @classmethod
    def n_views(cls, cfg):
        n = int(cfg.TTA.TDA.N_VIEWS)
        if n >= 1:
            return n
        if n == 0:
            raise TTAError("TTA.TDA.N_VIEWS must be >= 1, or -1 for the official choice")
        return TDA_MULTIVIEW_VIEWS if cfg.DATASET.NAME in TDA_MULTIVIEW_DATASETS else 1

    @classmethod
    def _check_views(cls, cfg):
        n = cls.n_views(cfg)
        if n > 1 and int(n * float(cfg.TTA.TDA.SELECTION_P)) < 1:
            raise TTAError(f"TTA.TDA.N_VIEWS {n} with TTA.TDA.SELECTION_P {cfg.TTA.TDA.SELECTION_P} keeps no view "
                           "(int(N_VIEWS * SELECTION_P) = 0): use 1 view, more views or a larger fraction")

    def __init__(self, cfg, base):
        super().__init__(cfg, base)
        node = self.node
        dataset = cfg.DATASET.NAME
        self._check_views(cfg)
        self.pos_alpha, self.pos_beta, self.params_source = resolve_positive_params(
            node.POS_ALPHA, node.POS_BETA, dataset)
        print(f"TDA: positive cache alpha {self.pos_alpha}, beta {self.pos_beta} ({self.params_source})")
        norm = str(node.ENTROPY_NORM).lower()
        if norm not in ("log2", "ln"):
            raise TTAError(f"TTA.TDA.ENTROPY_NORM must be log2 (official) or ln, got '{node.ENTROPY_NORM}'")
        self.entropy_norm = norm
        text = str(node.TEXT).lower()
        if text not in TEXT_SOURCES:
            raise TTAError(f"TTA.TDA.TEXT must be one of {', '.join(TEXT_SOURCES)}, got '{node.TEXT}'")
        if text == "official":
            if base.kind != "zero_shot":
                raise TTAError(f"TTA.TDA.TEXT official builds TDA's own template classifier, which only zero-shot "
                               f"CLIP has ({base.name} is a prompt learner): use TTA.TDA.TEXT base")
            if dataset not in TDA_TEMPLATES:
                raise TTAError(f"TDA has no official template list for {dataset}: use TTA.TDA.TEXT base")
            from vlprompt.clip import encode_class_texts

            with torch.no_grad(), base.autocast():
                weights = encode_class_texts(base.clip_model, base.classnames, TDA_TEMPLATES[dataset]).float()
        else:
            weights = base.text_features()
        weights = weights / weights.norm(dim=-1, keepdim=True)
        self.text_weights = weights.t().contiguous()  # (D, C), as the official clip_weights
        self.text_source = text
        if bool(node.USE_MODEL_LOGIT_SCALE):
            self.logit_scale = float(base.logit_scale.detach().exp())
        else:
            self.logit_scale = 100.0
        self.state = None

    def reset(self):
        n = self.node
        self.state = TDAState(
            self.text_weights, self.pos_alpha, self.pos_beta, pos_capacity=int(n.POS_SHOT_CAPACITY),
            neg_alpha=float(n.NEG_ALPHA), neg_beta=float(n.NEG_BETA), neg_capacity=int(n.NEG_SHOT_CAPACITY),
            entropy_bounds=(float(n.NEG_ENTROPY_LOWER), float(n.NEG_ENTROPY_UPPER)),
            mask_bounds=(float(n.NEG_MASK_LOWER), float(n.NEG_MASK_UPPER)), pos_enabled=bool(n.POS_ENABLED),
            neg_enabled=bool(n.NEG_ENABLED), logit_scale=self.logit_scale, selection_p=float(n.SELECTION_P),
            entropy_base=self.entropy_norm)

    @torch.no_grad()
    def step(self, sample):
        feats = sample.image_features.float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return self.state.step(feats)[0].float()

    def state_summary(self):
        s = self.state
        return {
            "pos_alpha": self.pos_alpha, "pos_beta": self.pos_beta, "params": self.params_source,
            "logit_scale": self.logit_scale,
            "entropy_norm": self.entropy_norm, "text": self.text_source,
            "pos_entries": len(s.pos), "pos_classes": len(s.pos.entries),
            "neg_entries": len(s.neg), "neg_classes": len(s.neg.entries), "cache_bytes": s.nbytes(),
        }
