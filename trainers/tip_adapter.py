"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022, arXiv:2207.09519; gaopengcuhk/Tip-Adapter).

A training-free cache model on top of zero-shot CLIP. With ``f`` the L2-normalised image feature,
``W`` (K, d) the zero-shot classifier (the dataset's template(s); for ImageNet CLIP's 7 selected
templates, each normalised, averaged, renormalised), the cache keys ``F_train`` (NK, d) = the
normalised mean over ``AUGMENT_EPOCH`` augmented views of the raw few-shot features and the values
``L`` (NK, K) = their one-hot labels::

    logits = 100 f W^T + alpha * exp(-beta (1 - f F_train^T)) L

``beta`` and ``alpha`` are searched on the selection split (``TEST.SELECTION_SPLIT``: the validation split by
default, :mod:`vlprompt.features.selection`) over the official grids
(``beta_i = i (SEARCH_SCALE[0] - 0.1) / SEARCH_STEP[0] + 0.1``, likewise alpha; the first grid point with the
strictly best accuracy wins; starting from ``(0, 0)`` at accuracy 0, as the official ``search_hp``).
**Tip-Adapter-F** fine-tunes the keys: ``adapter.weight`` (NK, d), initialised to ``F_train``, with
the official objective CE(logits with the initial alpha/beta), AdamW (lr 0.001, eps 1e-4) and a cosine
schedule stepped every iteration; alpha/beta are then searched on validation with the trained keys.

Features come from the feature store: the keys' augmented views (view ``v`` of image ``i`` seeded by
``(SEED, v, i)``), the training views of Tip-Adapter-F (views ``AUGMENT_EPOCH + e``, independent of the
keys' views as in the official script), and the val/test features shared with every other method.

Official quirks (docs/METHODS.md): the logit scale is 100 hard-coded (``ZS_SCALE``; 0 uses the model's
``exp(logit_scale)``); ``main_imagenet.py`` searches alpha/beta and ``main.py`` picks Tip-Adapter-F's best
epoch on the **test** split (here: never; the last epoch, or ``TEST.FINAL_MODEL best_val``); the official
adapter weight shares memory with the cache keys (irrelevant to the results; here a copy); the official
search uses the full validation split, vlprompt's datasets give ``min(shots, 4)`` per class (CoOp's rule).

Class lists: a Tip-Adapter-F checkpoint holds the fine-tuned keys, their labels and the class names;
loaded onto another class list, the entries of classes in that list are kept (re-indexed) and classes
without entries get no cache logits (zero-shot CLIP). Novel classes of base-to-novel therefore reduce to
zero-shot CLIP: neither method has a base-to-novel recipe.
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import (IMAGENET_TEMPLATES_SELECT, ArgError, Precision, PromptedCLIP, ZeroShotHead,
                           build_clip_from_cfg, clean_classname, get_template)
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY, TrainerX
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.features.selection import record_selection, selection_features, selection_loader
from vlprompt.features.training import FeatureEpochs, FrozenFeatureInference, run_seed
from vlprompt.metrics import compute_accuracy
from vlprompt.errors import UserRuntimeError

# Official configs/*.yaml (Tip-Adapter repository): init_alpha and search_scale per dataset; init_beta 1,
# search_step [200, 20], augment_epoch 10, lr 0.001, train_epoch 20 (EuroSAT 100) everywhere.
OFFICIAL_DATASET_CFG = {
    "Caltech101": dict(INIT_ALPHA=3.0, SEARCH_SCALE=(12.0, 5.0)),
    "DescribableTextures": dict(INIT_ALPHA=2.0, SEARCH_SCALE=(13.0, 13.0)),
    "EuroSAT": dict(INIT_ALPHA=2.0, SEARCH_SCALE=(12.0, 10.0)),
    "FGVCAircraft": dict(INIT_ALPHA=5.0, SEARCH_SCALE=(30.0, 30.0)),
    "Food101": dict(INIT_ALPHA=1.17, SEARCH_SCALE=(10.0, 10.0)),
    "ImageNet": dict(INIT_ALPHA=1.17, SEARCH_SCALE=(7.0, 3.0)),
    "OxfordFlowers": dict(INIT_ALPHA=10.0, SEARCH_SCALE=(50.0, 50.0)),
    "OxfordPets": dict(INIT_ALPHA=1.17, SEARCH_SCALE=(7.0, 3.0)),
    "StanfordCars": dict(INIT_ALPHA=3.0, SEARCH_SCALE=(20.0, 10.0)),
    "SUN397": dict(INIT_ALPHA=1.17, SEARCH_SCALE=(12.0, 10.0)),
    "UCF101": dict(INIT_ALPHA=3.0, SEARCH_SCALE=(7.0, 3.0)),
}

