"""DePT: Decoupled Prompt Tuning (Zhang et al., CVPR 2024), as a plug-in for any supported host.

Official code: https://github.com/Koorye/DePT (``trainers/elp_coop.py``, ``elp_cocoop.py``, ``elp_kgcoop.py``,
``elp_maple.py``, ``trainers/optim.py``, ``train.py``; commit d4ff416). Spelling: ``--trainer CoOp+DePT``
(``CoCoOp+DePT``, ``KgCoOp+DePT``, ``MaPLe+DePT``, ``PromptSRC+DePT``, ...). docs/METHODS.md, "DePT".

What DePT adds to the host (its own module, checkpoint folder ``DePT``):

* two channel-wise transforms (the paper's cwT, FiLM in the code) ``film_lp_img`` and ``film_lp_text``:
  ``x * scale + bias`` with ``scale`` (d,) = 1 and ``bias`` (d,) = 0 at init, on the **raw** (not normalised)
  image and text features the host feeds its logit product;
* a linear head ``linear_probe_proj`` = ``Linear(d, K_base)`` (``TYPE linear``; ``similarity``: no head,
  the cosine logits of the transformed features).

Training: ``loss = (1 - w) * CE(host similarity logits, y) + w * CE(head(cat([cwT_t(t)[y], cwT_i(f)])), cat([y, y]))``
with ``w = TRAINER.DEPT.WEIGHT`` (0.7): the head is trained on the labels' text features **and** the images
(2B rows). The host's other loss terms (KgCoOp's ``kg``, PromptSRC's ``scl_*``) are kept as they are (the
official KgCoOp host adds its term unweighted). Log terms: ``ce`` (already times ``1 - w``) and ``dept``.

Test: on the classes the head was trained on (or a subset of them: ImageNet-A/-R rows are picked by class)
``(1 - w) * similarity + w * head(cwT_i(f))`` (``TEST_TIME_FUSION``; off: the head alone); on other classes
(novel classes, other datasets) the host's similarity logits alone. The official code decides this from
``DATASET.SUBSAMPLE_CLASSES`` ('base', or 'all' with 'ImageNet' in the dataset name); here from the class
list itself (the head stores which classes it was trained on), which gives the same answer in every
protocol and also covers few-shot runs on all classes.

Learning rates (official ``trainers/optim.py`` with ``STAGED_LR`` and ``train.py``): the host's parameters
at ``OPTIM.LR``, DePT's at ``OPTIM.LR * TRAINER.DEPT.LR_EXP`` (0.0035 x 6.5 = 0.02275): DePT has an
optimiser of its own with the same settings and schedule, which is the same update as the official single
optimiser with two parameter groups.
"""
import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.config import ConfigError
from vlprompt.engine.plugins import PLUGIN_REGISTRY, Plugin

HEAD_TYPES = ("linear", "similarity")


def class_keys(classnames):
    """(K,) int64 keys of class names (first 8 bytes of SHA-1 of the stripped name), saved with the head
    so that a checkpoint knows the classes its rows stand for."""
    out = []
    for name in classnames:
        digest = hashlib.sha1(str(name).strip().encode("utf-8")).digest()[:8]
        out.append(int.from_bytes(digest, "little", signed=True))
    return torch.tensor(out, dtype=torch.long)


class FiLM(nn.Module):
    """Channel-wise transform ``x * scale + bias`` (the official ``FiLM`` with its defaults)."""

    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.scale.unsqueeze(0).to(x.dtype) * x + self.bias.unsqueeze(0).to(x.dtype)


