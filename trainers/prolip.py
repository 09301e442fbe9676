"""ProLIP: fine-tune CLIP's last visual projection with a regulariser toward its pretrained value (Fahes et al.,
"Fine-Tuning CLIP's Last Visual Projector: A Few-Shot Cornucopia", arXiv:2410.05270; official code
astra-vision/ProLIP, ``methods/ProLIP.py``, ``main.py``, ``configs/experiments/*.yaml``).

The image tower is frozen up to the feature **before** its final projection ``x`` (ViT: ``ln_post`` of the
class token; ResNet: the attention-pool output before ``c_proj``). Only the projection ``W`` is learned,
initialised to CLIP's::

    ViT:    f = x @ W          W = visual.proj (d_v, d)            (official VisProjViT.vit_proj)
    ResNet: f = x W^T + b      W = attnpool.c_proj.weight, b frozen (official VisProjRN.linear)
    logits = 100 * f/|f| @ T^T         T: normalised template-ensemble text weights (Tip-Adapter's templates)
    loss   = CE(logits, y) + lambda * sum((W - W0)^2)        (MSELoss(reduction="sum"))

Training: ``MAX_EPOCH`` (300) full-batch steps, one stored augmented view of the training images per step,
view ``(e + 1) % AUG_VIEWS`` at epoch ``e`` (the official counter is advanced before use: views 1, 2, ...,
299, 0); Adam (eps 1e-4), cosine over the epochs stepped per epoch. ``lambda`` = ``LAMBDA`` or ``1/shots``
(``LAMBDA_RULE 1/N``) or ``1/shots^2`` (``1/N2``). With ``SEARCH True`` (the official ``few_shot_few_val``)
every (lr, lambda) of ``LR_GRID`` x ``LAMBDA_GRID`` is trained from ``W0`` and scored on the few-shot
validation split (strict ``>``, first best wins; ``TEST.SELECTION_SPLIT``, :mod:`vlprompt.features.selection`);
the chosen pair is then trained by the engine's loop.

The pre-projection tower is CLIP's own tower with its projection taken out (ViT: ``visual.proj`` removed;
ResNet: ``c_proj`` replaced by an exact identity), so feature-store entries are keyed apart from the
projected features of other methods. Supports the open_clip CLIP ViT and ResNet towers (the towers that
have such a projection).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import IMAGENET_TEMPLATES_SELECT, PromptedCLIP, ZeroShotHead, get_template
from vlprompt.config import ConfigError
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.errors import UserRuntimeError
from vlprompt.features.selection import first_best, record_selection, selection_features
from vlprompt.features.training import FeatureEpochs
from vlprompt.data.batch_sources import BatchSource
from vlprompt.metrics import compute_accuracy
from vlprompt.protocol.families import TEXT_ANY

LR_GRID = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
LAMBDA_GRID = (10.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 0.0)
LAMBDA_RULES = ("constant", "1/N", "1/N2")


def prolip_templates(dataset_name):
    """The official datasets' templates (Tip-Adapter's): CLIP's 7 for ImageNet, else the CoOp template."""
    return list(IMAGENET_TEMPLATES_SELECT) if dataset_name == "ImageNet" else [get_template(dataset_name)]


class ViTProjection(nn.Module):
    """``x @ vit_proj`` (official ``VisProjViT``)."""

    def __init__(self, w0):
        super().__init__()
        self.vit_proj = nn.Parameter(w0.detach().clone().float())
        self.register_buffer("w0", w0.detach().clone().float(), persistent=False)

    def weight(self):
        return self.vit_proj

    def forward(self, x):
        return x @ self.vit_proj


