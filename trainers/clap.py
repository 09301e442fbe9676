"""CLAP: class-adaptive linear probing (Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of
Large Vision-Language Models", CVPR 2024, arXiv:2312.12730; official code jusiro/CLAP, ``trainers/adapters.py``).

A linear probe on frozen CLIP image features whose class prototypes ``P`` (K, d) start at the zero-shot
text prototypes ``t`` (ZS-LP) and are kept close to them by a class-wise penalty (CLAP)::

    logits = exp(logit_scale) * f/|f| @ (P/|P|)^T
    loss   = CE(logits, y) + mean_c( lambda_c * ||P_c - t_c||^2 )

* ``t_c``: the **raw** (not normalised) text features of the class averaged over the templates: for
  ImageNet CLIP's 7 selected templates plus ``'a photo of a {}.'`` (8), else the dataset's one CoOp
  template; the class names are formatted as given (``_`` is not replaced: the official quirk, switch
  ``TRAINER.CLAP.CLEAN_CLASSNAMES``).
* ``lambda_c`` (the class-wise multipliers, fixed during training for ``CONSTRAINT l2``): the mean over the
  training rows of class ``c`` of the zero-shot softmax probability of the true class,
  ``diag(softmax(zs_logits)^T onehot) / count_c``; official variants selected by words in ``CONSTRAINT``
  (``balanced``: 1, ``corrected``: ``lambda * K / sum(lambda)``, ``constant``: ``mean(lambda)``,
  ``adaptative``: an augmented-Lagrangian (PHR) outer step after every epoch). ``none`` = ZS-LP.
* training rows: ``AUGMENT_VIEWS`` (20, hard-coded officially) augmented views of every training image,
  concatenated view by view, raw features; every epoch shuffles this pool and runs as many batches as the
  image loader has (``len(train_loader_x)``: one batch of the first ``BATCH_SIZE`` shuffled rows when
  there are fewer training images than a batch; the official quirk kept); SGD lr 0.1, 300 epochs, cosine
  with one constant warm-up epoch (``configs/trainers/CLAP/*.yaml``); the epoch-300 model is evaluated.

Features come from the feature store (views of the training images seeded by ``(SEED, view, image)``).
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import IMAGENET_TEMPLATES_SELECT, PromptedCLIP, get_template
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.clip.templates import clean_classname
from vlprompt.clip.tokenizer import tokenize
from vlprompt.config import ConfigError
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.hooks import HookBase
from vlprompt.engine.methods import MethodCard
from vlprompt.features.training import FeatureEpochs, FeatureViewSource

INITS = ("ZS", "RANDOM")
VARIANTS = ("balanced", "corrected", "constant", "adaptative")


def clap_templates(dataset_name):
    """The official ``_get_base_text_features`` templates: ImageNet's 7 + its custom one, else the custom one."""
    base = list(IMAGENET_TEMPLATES_SELECT) if dataset_name == "ImageNet" else []
    return base + [get_template(dataset_name)]


@torch.no_grad()
def raw_text_prototypes(clip_model, classnames, templates, clean=False):
    """(K, d) fp32: per class, the mean over ``templates`` of the raw (unnormalised) text features."""
    device = next(clip_model.parameters()).device
    out = []
    for name in classnames:
        name = clean_classname(name) if clean else name
        tokens = tokenize([t.format(name) for t in templates], model=clip_model).to(device)
        out.append(clip_model.encode_text(tokens).float().mean(0))
    return torch.stack(out)


def class_multipliers(labels, zs_logits, num_classes, constraint):
    """The official ``init_lagrangian_multipliers``: (K,) ``lambda`` from zero-shot logits of the training rows."""
    if "balanced" in constraint:
        return torch.ones(num_classes, dtype=torch.float)
    onehot = F.one_hot(labels, num_classes).float()
    perf = torch.diag(torch.softmax(zs_logits.float(), -1).t() @ onehot) / onehot.sum(0)
    if "corrected" in constraint:
        perf = perf * (num_classes / torch.sum(perf).item())
    if "constant" in constraint:
        perf = torch.ones(num_classes, dtype=torch.float) * torch.mean(perf).item()
    return perf


def encode_names(names):
    return torch.tensor(list(json.dumps([str(n) for n in names]).encode("utf-8")), dtype=torch.uint8)


def decode_names(t):
    return json.loads(bytes(t.tolist()).decode("utf-8"))


