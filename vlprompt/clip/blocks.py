"""Shared building blocks of the prompt-learning methods (docs/METHODS.md, "The method kit").

* :class:`ArgError`: a bad plain argument of a block (``n_ctx``, ``depth``, ...). Blocks never name
  config keys; a trainer maps the argument to its key (``CFG_ARGS``) in one place.
* :func:`require_vit`: the one guard for methods that prompt the image tower.
* :func:`prompt_geometry`: the one check of a prompt length ``N`` and depth ``J`` against the backbone.
* :class:`ZeroShotHead`: frozen CLIP + hand-crafted templates; class text features rebuilt for every
  class list, never saved (ZeroshotCLIP, VPT's fixed text side, APLe's teacher, the regularisers of
  the methods that pull towards zero-shot CLIP).
* :class:`DeepPromptedCLIP`: frozen prompted encoders around a learner; ``forward(image)`` written once
  (cached text features -> prompted image features -> fp32 logits).

Learner protocol (all optional except as noted): ``text_prompts() -> (prompts (K, T, d_t), deep_text
[J_t-1 x (N, d_t)])`` with ``eot_idx`` (K,); ``vision_prompts() -> (ctx (N, d_v), deep_vision
[J_v-1 x (N, d_v)])``; ``set_classnames(names)``. A learner without ``text_prompts`` gets its text
features from a :class:`ZeroShotHead`.
"""
import contextlib
import contextvars

import torch
import torch.nn as nn

from .backbone import VISION_PROMPT_FAMILIES, model_dims
from .errors import ArgError
from .prompt_init import clean_classname, init_text_context, random_deep_prompts, random_prompt
from .prompt_learner import ClassPromptLearner
from .prompted import TextFeatureCache, check_prompt_config, normalized_logits
from .towers import encode_class_sentences, encode_class_texts, prompted_encoders, prompted_vision_encoder

__all__ = ["PromptedCLIP", "ArgError", "require_vit", "prompt_geometry", "ZeroShotHead", "DeepPromptedCLIP",
           "ZERO_SHOT_TEXT_MODES", "zero_shot_text"]


def require_vit(clip_model, method="This method"):
    """Raise a clear error unless the image tower takes vision prompts (the one ViT guard of the kit):
    open_clip ViTs, timm ViT trunks (SigLIP) and timm EVA trunks (EVA02, PE-Core)."""
    if not model_dims(clip_model)["is_vit"]:
        visual = clip_model.visual
        tower = type(getattr(visual, "trunk", visual)).__name__
        raise ArgError(
            "backbone",
            f"{method} prompts the image tower, and this backbone's image tower ({tower}) takes no prompts; "
            f"supported image towers: {'; '.join(VISION_PROMPT_FAMILIES)} (e.g. ViT-B/16, ViT-B-16-SigLIP, "
            "EVA02-B-16, PE-Core-B-16; not RN50 or ConvNeXt)",
        )


def prompt_geometry(clip_model, n_ctx, depth, towers=("text", "vision"), allow_zero_depth=False,
                    n_arg="n_ctx", depth_arg="depth"):
    """Check a prompt length and depth for the given towers; returns ``(n_ctx, depth)`` as ints.

    ``depth`` counts the input layer and may not exceed the shallower of the prompted towers.
    ``n_arg`` / ``depth_arg`` name the arguments in errors (:class:`ArgError`).
    """
    dims = model_dims(clip_model)
    if "vision" in towers and int(depth) > 0:
        require_vit(clip_model)
    layers = min(dims.get("text_layers" if t == "text" else "vision_layers", 0) for t in towers)
    n = int(n_ctx)
    if int(depth) > 0 and n < 1:
        raise ArgError(n_arg, f"the number of prompt tokens must be >= 1, got {n}")
    try:
        return check_prompt_config(n, depth, layers, depth_arg, allow_zero_depth=allow_zero_depth)
    except ValueError as e:
        raise ArgError(depth_arg, str(e).split(": ", 1)[-1]) from None