class _Linear(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.register_buffer("bias", bias.detach().clone().float())  # official: requires_grad False


class RNProjection(nn.Module):
    """``x W^T + b`` with ``b`` frozen (official ``VisProjRN.linear``)."""

    def __init__(self, weight, bias):
        super().__init__()
        self.linear = _Linear(weight, bias)
        self.register_buffer("w0", weight.detach().clone().float(), persistent=False)

    def weight(self):
        return self.linear.weight

    def forward(self, x):
        return F.linear(x, self.linear.weight, self.linear.bias)


def detach_projection(clip_model):
    """Take the final projection out of CLIP's image tower (in place); returns the learnable module
    initialised to it. Raises ``ConfigError`` for a tower without one."""
    v = clip_model.visual
    proj = getattr(v, "proj", None)
    if isinstance(proj, torch.Tensor) and proj.dim() == 2 and getattr(v, "attn_pool", None) is None:
        module = ViTProjection(proj.data)
        v.proj = None
        return module
    pool = getattr(v, "attnpool", None)
    c_proj = getattr(pool, "c_proj", None)
    if isinstance(c_proj, nn.Linear):
        module = RNProjection(c_proj.weight.data, c_proj.bias.data)
        d_in = c_proj.in_features
        ident = nn.Linear(d_in, d_in).to(device=c_proj.weight.device, dtype=c_proj.weight.dtype)
        with torch.no_grad():
            ident.weight.copy_(torch.eye(d_in))
            ident.bias.zero_()
        ident.requires_grad_(False)
        pool.c_proj = ident
        return module
    raise ConfigError(f"ProLIP fine-tunes the final projection of the image tower; supported image towers: CLIP ViT "
                      f"(visual.proj) and CLIP ResNet (attnpool.c_proj), e.g. ViT-B/16, RN50; this backbone's "
                      f"{type(getattr(v, 'trunk', v)).__name__} has no such projection")


class ProLIPModel(PromptedCLIP):
    """Frozen CLIP without its last visual projection + the learnable projection ``proj``."""

    def __init__(self, clip_model, classnames, templates, logit_scale=100.0):
        proj = detach_projection(clip_model)
        super().__init__(clip_model)
        self.proj = proj
        self.text_head = ZeroShotHead(clip_model, classnames, templates)
        self.scale = float(logit_scale)

    def learnable_modules(self):
        return [self.proj]

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.text_head.set_classnames(classnames)

    def logits_from_image_features(self, x_before, proj=None):
        proj = self.proj if proj is None else proj
        with torch.autocast(device_type=x_before.device.type, enabled=False):
            f = F.normalize(proj(x_before.float()), dim=-1)
            return self.scale * f @ self.text_head.text_features().float().t()

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))

    def reg(self, proj=None):
        proj = self.proj if proj is None else proj
        return ((proj.weight() - proj.w0) ** 2).sum()


class FullBatch(BatchSource):
    """One full batch of stored features, in the images' order (the official unshuffled features)."""

    def __init__(self, feats, labels, device):
        self.feats, self.labels, self.device = feats, labels, device

    def __len__(self):
        return 1

    def __iter__(self):
        yield ({"feat": self.feats.to(self.device), "label": self.labels.to(self.device)},)


