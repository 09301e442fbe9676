"""MMA: Multi-Modal Adapter for Vision-Language Models (Yang, Zhang, Wang, Xie; CVPR 2024), on the vlprompt engine.

Official code: https://github.com/ZjjConan/Multi-Modal-Adapter (``trainers/mmadapter.py``, ``clip/model.py``,
``clip/gsl.py``, ``configs/trainers/MultiModalAdapter/*.yaml``; trainer ``MultiModalAdapter``). No prompts: the
text input is the fixed sentence ``TEXT_CTX_INIT + " " + name + "."`` ("a photo of a {name}."). MMA learns, for
every ``layer_index`` l in ``ADAPTER_START..ADAPTER_END`` (1-based: layer_index l is block l-1; the official
5..12 are the upper eight blocks of ViT-B/16):

* ``text_adapter.{l}``: ``down`` = Linear(d_t -> DIM) + ReLU, ``up`` = Linear(DIM -> d_t);
* ``visual_adapter.{l}``: the same at the image width d_v;
* ``shared_adapter.{l}``: Linear(DIM -> DIM) + ReLU, **one module used by both towers** at that layer.

In block l-1 of each tower the branch reads the block's **input** through the block's own ``ln_1`` and is added
to the block's **output** (``vlprompt.clip.prompted``, ``block_residual``)::

    y = GS(up(shared(down(ln_1(GS(x_in, s))))) * s, 1/s)        x_out = block(x_in) + y

with ``s = ADAPTER_SCALE`` (0.001) and ``GS(t, c)`` the identity whose backward multiplies the gradient by ``c``
(the official ``GradientScaleLayer``): the forward adds ``s`` times the adapter output, while the adapter's
parameters receive their gradient as if ``s`` were 1 and the gradient the branch sends into ``x_in`` is scaled by
``s``. Init (official order): per tower the Linears are built layer by layer (PyTorch's default init), then every
weight is redrawn ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` and every bias zeroed; text, then
vision, then shared. Logits ``exp(logit_scale) img_n @ txt_n^T``; loss CE; one optimiser over the adapters.

Deviations (docs/METHODS.md, MMA): evaluation text features are cached until an adapter changes (officially they
are cached at the first evaluation forward and never refreshed, so a second evaluation after more training reuses
stale features); logits are computed in fp32 under amp; with ``PREC fp16`` the adapters keep fp32 weights (the
frozen CLIP is fp16) and run on the fp16 activations cast to fp32. ``ADAPTER_START 0`` (an adapter on the token
embeddings / after ``ln_pre``, officially without gradient scaling; no official config uses it) is refused.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from vlprompt.clip import ArgError, PromptedCLIP, clean_classname, model_dims, tokenize
from vlprompt.clip.backbone import tower_kinds
from vlprompt.clip.prompt_init import token_embeddings
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard


class GradientScale(torch.autograd.Function):
    """Identity in the forward; multiplies the gradient by ``scale`` in the backward (official ``gsl.py``)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


def gradient_scale(x, scale):
    return GradientScale.apply(x, scale)


def build_adapter(d_model, n_layers, start, end, mid_dim, shared=False):
    """One tower's adapter list (official ``_build_adapter``): ``n_layers + 1`` entries indexed by layer_index,
    None outside ``start..end``; a down/up pair, or for the shared adapter (``mid_dim == d_model``) a single
    Linear + ReLU. Kaiming-normal (fan_out, relu) weights and zero biases, drawn after every Linear is built.

    Officially the single-layer form is chosen whenever ``mid_dim == d_model``, so a tower whose width equals
    ``ADAPTER_DIM`` would get an adapter without ``down``/``up`` and crash in its forward; here the towers always
    get the down/up pair (``shared=False``); only the shared adapter is the single layer."""
    adapter = [None] * (n_layers + 1)
    for i in range(start, end + 1):
        if shared:
            adapter[i] = nn.Sequential(nn.Linear(d_model, mid_dim), nn.ReLU())
        else:
            adapter[i] = nn.Sequential(OrderedDict([
                ("down", nn.Sequential(nn.Linear(d_model, mid_dim), nn.ReLU())),
                ("up", nn.Linear(mid_dim, d_model)),
            ]))
    adapter = nn.ModuleList(adapter)
    for m in adapter.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return adapter