class PromptedCLIP(nn.Module):
    """Base for a method's "CustomCLIP": frozen prompted encoders + learnable module(s).

    Subclasses create ``self.prompt_learner`` (or override :meth:`learnable_modules`) and implement
    ``forward(image) -> logits (B, K)`` (fp32). Provided here:

    * ``text_encoder`` / ``image_encoder``: :class:`PromptedTextEncoder` / :class:`PromptedVisionEncoder`
      built with the given ``(N, J)`` prompt settings;
    * ``logit_scale``: CLIP's frozen logit scale;
    * :meth:`train`: only the learnable modules change mode; the frozen CLIP stays in eval mode
      (BatchNorm statistics of ResNet towers are never updated) whatever is called on the model;
    * :meth:`cached_text_features`: image-independent text features computed once per evaluation
      (see :class:`TextFeatureCache`);
    * :meth:`set_classnames`: swap the label space (calls ``set_classnames`` on every learnable module
      that has it, then clears the cache).

    The frozen CLIP's weights are reachable from this module (so ``.to(device)`` moves them), but a
    trainer registers only the learnable module(s), so checkpoints hold only the learned state.
    """

    def __init__(self, clip_model, text_prompts=(0, 0), vision_prompts=(0, 0)):
        super().__init__()
        # the encoders of the model's tower types
        self.text_encoder, self.image_encoder = prompted_encoders(clip_model, text_prompts, vision_prompts)
        self.logit_scale = clip_model.logit_scale
        self.dims = model_dims(clip_model)
        self.text_cache = TextFeatureCache()

    def learnable_modules(self):
        """The modules holding every trainable parameter (default: ``[self.prompt_learner]``)."""
        return [self.prompt_learner]

    def train(self, mode=True):
        self.training = mode
        learnable = {id(m) for m in self.learnable_modules()}
        for module in self.children():
            if id(module) in learnable:
                module.train(mode)
            else:
                module.eval()
        return self

    def cached_text_features(self, compute, owner=None):
        """``compute()`` (text features that do not depend on the image), cached during evaluation."""
        return self.text_cache.get(owner if owner is not None else self.learnable_modules()[0], compute)

    def set_classnames(self, classnames):
        """Rebuild every class-derived buffer for ``classnames`` (a list of K names)."""
        for m in self.learnable_modules():
            if hasattr(m, "set_classnames"):
                m.set_classnames(classnames)
        self.text_cache.clear()

    #: a callable ``tap(image_features, text_features, logits)`` called by :meth:`logits` (None: none);
    #: plug-ins read the features before the logit product through it (vlprompt.engine.plugins.FeatureTap)
    feature_tap = None

    def logits(self, image_features, text_features, raw_image_features=None):
        """fp32 ``exp(logit_scale) * cos`` logits; see :func:`normalized_logits`.

        ``raw_image_features``: the unnormalised image features when ``image_features`` were normalised
        by the caller (given to the feature tap only; the logits do not depend on it)."""
        out = normalized_logits(image_features, text_features, self.logit_scale)
        if self.feature_tap is not None:
            self.feature_tap(image_features if raw_image_features is None else raw_image_features, text_features, out)
        return out


#: what a zero-shot head's class text is made of: the templates (CLIP's ensembling, the default), the
#: class descriptions (CuPL's ensembling), or both pooled (every sentence of a class averaged together)
ZERO_SHOT_TEXT_MODES = ("templates", "descriptions", "both")
_TEXT_SOURCE = contextvars.ContextVar("vlprompt_zero_shot_text", default=None)


@contextlib.contextmanager
def zero_shot_text(mode, describe=None):
    """Every :class:`ZeroShotHead` built inside the block takes its class text from ``mode`` (one of
    :data:`ZERO_SHOT_TEXT_MODES`); ``describe(classnames) -> [[sentence, ...] per class]`` gives the class
    descriptions (needed unless ``mode`` is "templates"). The engine opens it around ``build_model`` when
    ``MODEL.ZERO_SHOT_TEXT`` is not "templates", so every method's zero-shot head follows the one key."""
    if mode not in ZERO_SHOT_TEXT_MODES:
        raise ArgError("zero_shot_text", f"must be one of {ZERO_SHOT_TEXT_MODES}, got {mode!r}")
    if mode != "templates" and describe is None:
        raise ArgError("describe", f'zero-shot text "{mode}" needs the class descriptions')
    token = _TEXT_SOURCE.set((mode, describe))
    try:
        yield
    finally:
        _TEXT_SOURCE.reset(token)


