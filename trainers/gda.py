"""GDA: Gaussian discriminant analysis on frozen CLIP features (Wang et al., "A Hard-to-Beat Baseline for
Training-free CLIP-based Adaptation", ICLR 2024, arXiv:2402.04087; official code mrflogs/ICLR24,
``main_few_shots.py``). Training-free.

With ``f`` the L2-normalised image features of ``AUGMENT_EPOCH`` (10) augmented passes over the few-shot
training set (N = 10 K S rows, concatenated pass by pass), the class means ``mu_k`` and the rows centred by
their class mean (concatenated class by class)::

    Cov      = torch.cov(centred^T)                                   (unbiased: divides by N - 1)
    P        = D * pinv((N - 1) Cov + tr(Cov) I)                      (shared precision, a shrinkage estimator)
    W        = P mu^T            (D, K)
    b_k      = log(1/K) - 1/2 mu_k^T P mu_k                           (uniform prior)
    logits   = 100 f T + alpha (f W + b)                              (T: normalised zero-shot weights, 100 hard-coded)

``alpha`` is searched over ``ALPHA_GRID`` = [1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100] on the selection split
(:mod:`vlprompt.features.selection`: the run's validation split by default; ``TEST.SELECTION_SPLIT test`` for
the official ImageNet behaviour), strict ``>`` from ``(0, ALPHA_DEFAULT = 0.1)`` as officially: if no alpha
scores above 0 the default stays; ties keep the smaller alpha.

Official quirks (docs/METHODS.md, ## GDA): the official non-ImageNet search uses the dataset's full val split
(here: the run's few-shot val split); on ImageNet it uses the test features (here only with
``TEST.SELECTION_SPLIT test``); ``clip_model.float()`` inside ``clip_classifier`` makes the first (seed, shot)
iteration's test features fp16 and later ones fp32 (here one precision, ``PREC``, default fp32). The
base-to-new variant (``main_base2new.py``: per-class covariances without shrinkage, novel-class means
synthesised from the k=64 nearest training features) is not implemented: GDA runs the few-shot protocol.
"""
import torch
import torch.nn.functional as F

from vlprompt.clip import (IMAGENET_TEMPLATES_SELECT, Precision, PromptedCLIP, ZeroShotHead, build_clip_from_cfg,
                           get_template)
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.config import ConfigError, add_trainer_cfg, register_cfg_extension
from vlprompt.engine import TRAINER_REGISTRY, TrainerX
from vlprompt.engine.methods import MethodCard
from vlprompt.errors import UserRuntimeError
from vlprompt.features.extract import view_features
from vlprompt.features.selection import first_best, record_selection, selection_features
from vlprompt.features.training import FrozenFeatureInference, run_seed

ALPHA_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
GDA_DEFAULTS = dict(AUGMENT_EPOCH=10, ALPHA_GRID=ALPHA_GRID, ALPHA_DEFAULT=0.1, ZS_SCALE=100.0, PREC="fp32")

# mrflogs/ICLR24 configs/architecture/vitb16/<dataset>.yaml (backbone ViT-B/16, augment_epoch 10); the
# few_shots/*.yaml files are the same with RN50
OFFICIAL_CONFIGS = {k: f"vit_b16_{k}" for k in ("caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "imagenet",
                                               "oxford_flowers", "oxford_pets", "stanford_cars", "sun397", "ucf101")}


def gda_templates(dataset_name):
    """The official ``dataset.template``: CLIP's 7 selected templates for ImageNet, else the dataset's one."""
    return list(IMAGENET_TEMPLATES_SELECT) if dataset_name == "ImageNet" else [get_template(dataset_name)]


def gda_classifier(feats, labels, num_classes):
    """The official closed form: ``(W (D, K), b (K,))`` from L2-normalised features ``feats`` (N, D) and
    ``labels`` (N,), in the features' dtype (module docstring)."""
    d = feats.shape[1]
    mus = torch.cat([feats[labels == i].mean(dim=0, keepdim=True) for i in range(num_classes)])
    centred = torch.cat([feats[labels == i] - mus[i].unsqueeze(0) for i in range(num_classes)])
    cov = centred.T.cov()
    eye = torch.eye(d, dtype=feats.dtype, device=feats.device)
    precision = d * torch.linalg.pinv((centred.shape[0] - 1) * cov + cov.trace() * eye)
    ps = torch.ones(num_classes, dtype=feats.dtype, device=feats.device) * 1.0 / num_classes
    W = torch.einsum("nd,dc->cn", mus, precision)
    b = ps.log() - torch.einsum("nd,dc,nc->n", mus, precision, mus) / 2
    return W, b