class AdapterLearner(nn.Module):
    """Every learnable tensor of MMA (official name ``adapter_learner``; state_dict keys as the official
    checkpoints': ``text_adapter.{l}.down.0.weight``, ``visual_adapter.{l}.up.bias``, ``shared_adapter.{l}.0.weight``).
    Nothing in it depends on the classes."""

    def __init__(self, d_text, d_vision, text_layers, vision_layers, start=5, end=12, dim=32, scale=0.001):
        super().__init__()
        start, end, dim, scale = int(start), int(end), int(dim), float(scale)
        n = min(text_layers, vision_layers)
        if not 1 <= start <= end <= n:
            raise ArgError("start", f"the adapter layers must satisfy 1 <= ADAPTER_START <= ADAPTER_END <= {n} (the "
                                    f"layers of this backbone's towers, 1-based), got {start}..{end}; layer 0 (the "
                                    "input embeddings) is not supported")
        if dim < 1:
            raise ArgError("dim", f"the adapter dimension must be >= 1, got {dim}")
        if not scale > 0:
            raise ArgError("scale", f"the adapter scale must be > 0 (the gradient is scaled by its inverse), got {scale}")
        self.start, self.end = start, end
        self.text_adapter = build_adapter(d_text, text_layers, start, end, dim)
        self.visual_adapter = build_adapter(d_vision, vision_layers, start, end, dim)
        self.shared_adapter = build_adapter(dim, vision_layers, start, end, dim, shared=True)
        self.adapter_scale = scale

    def _branch(self, adapters, i, block, x):
        layer = i + 1  # the official layer_index of block i
        if layer >= len(adapters) or adapters[layer] is None:
            return None
        seq, shared, s = adapters[layer], self.shared_adapter[layer], self.adapter_scale
        y = gradient_scale(x, s)
        y = block.ln_1(y)
        y = seq.down(y.to(seq.up.weight.dtype))
        if shared is not None:
            y = shared(y)
        y = seq.up(y) * s
        y = gradient_scale(y, 1.0 / s)
        return y.to(x.dtype)

    def text_branch(self, i, block, x):
        """The text tower's ``block_residual`` (see :mod:`vlprompt.clip.prompted`)."""
        return self._branch(self.text_adapter, i, block, x)

    def visual_branch(self, i, block, x):
        """The image tower's ``block_residual``."""
        return self._branch(self.visual_adapter, i, block, x)