class ZeroShotHead(nn.Module):
    """Zero-shot CLIP classifier from hand-crafted templates, for the current class list.

    Args:
        clip_model: the frozen open_clip CLIP (referenced, not registered: never in a state_dict).
        classnames: K class names (``_`` reads as a space).
        templates: one template with ``{}`` or a list (features averaged over templates, CLIP's
            prompt ensembling).
        text_mode / describe: what the class text is made of (:data:`ZERO_SHOT_TEXT_MODES`) and the class
            descriptions (``describe(classnames) -> [[sentence, ...] per class]``). Left out, they are
            those of the enclosing :func:`zero_shot_text` block, else "templates". "descriptions": each
            class's feature is the normalised mean of its descriptions' normalised features (CuPL);
            "both": of its formatted templates' and its descriptions' features together.

    :meth:`text_features` (K, d) are L2-normalised, computed at the first use for the current class
    list on the model's device and dropped by :meth:`set_classnames`; they live in a non-persistent
    buffer, so checkpoints never hold them.
    """

    def __init__(self, clip_model, classnames, templates, text_mode=None, describe=None):
        super().__init__()
        object.__setattr__(self, "_clip_model", clip_model)
        if text_mode is None:
            text_mode, describe = _TEXT_SOURCE.get() or ("templates", None)
        if text_mode not in ZERO_SHOT_TEXT_MODES:
            raise ArgError("text_mode", f"must be one of {ZERO_SHOT_TEXT_MODES}, got {text_mode!r}")
        if text_mode != "templates" and describe is None:
            raise ArgError("describe", f'zero-shot text "{text_mode}" needs the class descriptions')
        self.text_mode = text_mode
        object.__setattr__(self, "_describe", describe)
        templates = [templates] if isinstance(templates, str) else list(templates)
        for t in templates:
            if "{}" not in t:
                raise ArgError("templates", f'every template must contain "{{}}", got "{t}"')
        self.templates = templates
        self.image_encoder = prompted_vision_encoder(clip_model, 0, 0)
        self.logit_scale = clip_model.logit_scale
        self.register_buffer("features", None, persistent=False)
        self.set_classnames(classnames)

    def set_classnames(self, classnames):
        classnames = list(classnames)
        if not classnames:
            raise ArgError("classnames", "the class list is empty")
        self.classnames = [clean_classname(c) for c in classnames]
        self.features = None
        # the descriptions are looked up at once, so a class without any is reported when the head is built
        self.class_sentences = self._describe(classnames) if self.text_mode != "templates" else None

    @torch.no_grad()
    def text_features(self):
        """(K, d) L2-normalised zero-shot text features of the current class list."""
        if self.features is None:
            if self.text_mode == "templates":
                self.features = encode_class_texts(self._clip_model, self.classnames, self.templates)
            else:
                sentences = self.class_sentences
                if self.text_mode == "both":
                    sentences = [[t.format(c) for t in self.templates] + list(d)
                                 for c, d in zip(self.classnames, sentences)]
                self.features = encode_class_sentences(self._clip_model, sentences)
        return self.features

    @torch.no_grad()
    def image_features(self, image):
        """Features of the frozen, unprompted image tower."""
        return self.image_encoder(image)

    @torch.no_grad()
    def logits(self, image):
        from .prompted import normalized_logits

        return normalized_logits(self.image_features(image), self.text_features(), self.logit_scale)

    def train(self, mode=True):  # frozen: always in eval mode
        return super().train(False)