class DePTHead(nn.Module):
    """DePT's learnable state: ``film_lp_img``, ``film_lp_text`` (when ``film``) and ``linear_probe_proj``
    (``head_type`` linear) for ``classnames``; ``class_keys`` (persistent) records the head's classes.

    :meth:`set_classnames` sets the current label space: ``rows`` are the head rows of the current
    classes, or None when some current class is not one of the head's (then the head does not apply).
    """

    def __init__(self, dim, classnames, head_type="linear", film=True):
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ConfigError(f"TRAINER.DEPT.TYPE must be one of {HEAD_TYPES}, got {head_type!r}")
        self.dim = int(dim)
        self.head_type = head_type
        self.film_lp_img = FiLM(dim) if film else None
        self.film_lp_text = FiLM(dim) if film else None
        self.linear_probe_proj = nn.Linear(dim, len(classnames)) if head_type == "linear" else None
        self.register_buffer("class_keys", class_keys(classnames))
        self.rows = None
        self.set_classnames(classnames)

    def set_classnames(self, classnames):
        self._current = class_keys(classnames)
        self._update_rows()

    def _update_rows(self):
        pos = {k: i for i, k in enumerate(self.class_keys.tolist())}
        idx = [pos.get(k) for k in self._current.tolist()]
        self.rows = None if any(i is None for i in idx) else torch.tensor(idx, dtype=torch.long)

    @property
    def trained_on_current(self):
        """Whether the current class list is exactly the head's (in order)."""
        return self.rows is not None and torch.equal(self.rows, torch.arange(len(self.class_keys)))

    def adapt_to_state_dict(self, state_dict):
        """Take the checkpoint's class list (and head size) before loading it."""
        keys = state_dict.get("class_keys")
        if keys is None:
            return
        if self.linear_probe_proj is not None and state_dict.get("linear_probe_proj.weight") is not None:
            k = state_dict["linear_probe_proj.weight"].shape[0]
            if k != self.linear_probe_proj.out_features:
                w = self.linear_probe_proj.weight
                self.linear_probe_proj = nn.Linear(self.dim, k).to(device=w.device, dtype=w.dtype)
        self.class_keys = keys.detach().clone().to(self.class_keys.device)
        self._update_rows()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._update_rows()

    def film(self, image, text):
        """cwT on raw features (identity without FiLM)."""
        if self.film_lp_img is None:
            return image, text
        return self.film_lp_img(image), self.film_lp_text(text)

    def head(self, x, rows=None):
        """Head logits of features ``x`` (N, d) for the head's classes (or its ``rows``)."""
        w, b = self.linear_probe_proj.weight, self.linear_probe_proj.bias
        if rows is not None:
            w, b = w[rows.to(w.device)], b[rows.to(b.device)]
        return F.linear(x.to(w.dtype), w, b)


def similarity(image, text, logit_scale):
    """``exp(logit_scale) * cos`` of (B, d) image and (K, d) or per-image (B, K, d) text features (fp32)."""
    f = image.float() / image.float().norm(dim=-1, keepdim=True)
    t = text.float() / text.float().norm(dim=-1, keepdim=True)
    scale = logit_scale.exp().float()
    if t.dim() == 3:
        return scale * torch.einsum("bd,bkd->bk", f, t)
    return scale * f @ t.t()


def dept_train_logits(head, image, text, label, logit_scale):
    """The head's training logits and labels: ``linear``: ``head(cat([cwT_t(t)[y], cwT_i(f)]))`` against
    ``cat([y, y])`` (per-image text (B, K, d): image b's own row of its label); ``similarity``: the cosine
    logits of the transformed features against ``y``."""
    image, text = image.float(), text.float()
    img, txt = head.film(image, text)
    if head.head_type == "similarity":
        return similarity(img, txt, logit_scale), label
    if txt.dim() == 3:
        txt_y = txt[torch.arange(txt.shape[0], device=txt.device), label]
    else:
        txt_y = txt[label]
    return head.head(torch.cat([txt_y, img])), torch.cat([label, label])


def dept_test_logits(head, image, text, logit_scale):
    """The head's test logits on the current classes (``head.rows``)."""
    image, text = image.float(), text.float()
    img, txt = head.film(image, text)
    if head.head_type == "similarity":
        return similarity(img, txt, logit_scale)
    return head.head(img, head.rows)


#: the recipe of an official DePT host: one config for base-to-novel, cross-dataset and DG (configs.py)
def _official(config):
    return {p: {"config": config} for p in ("base2new", "cross_dataset", "domain_generalization")}