OFFICIAL_CONFIGS = {k: f"rn50_{k}" for k in ("caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet",
                                            "oxford_flowers", "oxford_pets", "stanford_cars", "sun397", "ucf101")}

TIP_DEFAULTS = dict(AUGMENT_EPOCH=10, INIT_BETA=1.0, INIT_ALPHA=1.17, SEARCH_HP=True, SEARCH_SCALE=(7.0, 3.0),
                    SEARCH_STEP=(200, 20), ZS_SCALE=100.0, PREC="fp16")


def tip_templates(dataset_name):
    """The zero-shot classifier's templates: CLIP's 7 for ImageNet, else the dataset's one template."""
    return list(IMAGENET_TEMPLATES_SELECT) if dataset_name == "ImageNet" else [get_template(dataset_name)]


def search_grid(scale, steps):
    """The official grid: ``[i * (scale - 0.1) / steps + 0.1 for i in range(steps)]``."""
    return [i * (float(scale) - 0.1) / int(steps) + 0.1 for i in range(int(steps))]


def _encode_names(names):
    return torch.tensor(list(json.dumps([clean_classname(n) for n in names]).encode("utf-8")), dtype=torch.uint8)


def _decode_names(t):
    return json.loads(bytes(t.tolist()).decode("utf-8"))


class CacheKeys(nn.Module):
    """The cache: ``weight`` (NK, d) keys (``adapter.weight`` of the official Tip-Adapter-F), ``labels``
    (NK,) and the class names they refer to (``class_names``, UTF-8 JSON bytes): all in the state_dict."""

    def __init__(self, keys, labels, classnames, learnable=False):
        super().__init__()
        self.weight = nn.Parameter(keys.detach().clone().float(), requires_grad=learnable)
        self.register_buffer("labels", labels.detach().clone().long())
        self.register_buffer("class_names", _encode_names(classnames))

    def classnames(self):
        return _decode_names(self.class_names)

    def affinity(self, f):
        return f @ self.weight.t()

    def onto(self, classnames):
        """(keys, labels) of the entries whose class is in ``classnames``, re-indexed to that list."""
        index = {clean_classname(c): i for i, c in enumerate(classnames)}
        mine = self.classnames()
        keep = [j for j, lab in enumerate(self.labels.tolist()) if mine[lab] in index]
        new_labels = torch.tensor([index[mine[self.labels[j].item()]] for j in keep], dtype=torch.long)
        keep = torch.tensor(keep, dtype=torch.long)
        return self.weight.detach()[keep], new_labels