class ClassPrototypes(nn.Module):
    """The learnable module (official ``AdapterMethod``): ``prototypes`` (K, d), the zero-shot
    ``base_text_features`` (K, d) and the multipliers ``alpha_constraint`` / ``penalty_parameter`` (K,)."""

    def __init__(self, base, init="ZS", constraint="l2", classnames=()):
        super().__init__()
        if init not in INITS:
            from vlprompt.clip import ArgError

            raise ArgError("init", f"must be one of {INITS}, got '{init}'")
        self.constraint = constraint
        self.register_buffer("base_text_features", base.detach().clone().float())
        if init == "ZS":
            self.prototypes = nn.Parameter(base.detach().clone().float())
        else:  # official RANDOM: kaiming_normal_ of an empty (K, d) tensor
            self.prototypes = nn.Parameter(nn.init.kaiming_normal_(torch.empty(base.shape)))
        self.register_buffer("alpha_constraint", torch.zeros(base.shape[0]))
        self.register_buffer("penalty_parameter", torch.zeros(base.shape[0]))
        self.register_buffer("class_names", encode_names(classnames))

    def dissimilarity(self):
        if "cosine" in self.constraint:
            return 1 - F.cosine_similarity(self.prototypes, self.base_text_features)
        return (self.prototypes - self.base_text_features).pow(2).sum(-1)

    def constraint_term(self):
        """``mean_c(lambda_c * d(P_c, t_c))`` (official ``zero_shot_constraint``)."""
        return torch.mean(self.alpha_constraint * self.dissimilarity())

    @torch.no_grad()
    def outer_step(self):
        """The official PHR outer step: ``lambda <- lambda + rho * h`` where that is >= 0, else 0; ``rho <- h``
        (``h`` = squared L2 distance to the zero-shot prototypes, whatever the distance of the penalty)."""
        h = (self.prototypes - self.base_text_features).pow(2).sum(-1)
        x = self.alpha_constraint + self.penalty_parameter * h
        self.alpha_constraint.copy_(torch.where(x >= 0, x, torch.zeros_like(h)))
        self.penalty_parameter.copy_(h)


class CLAPModel(PromptedCLIP):
    """Frozen CLIP + class prototypes; ``logits_from_image_features(raw f)`` -> (B, K) fp32."""

    def __init__(self, clip_model, classnames, templates, init="ZS", constraint="l2", clean=False):
        super().__init__(clip_model)
        base = raw_text_prototypes(clip_model, classnames, templates, clean=clean)
        self.adapter = ClassPrototypes(base, init=init, constraint=constraint, classnames=classnames)

    def learnable_modules(self):
        return [self.adapter]

    def logits_from_image_features(self, features, prototypes=None):
        with torch.autocast(device_type=features.device.type, enabled=False):
            p = self.adapter.prototypes if prototypes is None else prototypes
            f = features.float()
            f = f / f.norm(dim=-1, keepdim=True)
            p = p.float() / p.float().norm(dim=-1, keepdim=True)
            return f @ p.t() * self.logit_scale.exp().float()

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))


class PoolSource(FeatureViewSource):
    """One epoch of CLAP: a fresh permutation of the whole feature pool, ``n_batches`` batches of it."""

    def __init__(self, feats, labels, batch_size, n_batches, device):
        super().__init__(feats, labels, batch_size, True, device)
        self.n = int(n_batches)


class OuterStepHook(HookBase):
    """``adaptative`` constraint: the PHR outer step after every epoch (before checkpoints and evaluation,
    as the official loop calls it right after ``run_epoch``)."""

    PRIORITY = 5

    def after_epoch(self):
        self.trainer.model.adapter.outer_step()