@PLUGIN_REGISTRY.register()
class DePT(Plugin):
    """Decoupled Prompt Tuning: FiLM on both features, a linear head on base classes, fused at test time."""

    ORDER = 10
    CFG_NODE = "DEPT"
    # official train.py extend_cfg: LINEAR_PROBE.{TYPE, WEIGHT, TEST_TIME_FUSION}, FILM.LINEAR_PROBE, OPTIM.LR_EXP
    CFG_DEFAULTS = dict(TYPE="linear", WEIGHT=0.7, TEST_TIME_FUSION=True, FILM=True, LR_EXP=6.5)
    MODEL_NAME = "DePT"

    # the official hosts (configs/trainers/ExtrasLinearProbe<Host>/ shipped as configs/trainers/DePT/) and the
    # other vlprompt prompt learners whose similarity logits come from the shared logit product (their own
    # recipes; DePT's paper reports PromptSRC, VPT and CLIP-Adapter hosts without shipping their code)
    HOSTS = {
        "CoOp": _official("vit_b16_ep10_bs4_lr35"),
        "CoCoOp": _official("vit_b16_c4_ep10_batch1_ctxv1"),
        "KgCoOp": _official("vit_b16_ep10_ctxv1_bs4_lr35"),
        "MaPLe": _official("vit_b16_c2_ep10_batch4_2ctx"),
        "PromptSRC": None,
        "VPT": None,
        "CLIP_Adapter": None,
        "IVLP": None,
        "TCP": None,
        "MuDPT": None,
        "UMuDPT": None,
    }
    REFUSED = {
        "ZeroshotCLIP": "zero-shot CLIP trains nothing, so DePT's head and transforms could not be learned",
        "ZeroshotCLIP2": "zero-shot CLIP trains nothing, so DePT's head and transforms could not be learned",
        "LinearProbeCLIP": "a linear probe on frozen features is not a prompt learner (DePT's head would be a "
                           "second linear probe on the same features)",
        "TipAdapter": "Tip-Adapter is training-free (nothing learned), so DePT's head could not be learned",
        "TipAdapterF": "Tip-Adapter-F's logits are a cache model plus zero-shot logits, not one image-text "
                       "similarity whose features DePT could transform",
        "CLIPLoRA": "CLIP-LoRA's evaluation logits are unscaled cosines outside the shared logit product "
                    "(DePT's fusion weights assume CLIP-scaled logits)",
        "ProGrad": "ProGrad's step projects the CE gradient against the zero-shot gradient; how DePT's head "
                   "term would enter that projection is not defined",
        "APLe": "APLe trains in three stages per iteration (text, vision, joint) with its own step, so there is "
                "no one objective for DePT's terms",
        "MMRL": "MMRL already fuses a second head on base classes (representation-token logits at a fixed scale "
                "100); a DePT head on top is not defined",
    }

    def check(self):
        m = self.plugin_cfg
        if str(m.TYPE) not in HEAD_TYPES:
            raise ConfigError(f"TRAINER.DEPT.TYPE must be one of {HEAD_TYPES}, got {m.TYPE!r}")
        if not 0.0 <= float(m.WEIGHT) <= 1.0:
            raise ConfigError(f"TRAINER.DEPT.WEIGHT must be in [0, 1], got {m.WEIGHT}")
        if float(m.LR_EXP) <= 0:
            raise ConfigError(f"TRAINER.DEPT.LR_EXP must be > 0, got {m.LR_EXP}")

    def build(self, classnames):
        self.check()
        m = self.plugin_cfg
        dim = self.trainer.model.dims["d_embed"]
        head = DePTHead(dim, classnames, head_type=str(m.TYPE), film=bool(m.FILM))
        self.weight = float(m.WEIGHT)
        self.logit_scale = self.trainer.model.logit_scale
        self._said = None
        return head

    def build_optimizers(self, module):
        from vlprompt.optim import build_lr_scheduler, build_optimizer

        optim_cfg = self.cfg.OPTIM.clone()
        optim_cfg.defrost()
        optim_cfg.LR = float(self.cfg.OPTIM.LR) * float(self.plugin_cfg.LR_EXP)
        optim_cfg.STAGED_LR = False
        print(f"DePT: learning rate {optim_cfg.LR:g} (OPTIM.LR {self.cfg.OPTIM.LR:g} x TRAINER.DEPT.LR_EXP "
              f"{self.plugin_cfg.LR_EXP:g}); the host's parameters: {self.cfg.OPTIM.LR:g}")
        optim = build_optimizer(module, optim_cfg)
        return {self.model_name(): (optim, build_lr_scheduler(optim, optim_cfg))}

    def loss_terms(self, terms, logits, features, label):
        head = self.module
        if not head.trained_on_current:
            raise RuntimeError("DePT's head was loaded for another class list; it trains only on its own classes")
        if "ce" not in terms:
            raise RuntimeError(f"DePT needs the host's cross-entropy term 'ce'; the host gave {sorted(terms)}")
        w = self.weight
        with torch.autocast(device_type=logits.device.type, enabled=False):
            lp_logits, lp_labels = dept_train_logits(head, features.image, features.text, label, self.logit_scale)
            lp = F.cross_entropy(lp_logits, lp_labels)
        out = {}
        for k, v in terms.items():
            out[k] = (1 - w) * v if k == "ce" else v
        out["dept"] = w * lp
        return out

    def inference(self, logits, features):
        head = self.module
        if head.rows is None:
            self._note("the current classes are not the head's: similarity logits only")
            return logits
        self._note("the head was trained on the current classes: fused logits" if self.plugin_cfg.TEST_TIME_FUSION
                   else "the head was trained on the current classes: head logits only (TEST_TIME_FUSION False)")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            lp = dept_test_logits(head, features.image, features.text, self.logit_scale)
        if not self.plugin_cfg.TEST_TIME_FUSION:
            return lp
        w = self.weight
        return (1 - w) * logits.float() + w * lp

    def _note(self, text):
        if self._said != text:
            self._said = text
            print(f"DePT: {text}")

    def set_classnames(self, classnames):
        self.module.set_classnames(classnames)
        self._said = None