class MMACLIP(PromptedCLIP):
    """Frozen CLIP with MMA's adapters; ``forward(image)`` -> (B, K) fp32 logits.

    Args: ``clip_model`` (open_clip CLIP, ViT image tower), ``classnames``, ``text_ctx_init`` (the words before
    the class name), ``start``/``end``/``dim``/``scale``: ``ADAPTER_START``/``END``/``DIM``/``SCALE``.
    """

    def __init__(self, clip_model, classnames, text_ctx_init="a photo of a", start=5, end=12, dim=32, scale=0.001):
        text_kind, vision_kind = tower_kinds(clip_model)
        if not hasattr(clip_model, "transformer") or vision_kind != "clip_vit":
            raise ArgError("backbone", "MMA adds adapters inside the residual blocks of open_clip's CLIP towers; this "
                                       f"backbone's towers (text {text_kind}, image {vision_kind}) are not supported; "
                                       "supported backbones: open_clip CLIP ViTs (OpenAI / LAION / DFN / MetaCLIP, "
                                       "e.g. ViT-B/16)")
        super().__init__(clip_model)
        d = self.dims
        self.adapter_learner = AdapterLearner(d["d_text"], d["d_vision"], d["text_layers"], d["vision_layers"],
                                              start=start, end=end, dim=dim, scale=scale)
        self.text_ctx_init = str(text_ctx_init)
        object.__setattr__(self, "_clip_model", clip_model)  # referenced, not a child
        self.register_buffer("prompt_embeddings", None, persistent=False)
        self.register_buffer("eot_idx", None, persistent=False)
        self.set_classnames(classnames)

    def learnable_modules(self):
        return [self.adapter_learner]

    @torch.no_grad()
    def set_classnames(self, classnames):
        classnames = list(classnames)
        if not classnames:
            raise ArgError("classnames", "the class list is empty")
        self.classnames = [clean_classname(c) for c in classnames]
        sentences = [f"{self.text_ctx_init} {name}." for name in self.classnames]
        tokens = tokenize(sentences, self.dims["context_length"])
        self.prompt_embeddings = token_embeddings(self._clip_model, tokens)
        self.eot_idx = tokens.argmax(dim=-1).to(self.prompt_embeddings.device)
        self.text_cache.clear()

    def text_features(self):
        """Class text features (K, d_e) through the adapted text tower (not normalised)."""
        return self.text_encoder(self.prompt_embeddings, self.eot_idx,
                                 block_residual=self.adapter_learner.text_branch)

    def image_features(self, image):
        """Image features (B, d_e) through the adapted image tower (not normalised)."""
        return self.image_encoder(image, block_residual=self.adapter_learner.visual_branch)

    def forward(self, image):
        text = self.cached_text_features(self.text_features)
        return self.logits(self.image_features(image), text)


@TRAINER_REGISTRY.register()
class MMA(ClipPromptTrainer):
    """Multi-Modal Adapter (official trainer name ``MultiModalAdapter``)."""

    # official: run_examples.sh -> scripts/mmadapter/base2new_train.sh with vit_b16_ep5 (ImageNet vit_b16_ep5_imnet,
    # batch 128); xd_train.sh trains on ImageNet with the config given (the ImageNet one) and xd_test.sh evaluates
    # the other datasets / the ImageNet variants. No few-shot script: few-shot uses the base-to-novel recipe.
    CARD = MethodCard(
        config="vit_b16_ep5",
        recipes={"base2new": {"per_dataset": {"imagenet": "vit_b16_ep5_imnet"}},
                 "cross_dataset": "vit_b16_ep5_imnet",
                 "few_shot": {"per_dataset": {"imagenet": "vit_b16_ep5_imnet"}}},
        order=155,
        # adapters inside the residual blocks of open_clip CLIP towers
        backbones=dict(text=("causal",), vision=("clip_vit",), clip_towers=True),
        cfg_node="MMADAPTER",
        # the official train.py defaults (the shipped yamls set START 5, SCALE 0.001, TEXT_CTX_INIT "a photo of a")
        cfg_defaults=dict(TEXT_CTX_INIT="", PREC="amp", ADAPTER_START=4, ADAPTER_END=12, ADAPTER_DIM=32,
                          ADAPTER_SCALE=0.1),
        cfg_args={"start": "ADAPTER_START", "end": "ADAPTER_END", "dim": "ADAPTER_DIM", "scale": "ADAPTER_SCALE"},
        model_name="adapter_learner",  # the official registered model name
    )

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.MMADAPTER
        print(f'MMA text: "{m.TEXT_CTX_INIT} <class>."; adapters in layers {m.ADAPTER_START}..{m.ADAPTER_END} of both '
              f"towers, dimension {m.ADAPTER_DIM}, scale {m.ADAPTER_SCALE}")
        return MMACLIP(clip_model, classnames, text_ctx_init=m.TEXT_CTX_INIT, start=m.ADAPTER_START,
                       end=m.ADAPTER_END, dim=m.ADAPTER_DIM, scale=m.ADAPTER_SCALE)

    def learnable_module(self):
        return self.model.adapter_learner


__all__ = ["MMA", "MMACLIP", "AdapterLearner", "GradientScale", "gradient_scale", "build_adapter"]