class DeepPromptedCLIP(PromptedCLIP):
    """Frozen CLIP with (deep) text and/or vision prompts from ``learner``; ``forward(image)`` -> logits.

    Args:
        clip_model: the frozen open_clip CLIP.
        learner: the module holding every learnable parameter (registered as ``prompt_learner``).
        text: ``(N, J)`` of the text prompts (default: ``learner.text_geometry``, else ``(0, 0)``: none).
        vision: ``(N, J)`` of the vision prompts (default: ``learner.vision_geometry``, else ``(0, 0)``:
            the image tower is not prompted).
        fixed_text_templates: templates of the fixed text side when the learner has no text prompts.

    Text features do not depend on the image: in evaluation they are computed once and reused until
    a learnable tensor changes (:class:`vlprompt.clip.prompted.TextFeatureCache`).
    """

    def __init__(self, clip_model, learner, text=None, vision=None, fixed_text_templates=None):
        text = tuple(text if text is not None else getattr(learner, "text_geometry", (0, 0)))
        vision = tuple(vision if vision is not None else getattr(learner, "vision_geometry", (0, 0)))
        super().__init__(clip_model, text_prompts=text, vision_prompts=vision)
        self.prompt_learner = learner
        self.fixed_text = None
        if not hasattr(learner, "text_prompts"):
            if fixed_text_templates is None:
                raise ArgError("fixed_text_templates", "a learner without text prompts needs fixed text templates")
            classnames = getattr(learner, "classnames", None)
            if classnames is None:
                raise ArgError("learner", "a learner without text prompts must carry its class names")
            self.fixed_text = ZeroShotHead(clip_model, classnames, fixed_text_templates)
        self.prompts_vision = hasattr(learner, "vision_prompts") and int(vision[1]) > 0

    #: a plug-in's prompt modifier (None: none): ``modifier(prompts, eot_idx, shared_prefix)`` returns the
    #: three edited (e.g. ATPrompt's attribute tokens inserted after SOS); ``modifier.cache_owner`` covers
    #: the learner's and the modifier's tensors for the evaluation text cache
    prompt_modifier = None

    def text_features(self):
        """Text features (K, d) of the current prompts (not normalised)."""
        prompts, deep_text = self.prompt_learner.text_prompts()
        # leading positions that are one tensor for every class (SOS + a generic context): computed once
        shared = getattr(self.prompt_learner, "shared_prefix_length", None)
        eot_idx = self.prompt_learner.eot_idx
        slots = None  # the deep text prompts' slots: the encoder's default (right after SOS)
        if self.prompt_modifier is not None:
            prompts, eot_idx, shared = self.prompt_modifier(prompts, eot_idx, shared)
            if deep_text and hasattr(self.prompt_modifier, "deep_prompt_slice"):  # e.g. behind inserted tokens
                slots = self.prompt_modifier.deep_prompt_slice(self.text_encoder.n_prompts)
        return self.text_encoder(prompts, eot_idx, deep_text, prompt_slice=slots, shared_prefix=shared)

    def class_text_features(self):
        """Text features used for the logits: cached during evaluation, or the fixed ones."""
        if self.fixed_text is not None:
            return self.fixed_text.text_features()
        owner = self.prompt_modifier.cache_owner if self.prompt_modifier is not None else None
        return self.cached_text_features(self.text_features, owner)

    def image_features(self, image):
        """Image features (B, d) with the learner's vision prompts (if any)."""
        if not self.prompts_vision:
            return self.image_encoder(image)
        ctx, deep_vision = self.prompt_learner.vision_prompts()
        return self.image_encoder(image, ctx, deep_vision)

    def forward(self, image):
        return self.logits(self.image_features(image), self.class_text_features())

    def logits_from_image_features(self, features):
        """Logits from the frozen, unprompted tower's features (the feature store's): the same as
        :meth:`forward` after the image pass. Only for models whose image tower is not prompted."""
        if self.prompts_vision:
            raise RuntimeError("this model prompts the image tower: its image features cannot come from a store")
        return self.logits(features, self.class_text_features())

    def set_classnames(self, classnames):
        """Rebuild every class-derived buffer: the learner's and those of every other child with
        ``set_classnames`` (the fixed text side, zero-shot heads a method adds)."""
        super().set_classnames(classnames)
        learnable = {id(m) for m in self.learnable_modules()}
        for child in self.children():
            if id(child) not in learnable and hasattr(child, "set_classnames"):
                child.set_classnames(classnames)