class TipModel(PromptedCLIP):
    """Zero-shot CLIP + cache model; ``forward(image)`` -> (B, K) logits (see the module docstring)."""

    def __init__(self, clip_model, classnames, templates, d_keys=None, alpha=1.17, beta=1.0, zs_scale=100.0):
        super().__init__(clip_model)
        self.zero_shot = ZeroShotHead(clip_model, classnames, templates)
        self.classnames = list(classnames)
        d = self.dims["d_embed"]
        self.cache = CacheKeys(torch.zeros(0, d), torch.zeros(0, dtype=torch.long), classnames)
        self.alpha, self.beta = float(alpha), float(beta)
        self.zs_scale = float(zs_scale)
        if self.zs_scale < 0:
            raise ArgError("zs_scale", f"must be >= 0 (0: the model's exp(logit_scale)), got {zs_scale}")

    def learnable_modules(self):
        return [self.cache]

    def set_cache(self, keys, labels, learnable):
        self.cache = CacheKeys(keys, labels, self.classnames, learnable=learnable).to(self.logit_scale.device)

    def set_classnames(self, classnames):
        keys, labels = self.cache.onto(classnames)
        self.classnames = list(classnames)
        self.zero_shot.set_classnames(classnames)
        self.set_cache(keys, labels, self.cache.weight.requires_grad)

    def scale(self):
        return self.zs_scale if self.zs_scale > 0 else float(self.logit_scale.exp())

    def parts(self, features):
        """``(zero-shot logits, cache affinity)`` of raw image features (B, d)."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = F.normalize(features.float(), dim=-1)
            zs = self.scale() * f @ self.zero_shot.text_features().float().t()
            return zs, self.cache.affinity(f)

    def combine(self, zs, affinity, alpha, beta):
        values = F.one_hot(self.cache.labels, zs.shape[1]).float() if self.cache.labels.numel() else None
        if values is None:
            return zs
        cache_logits = torch.exp(-(beta - beta * affinity)) @ values
        return zs + cache_logits * alpha

    def logits_from_image_features(self, features, alpha=None, beta=None):
        zs, aff = self.parts(features)
        return self.combine(zs, aff, self.alpha if alpha is None else alpha, self.beta if beta is None else beta)

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))


def _cfg_values(cfg, node):
    m = cfg.TRAINER[node]
    return dict(alpha=float(m.INIT_ALPHA), beta=float(m.INIT_BETA), zs_scale=float(m.ZS_SCALE))


def build_cache(trainer, model):
    """Cache keys (NK, d) and labels (NK,) of ``train_x``: normalised mean of the raw features of views
    ``0..AUGMENT_EPOCH-1`` (from the feature store)."""
    m = trainer.method_cfg
    n_aug = int(m.AUGMENT_EPOCH)
    if n_aug < 1:
        raise ArgError("augment_epoch", f"TRAINER.{trainer.CFG_NODE}.AUGMENT_EPOCH must be >= 1, got {n_aug}")
    from vlprompt.features.extract import view_features

    items = trainer.dm.dataset.train_x
    tfm = trainer.train_loader_x.dataset.transform
    total = None
    for v in range(n_aug):
        feats, _ = view_features(trainer, items, tfm, "train", view=v, seed=run_seed(trainer.cfg))
        total = feats.float() if total is None else total + feats.float()
    keys = F.normalize(total / n_aug, dim=-1)
    labels = torch.tensor([int(it.label) for it in items], dtype=torch.long)
    return keys, labels


def search_alpha_beta(trainer, model):
    """The official ``search_hp`` on the selection split (``TEST.SELECTION_SPLIT``: the validation split by
    default, :mod:`vlprompt.features.selection`); sets and returns ``(beta, alpha, accuracy)``."""
    m = trainer.method_cfg
    if not m.SEARCH_HP:
        return model.beta, model.alpha, None
    split, feats, labels = selection_features(trainer, "Tip-Adapter")
    if split is None:
        print("Tip-Adapter: no validation split; alpha/beta stay at their initial values")
        record_selection(trainer, None, beta=model.beta, alpha=model.alpha, accuracy=None)
        return model.beta, model.alpha, None
    with torch.no_grad():
        zs, aff = model.parts(feats.to(trainer.device))
        labels = labels.to(zs.device)
        best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
        values = F.one_hot(model.cache.labels, zs.shape[1]).float() if model.cache.labels.numel() else None
        for beta in search_grid(m.SEARCH_SCALE[0], m.SEARCH_STEP[0]):
            # the cache logits do not depend on alpha: one exp per beta (the same arithmetic as combine())
            cache_logits = torch.exp(-(beta - beta * aff)) @ values if values is not None else torch.zeros_like(zs)
            for alpha in search_grid(m.SEARCH_SCALE[1], m.SEARCH_STEP[1]):
                acc = compute_accuracy(zs + cache_logits * alpha, labels)[0].item()
                if acc > best_acc:
                    best_acc, best_beta, best_alpha = acc, beta, alpha
    model.beta, model.alpha = best_beta, best_alpha
    print(f"Tip-Adapter: searched on {split}: beta {best_beta:.2f}, alpha {best_alpha:.2f}, {split} accuracy "
          f"{best_acc:.2f}")
    record_selection(trainer, split, beta=best_beta, alpha=best_alpha, accuracy=best_acc)
    return best_beta, best_alpha, best_acc


@TRAINER_REGISTRY.register()
class TipAdapter(FrozenFeatureInference, TrainerX):
    """Tip-Adapter (training-free): the cache is built and alpha/beta searched when the trainer is built;
    run with ``--eval-only``."""

    # few-shot only: the cache is built from the evaluated dataset's own training shots when the trainer
    # is built, so an eval-only run on another dataset (cross-dataset, domain generalisation) or on novel
    # classes would not evaluate a transferred model
    CARD = MethodCard(config="rn50_imagenet", recipes={"few_shot": {"per_dataset": OFFICIAL_CONFIGS}},
                      protocols=("few_shot",), order=220, backbones=ANY_TOWERS, eval_only=True, uses_shots=True,
                      cfg_node="TIP_ADAPTER", model_name="")
    FROZEN_IMAGE_FEATURES = True

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CFG_NODE]

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = Precision(self.method_cfg.PREC, self.device)
        clip_model = self.precision.prepare_clip(build_clip_from_cfg(cfg))
        for p in clip_model.parameters():
            p.requires_grad_(False)
        self.model = TipModel(clip_model, classnames, tip_templates(cfg.DATASET.NAME), **_cfg_values(cfg, self.CFG_NODE))
        self.model.to(self.device).eval()
        clip_model.to(self.device)
        keys, labels = build_cache(self, self.model)
        self.model.set_cache(keys.to(self.device), labels.to(self.device), learnable=False)
        print(f"Tip-Adapter: cache of {keys.shape[0]} keys x {keys.shape[1]} dims, {self.method_cfg.AUGMENT_EPOCH} views")
        self.search = search_alpha_beta(self, self.model)

    def extra_results(self):
        beta, alpha, acc = self.search
        return {"beta": beta, "alpha": alpha, "val_acc": acc, "cache_size": int(self.model.cache.weight.shape[0])}

    def train(self):
        """Nothing to train (the model was built and its alpha/beta searched when the trainer was built): run the final test, as a
        training run ends (so ``train.py`` without ``--eval-only`` works too)."""
        print("TipAdapter: nothing to train by gradient steps; testing the model built from the training split")
        if not self.cfg.TEST.NO_TEST:
            self.test()

    def forward_backward(self, batch):
        raise UserRuntimeError("TipAdapter is training-free: run it with --eval-only (TipAdapterF fine-tunes the keys)")


@TRAINER_REGISTRY.register()
class TipAdapterF(FeatureEpochs, ClipPromptTrainer):
    """Tip-Adapter-F: the cache keys fine-tuned (``adapter.weight``), then alpha/beta searched on val."""

    # domain generalisation: the ImageNet cache is loaded onto the target's classes by name (all of
    # ImageNet-V2/Sketch, the 200 of -A/-R); no cross-dataset / base-to-novel recipe: other classes have
    # no cache entries, so the method reduces to zero-shot CLIP there
    CARD = MethodCard(config="rn50_imagenet", recipes={"few_shot": {"per_dataset": OFFICIAL_CONFIGS}},
                      protocols=("few_shot", "domain_generalization"), order=230, backbones=ANY_TOWERS,
                      cfg_node="TIP_ADAPTER_F", cfg_defaults=dict(TIP_DEFAULTS, ADAM_EPS=1e-4),
                      cfg_args={"zs_scale": "ZS_SCALE", "augment_epoch": "AUGMENT_EPOCH"}, model_name="adapter",
                      lr_unit="iteration")  # the official cosine schedule steps after every iteration
    LOG_ACC = True
    FROZEN_IMAGE_FEATURES = True

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        return TipModel(clip_model, classnames, tip_templates(cfg.DATASET.NAME), **_cfg_values(cfg, cls.CFG_NODE))

    def custom_clip(self, cfg, classnames, clip_model):
        model = super().custom_clip(cfg, classnames, clip_model)
        self.model = model.to(self.device)  # the tower is needed to build the cache before the optimiser
        clip_model.to(self.device)
        if self.method_cfg.SEARCH_HP:
            selection_loader(self, "Tip-Adapter-F")  # a refused selection split fails before training, not after
        keys, labels = build_cache(self, model)
        model.set_cache(keys.to(self.device), labels.to(self.device), learnable=True)
        print(f"Tip-Adapter-F: cache of {keys.shape[0]} keys x {keys.shape[1]} dims initialised")
        return model

    def learnable_module(self):
        return self.model.cache

    def train_view_offset(self):
        return int(self.method_cfg.AUGMENT_EPOCH)

    def drop_last(self):
        return False  # the official train_loader_F keeps the last partial batch

    def build_optimizers(self, learnable):
        o = self.cfg.OPTIM
        optim = torch.optim.AdamW([p for p in learnable.parameters() if p.requires_grad], lr=o.LR,
                                  eps=float(self.method_cfg.ADAM_EPS), weight_decay=o.WEIGHT_DECAY)
        n_iter = max(int(o.MAX_EPOCH) * self._iters_per_epoch(), 1)
        return {self.MODEL_NAME: (optim, torch.optim.lr_scheduler.CosineAnnealingLR(optim, n_iter))}

    def _iters_per_epoch(self):
        n, bs = len(self.dm.dataset.train_x), int(self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
        return -(-n // bs)

    def parse_batch_train(self, batch):
        return self.image_features_of(batch), batch["label"].to(self.device)

    def loss_terms(self, features, label):
        logits = self.model.logits_from_image_features(features)
        return {"ce": F.cross_entropy(logits, label)}, logits

    def test(self, split=None):
        """Validation during training uses the current alpha/beta (the initial ones: the official
        training objective); the final test first searches them on val with the trained keys."""
        if split != "val":
            self.search = search_alpha_beta(self, self.model)
        return super().test(split)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self._models[self.MODEL_NAME] = self.model.cache

    def extra_results(self):
        extra = dict(super().extra_results() or {})
        beta, alpha, acc = getattr(self, "search", (None, None, None))
        extra.update(beta=beta, alpha=alpha, val_acc=acc)
        return extra

    def _load_learned_state(self, name, module, state_dict, path):
        """A checkpoint holds a whole cache: load it and keep the entries of the current classes."""
        need = {"weight", "labels", "class_names"}
        if not need <= set(state_dict):
            return super()._load_learned_state(name, module, state_dict, path)
        saved = CacheKeys(state_dict["weight"], state_dict["labels"], _decode_names(state_dict["class_names"]))
        keys, labels = saved.onto(self.model.classnames)
        if keys.shape[0] == module.weight.shape[0] and torch.equal(labels.to(module.labels.device), module.labels):
            with torch.no_grad():
                module.weight.copy_(keys)
            return
        print(f"Tip-Adapter-F: {keys.shape[0]} of {saved.weight.shape[0]} cached keys belong to the current classes")
        self.model.set_cache(keys.to(self.device), labels.to(self.device), learnable=True)
        self._models[name] = self.model.cache


# Tip-Adapter's node (training-free: no CFG_DEFAULTS machinery of ClipPromptTrainer, registered here)
def _extend_tip(cfg):
    from vlprompt.config import add_trainer_cfg

    add_trainer_cfg(cfg, TipAdapter.CFG_NODE, dict(TIP_DEFAULTS))


def _register():
    from vlprompt.config import register_cfg_extension

    register_cfg_extension(_extend_tip)


_register()