@TRAINER_REGISTRY.register()
class ProLIP(FeatureEpochs, ClipPromptTrainer):
    """ProLIP (see the module docstring)."""

    CARD = MethodCard(
        config="vit_b16", recipes={"base2new": "vit_b16_b2n", "cross_dataset": "vit_b16_xd"},
        protocols=("few_shot", "base2new", "cross_dataset", "domain_generalization"), order=238,
        backbones={"text": TEXT_ANY, "vision": ("clip_vit", "resnet"), "clip_towers": True},
        cfg_node="PROLIP",
        # official configs/experiments/few_shot_few_val.yaml (search_lr True, aug_views 300, train_epoch 300);
        # LR_GRID / LAMBDA_GRID: methods/ProLIP.py's lr_list / lambda_list; ADAM_EPS and LOGIT_SCALE hard-coded there
        cfg_defaults=dict(SEARCH=True, LAMBDA=0.1, LAMBDA_RULE="constant", AUG_VIEWS=300, LR_GRID=list(LR_GRID),
                          LAMBDA_GRID=list(LAMBDA_GRID), ADAM_EPS=1e-4, LOGIT_SCALE=100.0, PREC="fp16"),
        model_name="proj",
    )
    LOG_ACC = True
    FROZEN_IMAGE_FEATURES = True

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        m = cfg.TRAINER.PROLIP
        if m.LAMBDA_RULE not in LAMBDA_RULES:
            raise ConfigError(f"TRAINER.PROLIP.LAMBDA_RULE must be one of {LAMBDA_RULES}, got '{m.LAMBDA_RULE}'")
        if int(m.AUG_VIEWS) < 1:
            raise ConfigError(f"TRAINER.PROLIP.AUG_VIEWS must be >= 1, got {m.AUG_VIEWS}")

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.PROLIP
        return ProLIPModel(clip_model, classnames, prolip_templates(cfg.DATASET.NAME), logit_scale=m.LOGIT_SCALE)

    def learnable_module(self):
        return self.model.proj

    # ---- data ----------------------------------------------------------------------------------
    def view_of_epoch(self, epoch):
        return (int(epoch) + 1) % int(self.method_cfg.AUG_VIEWS)

    def train_labels(self):
        return torch.tensor([int(it.label) for it in self.dm.dataset.train_x], dtype=torch.long)

    def view(self, v):
        """Stored features of augmented view ``v`` on the device (kept in memory: every view is read once
        per candidate of the search and once more by the final training, as the official in-memory list)."""
        cache = self.__dict__.setdefault("_views", {})
        if v not in cache:
            cache[v] = self.train_view_features(v).to(self.device)
        return cache[v]

    def batch_source(self):
        if not self.train_from_store():
            return super().batch_source()
        return FullBatch(self.view(self.view_of_epoch(self.epoch)), self.train_labels(), self.device)

    def parse_batch_train(self, batch):
        return self.image_features_of(batch), batch["label"].to(self.device)

    def loss_terms(self, features, label, proj=None, lam=None):
        logits = self.model.logits_from_image_features(features, proj)
        lam = self.lam if lam is None else lam
        return {"ce": F.cross_entropy(logits, label), "reg": lam * self.model.reg(proj)}, logits

    # ---- lambda, the search, the optimiser -----------------------------------------------------
    def rule_lambda(self):
        m, shots = self.method_cfg, int(self.cfg.DATASET.NUM_SHOTS)
        if shots < 1 and m.LAMBDA_RULE != "constant":  # all images: N = training images per class (mean)
            shots = len(self.dm.dataset.train_x) / max(self.num_classes, 1)
            print(f"ProLIP: DATASET.NUM_SHOTS {self.cfg.DATASET.NUM_SHOTS} (all images): lambda rule "
                  f"{m.LAMBDA_RULE} with N = {shots:g} training images per class")
        if m.LAMBDA_RULE == "1/N":
            return 1.0 / shots
        if m.LAMBDA_RULE == "1/N2":
            return 1.0 / shots ** 2
        return float(m.LAMBDA)

    def _train_candidate(self, lr, lam, views, labels):
        """One official ``search_init_hp`` run: a fresh projection from W0, MAX_EPOCH full-batch steps."""
        proj = _fresh_copy(self.model.proj)
        optim = torch.optim.Adam(proj.parameters(), lr=lr, eps=float(self.method_cfg.ADAM_EPS))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, int(self.max_epoch))
        for e in range(int(self.max_epoch)):
            terms, _ = self.loss_terms(views(self.view_of_epoch(e)), labels, proj=proj, lam=lam)
            optim.zero_grad()
            sum(terms.values()).backward()
            optim.step()
            sched.step()
        return proj

    def search(self):
        """The official lr x lambda search on the selection split (the few-shot validation split; ``TEST.SELECTION_SPLIT``,
        :mod:`vlprompt.features.selection`); returns ``(lr, lambda, accuracy)``."""
        m = self.method_cfg
        split, val, val_y = selection_features(self, "ProLIP search")
        if split is None:
            raise UserRuntimeError("ProLIP: TRAINER.PROLIP.SEARCH needs a validation split (this dataset has none): "
                                   "set TRAINER.PROLIP.SEARCH False with OPTIM.LR and TRAINER.PROLIP.LAMBDA")
        val, val_y = val.to(self.device), val_y.to(self.device)
        labels = self.train_labels().to(self.device)

        def score(pair):
            proj = self._train_candidate(pair[0], pair[1], self.view, labels)
            with torch.no_grad():
                acc = compute_accuracy(self.model.logits_from_image_features(val, proj), val_y)[0].item()
            print(f"ProLIP search: lr {pair[0]:g}, lambda {pair[1]:g}: {split} accuracy {acc:.2f}")
            return acc

        grid = [(float(lr), float(lam)) for lr in m.LR_GRID for lam in m.LAMBDA_GRID]
        best, acc, trace = first_best(grid, score)  # official: strict >, from accuracy 0
        if best is None:
            raise UserRuntimeError("ProLIP: every (lr, lambda) of the search has accuracy 0 on the selection split; "
                                   "set TRAINER.PROLIP.SEARCH False and give OPTIM.LR and TRAINER.PROLIP.LAMBDA")
        record_selection(self, split, lr=best[0], **{"lambda": best[1]}, accuracy=acc,
                         grid=[[c[0], c[1], a] for c, a in trace])
        print(f"ProLIP: searched on {split}: lr {best[0]:g}, lambda {best[1]:g} (accuracy {acc:.2f})")
        return best[0], best[1], acc

    def build_optimizers(self, learnable):
        """Adam (eps ``ADAM_EPS``) + cosine over the epochs at ``OPTIM.LR`` and ``lambda`` of the rule; with
        ``SEARCH`` both are replaced by the searched pair when training starts (an evaluation-only run
        searches nothing)."""
        m = self.method_cfg
        self.lam = self.rule_lambda()
        self.search_result = {"lr": float(self.cfg.OPTIM.LR), "lambda": self.lam}
        optim = torch.optim.Adam(learnable.parameters(), lr=float(self.cfg.OPTIM.LR), eps=float(m.ADAM_EPS))
        return {self.MODEL_NAME: (optim, torch.optim.lr_scheduler.CosineAnnealingLR(optim, int(self.max_epoch)))}

    def before_train(self):
        super().before_train()
        if self.method_cfg.SEARCH:
            if not self.train_from_store():
                raise ConfigError("TRAINER.PROLIP.SEARCH trains from the feature store: set FEATURES.TRAIN_CACHE True "
                                  "or TRAINER.PROLIP.SEARCH False")
            lr, self.lam, acc = self.search()
            self.search_result = {"lr": lr, "lambda": self.lam, "search_acc": acc}
            optim, sched = self._optimizers[self.MODEL_NAME][:2]
            for g in optim.param_groups:
                g["lr"] = g["initial_lr"] = lr
            sched.base_lrs = [lr for _ in optim.param_groups]
            sched._last_lr = [lr for _ in optim.param_groups]
        print(f"ProLIP: lr {self.search_result['lr']:g}, lambda {self.lam:g}, Adam eps "
              f"{float(self.method_cfg.ADAM_EPS):g}, {self.max_epoch} epochs")

    def extra_results(self):
        extra = dict(super().extra_results() or {})
        extra.update(getattr(self, "search_result", {}))
        return extra


def _fresh_copy(proj):
    """A new projection module at W0 (the pretrained value) with the same frozen parts."""
    if isinstance(proj, ViTProjection):
        return ViTProjection(proj.w0).to(proj.w0.device)
    return RNProjection(proj.w0, proj.linear.bias).to(proj.w0.device)


__all__ = ["ProLIP", "ProLIPModel", "ViTProjection", "RNProjection", "detach_projection", "prolip_templates"]