class GDAModel(PromptedCLIP):
    """Zero-shot CLIP + the GDA linear head (``W``, ``b`` buffers, not persistent: recomputed per run)."""

    def __init__(self, clip_model, classnames, templates, zs_scale=100.0, alpha=0.1):
        super().__init__(clip_model)
        self.zero_shot = ZeroShotHead(clip_model, classnames, templates)
        self.zs_scale, self.alpha = float(zs_scale), float(alpha)
        self.register_buffer("W", None, persistent=False)
        self.register_buffer("b", None, persistent=False)

    def learnable_modules(self):
        return []

    def parts(self, features):
        """``(zero-shot logits 100 f T, GDA logits f W + b)`` of raw image features (B, D), fp32."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = F.normalize(features.float(), dim=-1)
            zs = self.zs_scale * f @ self.zero_shot.text_features().float().t()
            return zs, f @ self.W.float() + self.b.float()

    def logits_from_image_features(self, features, alpha=None):
        zs, gda = self.parts(features)
        return zs + (self.alpha if alpha is None else alpha) * gda

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))


@TRAINER_REGISTRY.register()
class GDA(FrozenFeatureInference, TrainerX):
    """GDA (training-free): the head is estimated and alpha searched when the trainer is built; run with
    ``--eval-only``."""

    # few-shot only: the head is estimated from the evaluated dataset's own training shots (the official
    # base-to-new variant is not implemented; docs/METHODS.md)
    CARD = MethodCard(config="vit_b16_imagenet", recipes={"few_shot": {"per_dataset": OFFICIAL_CONFIGS}},
                      protocols=("few_shot",), order=226, backbones=ANY_TOWERS, eval_only=True, uses_shots=True, cfg_node="GDA",
                      model_name="")
    FROZEN_IMAGE_FEATURES = True

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CFG_NODE]

    def build_model(self):
        cfg, m = self.cfg, self.method_cfg
        n_aug = int(m.AUGMENT_EPOCH)
        if n_aug < 1:
            raise ConfigError(f"TRAINER.GDA.AUGMENT_EPOCH must be >= 1, got {n_aug}")
        self.precision = Precision(m.PREC, self.device)
        clip_model = self.precision.prepare_clip(build_clip_from_cfg(cfg))
        for p in clip_model.parameters():
            p.requires_grad_(False)
        self.model = GDAModel(clip_model, self.dm.dataset.classnames, gda_templates(cfg.DATASET.NAME),
                              zs_scale=m.ZS_SCALE, alpha=m.ALPHA_DEFAULT)
        self.model.to(self.device).eval()
        clip_model.to(self.device)
        feats, labels = self.training_features()
        W, b = gda_classifier(F.normalize(feats.float(), dim=-1).to(self.device), labels.to(self.device),
                              self.num_classes)
        self.model.W, self.model.b = W, b
        print(f"GDA: head estimated from {feats.shape[0]} features ({n_aug} augmented views) of "
              f"{len(self.dm.dataset.train_x)} training images")
        self.search = self.search_alpha()

    def training_features(self):
        """``(raw features (AUGMENT_EPOCH * N, D), labels)`` of the augmented views 0..AUGMENT_EPOCH-1 of
        ``train_x``, concatenated view by view (the official pass order)."""
        items = self.dm.dataset.train_x
        tfm = self.train_loader_x.dataset.transform
        labels = torch.tensor([int(it.label) for it in items], dtype=torch.long)
        feats = [view_features(self, items, tfm, "train", view=v, seed=run_seed(self.cfg))[0]
                 for v in range(int(self.method_cfg.AUGMENT_EPOCH))]
        missing = sorted(set(range(self.num_classes)) - set(labels.tolist()))
        if missing:
            raise UserRuntimeError(f"GDA: classes {missing[:5]} have no training image; every class needs one")
        return torch.cat(feats), labels.repeat(len(feats))

    def search_alpha(self):
        """The official alpha grid search on the selection split (module docstring)."""
        m = self.method_cfg
        default = float(m.ALPHA_DEFAULT)
        split, feats, labels = selection_features(self, "GDA")
        if split is None:
            print(f"GDA: no validation split; alpha stays at {default}")
            record_selection(self, None, alpha=default, accuracy=None)
            return {"alpha": default, "selection_acc": None}
        with torch.no_grad():
            zs, gda = self.model.parts(feats.to(self.device))
            labels = labels.to(zs.device)
            alpha, acc, trace = first_best([float(a) for a in m.ALPHA_GRID],
                                           lambda a: 100.0 * float(((zs + a * gda).argmax(1) == labels).float().mean()),
                                           start=(0.0, default))
        self.model.alpha = float(alpha)
        print(f"GDA: alpha {alpha:g} selected on the {split} split (accuracy {acc:.2f})")
        record_selection(self, split, alpha=float(alpha), accuracy=acc, grid=[[a, s] for a, s in trace])
        return {"alpha": float(alpha), "selection_acc": acc}

    def extra_results(self):
        return dict(self.search)

    def train(self):
        """Nothing to train (the head was estimated when the trainer was built): run the final test, as a
        training run ends (so ``train.py`` without ``--eval-only`` works too)."""
        print("GDA: nothing to train by gradient steps; testing the head estimated from the training split")
        if not self.cfg.TEST.NO_TEST:
            self.test()

    def forward_backward(self, batch):
        raise UserRuntimeError("GDA is training-free: run it with --eval-only")


def _extend(cfg):
    add_trainer_cfg(cfg, GDA.CFG_NODE, dict(GDA_DEFAULTS))


register_cfg_extension(_extend)