class IndependentPrompts(ClassPromptLearner):
    """Independent (uncoupled) deep text and vision prompts (IVLP's design, also PromptSRC's).

    Parameters (names as in the official IVLP code, so its checkpoints map onto them):
    ``ctx`` (N_t, d_t) shallow text context (MaPLe's init rule: with ``ctx_init`` and N_t <= 4 the
    first N_t tokens of the phrase, the rest of the phrase kept as frozen tokens; else N(0, 0.02^2)),
    ``deep_text_prompts[i-1]`` (N_t, d_t) for text blocks i = 1..J_t-1, and with ``depth_vision >= 1``
    ``vision_ctx`` (N_v, d_v) appended after the patch tokens plus ``deep_vision_prompts[i-1]``.
    """

    def __init__(self, clip_model, classnames, n_ctx_text=2, depth_text=9, n_ctx_vision=2, depth_vision=9,
                 ctx_init="a photo of a"):
        n_t, j_t = prompt_geometry(clip_model, n_ctx_text, depth_text, towers=("text",),
                                   n_arg="n_ctx_text", depth_arg="depth_text")
        n_v, j_v = prompt_geometry(clip_model, n_ctx_vision, depth_vision, towers=("vision",),
                                   allow_zero_depth=True, n_arg="n_ctx_vision", depth_arg="depth_vision")
        init = init_text_context(clip_model, n_t, ctx_init, rule="maple", where="n_ctx_text")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        dims = model_dims(clip_model)
        print("Independent V-L design")
        print(f'Initial text context: "{init.prefix}"')
        print(f"Number of context words (tokens) for Language prompting: {n_t}")
        print(f"Number of context words (tokens) for Vision prompting: {n_v if j_v > 0 else 0}")
        self.text_geometry = (n_t, j_t)
        self.vision_geometry = (n_v if j_v > 0 else 0, j_v)
        self.shared_prefix_length = 1 + n_t  # SOS + the generic context (deep prompts are shared too)
        self.ctx = nn.Parameter(init.vectors)
        self.deep_text_prompts = random_deep_prompts(j_t - 1, n_t, dims["d_text"])
        if j_v > 0:
            self.vision_ctx = nn.Parameter(random_prompt(n_v, dims["d_vision"]))
            self.deep_vision_prompts = random_deep_prompts(j_v - 1, n_v, dims["d_vision"])
        else:
            self.vision_ctx = None
            self.deep_vision_prompts = nn.ParameterList()

    @classmethod
    def from_cfg(cls, clip_model, classnames, node):
        """Built from a trainer's config node with IVLP's keys (``N_CTX_TEXT``, ``PROMPT_DEPTH_TEXT``,
        ``N_CTX_VISION``, ``PROMPT_DEPTH_VISION``, ``CTX_INIT``; IVLP and PromptSRC use the same ones)."""
        return cls(clip_model, classnames, n_ctx_text=node.N_CTX_TEXT, depth_text=node.PROMPT_DEPTH_TEXT,
                   n_ctx_vision=node.N_CTX_VISION, depth_vision=node.PROMPT_DEPTH_VISION, ctx_init=node.CTX_INIT)

    def text_prompts(self):
        return self.assemble(self.ctx), list(self.deep_text_prompts)

    def vision_prompts(self):
        return self.vision_ctx, list(self.deep_vision_prompts)


class VisionPrompts(nn.Module):
    """Deep vision prompts only (VPT-deep): ``vision_ctx`` (N, d_v) appended after the patch tokens and
    ``deep_vision_prompts[i-1]`` (N, d_v) for vision blocks i = 1..J-1 (all N(0, 0.02^2)).

    Carries the class names for the fixed text side (no learnable text)."""

    def __init__(self, clip_model, classnames, n_ctx=2, depth=1):
        super().__init__()
        n, j = prompt_geometry(clip_model, n_ctx, depth, towers=("vision",))
        d_v = model_dims(clip_model)["d_vision"]
        self.vision_geometry = (n, j)
        self.classnames = [clean_classname(c) for c in classnames]
        self.vision_ctx = nn.Parameter(random_prompt(n, d_v))
        self.deep_vision_prompts = random_deep_prompts(j - 1, n, d_v)

    def set_classnames(self, classnames):
        self.classnames = [clean_classname(c) for c in classnames]

    def vision_prompts(self):
        return self.vision_ctx, list(self.deep_vision_prompts)


__all__ += ["IndependentPrompts", "VisionPrompts"]
