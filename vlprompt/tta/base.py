"""Test-time procedures: what a test-time adaptation method (TPT, C-TPT, TDA, DMN-ZS, ...) is and how it plugs in.

A test-time procedure wraps a **finished model** (zero-shot CLIP, or the finished run of a prompt learner loaded
with ``--eval-only --model-dir``) and turns the test split into a stream of single test images, each seen as
``V`` views (view 0 = resize + centre crop; views 1..V-1 random crops/flips, AugMix on the fine-grained sets;
:mod:`vlprompt.tta.views`). The runner (:mod:`vlprompt.tta.runner`) owns the stream, the order, the views, the
batched image pass, the metrics and the output files; a procedure owns only its idea.

**Writing one** (one file, ``trainers/tta/<name>.py``; registered by name in :data:`TTA_REGISTRY`)::

    @TTA_REGISTRY.register()
    class MyTTA(TestTimeProcedure):
        EPISODIC = True               # True: reset() before every image; False (online): reset() once per stream
        CFG_NODE = "MYTTA"            # optional: its config node cfg.TTA.MYTTA ...
        CFG_DEFAULTS = dict(LR=5e-3)  # ... with these defaults (registered when the class is defined)

        @classmethod
        def refusal(cls, base):       # one line why it cannot wrap this base model, or None
            return None if base.prompt_learner is not None else "it tunes a learned text context"

        def __init__(self, cfg, base):
            super().__init__(cfg, base)   # self.cfg, self.base, self.node (cfg.TTA.<CFG_NODE> or None)
            ...

        def reset(self):              # back to the pristine state (episodic: per image; online: per stream)
            ...

        def step(self, sample):       # one test image -> (K,) fp32 logits of the final prediction
            ...

**What a procedure receives per test image** (:class:`Sample`): ``views`` (V, 3, H, W) the normalised view
tensors on the model's device (view 0 first); ``image_features`` (V, D) the **raw** (not normalised) image
features of all views from the base model's image tower, computed by the runner in **one batched pass**
under ``no_grad`` (the image tower never adapts in the procedures here); ``index`` (position in the dataset)
and ``position`` (position in the stream). The label is never given to a procedure.

**What it can use of the model** (:class:`BaseModel`, built by :meth:`BaseModel.from_trainer`):
``text_features()`` (K, D) the base model's own classifier text features (zero-shot: its templates; a prompt
learner: its learned prompts), ``logits(image_features, text_features)`` (CLIP's ``exp(logit_scale)·cos``, fp32),
``logit_scale`` (the learned, un-exponentiated scale), ``clip_model`` (the frozen open_clip model), ``classnames``,
``prompted`` (the prompt learner's :class:`vlprompt.clip.DeepPromptedCLIP`, or None for zero-shot CLIP),
``prompt_learner`` (its learnable module, or None), ``image_features(images)`` (another image pass if a
procedure needs one), ``device``, ``autocast()`` (the run's precision) and ``name`` / ``kind`` (``zero_shot`` or
``prompt_learner``) of the base model.

**State.** A procedure keeps its state on ``self``. Episodic procedures restore the pristine state in
``reset()`` (TPT: the context and the optimiser state); online procedures build empty caches/memories in
``reset()``, which the runner calls once at the start of the stream (one dataset), so state never leaks across
datasets. ``state_summary()`` may return a small JSON-able dict recorded in results.json at the end (e.g. cache
sizes). ``N_VIEWS`` (None: ``cfg.TTA.N_VIEWS``) fixes how many views the procedure wants (1: view 0 only);
``augmix_auto(dataset_name)`` says whether its views get AugMix under ``TTA.AUGMIX auto``.
"""
import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from vlprompt.errors import UserError
from vlprompt.utils import Registry

__all__ = ["TTA_REGISTRY", "TestTimeProcedure", "Sample", "BaseModel", "TTAError", "get_procedure",
           "procedure_names", "register_tta_node"]

TTA_REGISTRY = Registry("TTA")


class TTAError(UserError, ValueError):
    """A test-time run that cannot be done as asked (unknown procedure, unsupported base model, bad option)."""


#: procedure config nodes: name -> defaults (added under cfg.TTA by vlprompt.tta.config's extension)
TTA_NODES = {}


def register_tta_node(node, defaults):
    """Declare ``cfg.TTA.<node>`` with ``defaults`` (a procedure's own keys)."""
    TTA_NODES[node] = dict(defaults)


@dataclass
class Sample:
    """One test image as a procedure sees it (see the module docstring)."""

    views: torch.Tensor  # (V, 3, H, W), view 0 = centre crop
    image_features: torch.Tensor  # (V, D) raw features from the base model's image tower (no grad)
    index: int  # index in the dataset's test list
    position: int  # position in the stream