@TRAINER_REGISTRY.register()
class CLAP(FeatureEpochs, ClipPromptTrainer):
    """CLAP (``CONSTRAINT l2``) and ZS-LP (``CONSTRAINT none``) on stored features."""

    CARD = MethodCard(
        # domain generalisation: the ImageNet prototypes evaluated on the variants by class name (the paper's
        # robustness table); no base-to-novel / cross-dataset: the prototypes are per training class
        config="vit_b16", protocols=("few_shot", "domain_generalization"), order=236, backbones=ANY_TOWERS, cfg_node="CLAP",
        # official train.py defaults (INIT ZS, CONSTRAINT l2) and trainers/adapters.py (20 augmented views);
        # PREC fp32: the official image features are fp32 (clip_model.float()), see docs/METHODS.md
        cfg_defaults=dict(INIT="ZS", CONSTRAINT="l2", AUGMENT_VIEWS=20, CLEAN_CLASSNAMES=False, PREC="fp32"),
        cfg_args={"init": "INIT"}, model_name="adapter",
    )
    LOG_ACC = True
    FROZEN_IMAGE_FEATURES = True

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        m = cfg.TRAINER.CLAP
        c = str(m.CONSTRAINT)
        if c != "none" and "l2" not in c and "cosine" not in c:
            raise ConfigError(f"TRAINER.CLAP.CONSTRAINT must be 'none' or name a distance ('l2' or 'cosine', "
                              f"optionally with one of {VARIANTS}, e.g. 'l2_adaptative'), got '{c}'")
        if int(m.AUGMENT_VIEWS) < 1:
            raise ConfigError(f"TRAINER.CLAP.AUGMENT_VIEWS must be >= 1, got {m.AUGMENT_VIEWS}")

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.CLAP
        return CLAPModel(clip_model, classnames, clap_templates(cfg.DATASET.NAME), init=m.INIT,
                         constraint=str(m.CONSTRAINT), clean=bool(m.CLEAN_CLASSNAMES))

    def learnable_module(self):
        return self.model.adapter

    def build_model(self):
        super().build_model()
        if "adaptative" in self.method_cfg.CONSTRAINT:
            self.register_hook("clap_outer_step", OuterStepHook())

    def before_train(self):
        """The training pool and the class-wise multipliers, when training starts (an evaluation-only run loads
        the multipliers with the checkpoint and needs no pool)."""
        super().before_train()
        self.pool_feats, self.pool_labels = self.training_pool()
        if self.method_cfg.CONSTRAINT != "none":
            with torch.no_grad():
                # official: the logits of the model as built (ZS: the zero-shot prototypes; RANDOM: the random ones)
                zs = self.model.logits_from_image_features(self.pool_feats.to(self.device))
            lam = class_multipliers(self.pool_labels.to(self.device), zs.cpu(), self.num_classes,
                                    str(self.method_cfg.CONSTRAINT))
            self.model.adapter.alpha_constraint.copy_(lam.to(self.model.adapter.alpha_constraint.device))
            shown = [round(v, 3) for v in lam.tolist()[:10]]
            print(f"CLAP: class-wise multipliers (first {len(shown)} of {lam.numel()}): {shown}")

    def training_pool(self):
        """(V*N, d) raw features of ``AUGMENT_VIEWS`` augmented views, view by view, and their labels."""
        n_views = int(self.method_cfg.AUGMENT_VIEWS)
        feats = torch.cat([self.train_view_features(v).float() for v in range(n_views)])
        labels = torch.tensor([int(it.label) for it in self.dm.dataset.train_x], dtype=torch.long).repeat(n_views)
        print(f"CLAP: {feats.shape[0]} training rows ({n_views} views x {feats.shape[0] // n_views} images)")
        return feats, labels

    def batch_source(self):
        if not self.train_from_store():
            return super().batch_source()
        return PoolSource(self.pool_feats, self.pool_labels, self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
                          len(self.train_loader_x), self.device)

    def parse_batch_train(self, batch):
        return self.image_features_of(batch), batch["label"].to(self.device)

    def loss_terms(self, features, label):
        logits = self.model.logits_from_image_features(features)
        terms = {"ce": F.cross_entropy(logits, label)}
        if self.method_cfg.CONSTRAINT != "none":
            terms["constraint"] = self.model.adapter.constraint_term()
        return terms, logits

    def _load_learned_state(self, name, module, state_dict, path):
        """A checkpoint of another class list: the rows of the classes both lists name are loaded (by class
        name); the other classes keep their zero-shot prototypes (CLAP's prototypes are per class)."""
        if "class_names" not in state_dict or tuple(state_dict["prototypes"].shape) == tuple(module.prototypes.shape):
            return super()._load_learned_state(name, module, state_dict, path)
        saved = {n: i for i, n in enumerate(decode_names(state_dict["class_names"]))}
        mine = decode_names(module.class_names)
        rows = [(j, saved[n]) for j, n in enumerate(mine) if n in saved]
        print(f"CLAP: {len(rows)} of the {len(mine)} classes have prototypes in {path}; the others keep their "
              "zero-shot prototypes")
        with torch.no_grad():
            for key in ("prototypes", "base_text_features", "alpha_constraint", "penalty_parameter"):
                mine_t = getattr(module, key)
                for j, i in rows:
                    mine_t[j] = state_dict[key][i].to(mine_t)


__all__ = ["CLAP", "CLAPModel", "ClassPrototypes", "class_multipliers", "raw_text_prototypes", "clap_templates"]