class BaseModel:
    """The finished model a procedure wraps (see the module docstring). Build it with :meth:`from_trainer`."""

    def __init__(self, name, kind, clip_model, classnames, logit_scale, image_tower, text_fn, device,
                 precision=None, prompted=None):
        self.name = name
        self.kind = kind
        self.clip_model = clip_model
        self.classnames = list(classnames)
        self.logit_scale = logit_scale
        self._image_tower = image_tower
        self._text_fn = text_fn
        self.device = device
        self.precision = precision
        self.prompted = prompted
        self.prompt_learner = getattr(prompted, "prompt_learner", None) if prompted is not None else None

    @classmethod
    def from_trainer(cls, trainer):
        """The base model of a built (and loaded) trainer; :class:`TTAError` naming why it cannot be wrapped."""
        from vlprompt.clip.blocks import DeepPromptedCLIP, ZeroShotHead

        name = trainer.cfg.TRAINER.NAME
        head = getattr(trainer, "head", None)
        if isinstance(head, ZeroShotHead) and getattr(trainer, "clip_model", None) is not None:
            return cls(name, "zero_shot", trainer.clip_model, trainer.dm.dataset.classnames, head.logit_scale,
                       head.image_features, head.text_features, trainer.device)
        model = getattr(trainer, "model", None)
        if isinstance(model, DeepPromptedCLIP) and model.prompt_modifier is None:
            clip_model = model.prompt_learner._clip_model if hasattr(model.prompt_learner, "_clip_model") else None
            if clip_model is None:
                raise TTAError(f"{name}: its prompt learner keeps no reference to the CLIP model, so test-time "
                               "procedures cannot wrap it")
            return cls(name, "prompt_learner", clip_model, trainer.dm.dataset.classnames, model.logit_scale,
                       model.image_features, model.class_text_features, trainer.device,
                       precision=getattr(trainer, "precision", None), prompted=model)
        raise TTAError(f"Test-time procedures cannot wrap {name}: they need zero-shot CLIP or a prompt learner "
                       "whose logits are CLIP's cosine logits of one text classifier (a DeepPromptedCLIP model "
                       "without per-image text or plug-in prompt modifiers)")

    def autocast(self):
        return self.precision.autocast() if self.precision is not None else contextlib.nullcontext()

    @torch.no_grad()
    def image_features(self, images):
        """(B, D) raw image features of ``images`` (B, 3, H, W) from the base model's image tower."""
        with self.autocast():
            return self._image_tower(images.to(self.device)).float()

    @torch.no_grad()
    def text_features(self):
        """(K, D) the base model's classifier text features (raw; the logits normalise them)."""
        with self.autocast():
            return self._text_fn().float()

    def logits(self, image_features, text_features):
        """``exp(logit_scale) · cos(f, t)`` in fp32: (B, D) x (K, D) -> (B, K)."""
        from vlprompt.clip.prompted import normalized_logits

        return normalized_logits(image_features, text_features, self.logit_scale)


class TestTimeProcedure:
    """Base class of a test-time procedure (see the module docstring)."""

    EPISODIC = True
    N_VIEWS: Optional[int] = None
    CFG_NODE: Optional[str] = None
    CFG_DEFAULTS: Optional[dict] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("CFG_DEFAULTS"):
            if not cls.CFG_NODE:
                raise TypeError(f"{cls.__name__} sets CFG_DEFAULTS but no CFG_NODE")
            register_tta_node(cls.CFG_NODE, cls.CFG_DEFAULTS)

    @classmethod
    def refusal(cls, base):
        """One line saying why this procedure cannot wrap ``base`` (a :class:`BaseModel`), or None."""
        return None

    @classmethod
    def augmix_auto(cls, dataset_name):
        """Whether the views of ``dataset_name`` get AugMix under ``TTA.AUGMIX auto`` (default: TPT's official
        rule, :func:`vlprompt.tta.views.augmix_for_dataset`)."""
        from .views import augmix_for_dataset

        return augmix_for_dataset("auto", dataset_name)

    @classmethod
    def n_views(cls, cfg):
        return int(cls.N_VIEWS) if cls.N_VIEWS is not None else int(cfg.TTA.N_VIEWS)

    def __init__(self, cfg, base):
        self.cfg = cfg
        self.base = base
        self.node = cfg.TTA[self.CFG_NODE] if self.CFG_NODE and self.CFG_NODE in cfg.TTA else None

    def reset(self):
        """Restore the pristine state (episodic: before every image; online: once per stream)."""

    def step(self, sample):
        """(K,) fp32 logits of the final prediction for one test image (a :class:`Sample`)."""
        raise NotImplementedError

    def state_summary(self):
        """A small JSON-able dict recorded in results.json at the end of the stream (or None)."""
        return None


def get_procedure(name):
    """The registered procedure class ``name`` (:class:`TTAError` listing the registered ones otherwise)."""
    if name not in TTA_REGISTRY:
        raise TTAError(f"Unknown test-time procedure '{name}' (TTA.METHOD). Registered: "
                       f"{', '.join(sorted(TTA_REGISTRY.registered_names()))}")
    return TTA_REGISTRY.get(name)


def procedure_names():
    return sorted(TTA_REGISTRY.registered_names())


class NoAdapt(TestTimeProcedure):
    """The base model as it is, evaluated on view 0 (the zero-shot / base rows of the TTA tables, with ECE and
    per-sample outputs like every procedure). Registered as ``none``."""

    N_VIEWS = 1

    def __init__(self, cfg, base):
        super().__init__(cfg, base)
        self.text = base.text_features()

    def step(self, sample):
        return self.base.logits(sample.image_features[:1], self.text)[0]


TTA_REGISTRY._do_register("none", NoAdapt)
