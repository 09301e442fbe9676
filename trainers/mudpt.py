"""MuDPT: Multi-modal Deep-symphysis Prompt Tuning (ICME'23, arXiv 2306.11400), and UMuDPT.

What is learned (``N = N_CTX``, ``J = DEEP_PROMPT_DEPTH``; ``d_t``/``d_v`` are read from the backbone):

* independent text prompts ``P_t^0`` (N, d_t) and ``P_t^{1..J-1}`` (J-1, N, d_t);
* independent vision prompts ``P_v^0`` (N, d_v) and ``P_v^{1..J-1}`` (J-1, N, d_v);
* an *injection* between the two modalities (``TRAINER.MUDPT.INJECTION``):

  - ``transformer`` (default; the paper's Injection Model, the public ``UUMuDPT`` class):
    ``I_tv`` = LayerNorm -> one pre-norm residual attention block (QuickGELU MLP 4x) -> LayerNorm ->
    Linear(d_t -> d_v), applied to ``stack[P_t^0..P_t^{J-1}]`` with attention over the N prompt
    tokens of each layer (sequence axis N, "batch" axis = layer); ``I_vt`` is the same at width d_v
    with a final Linear(d_v -> d_t), applied to ``stack[P_v^1..P_v^{J-1}]``.
  - ``linear`` (the public class named ``MuDPT``): ``g0_tv`` Linear(d_t -> d_v) for the vision input,
    one ``g_tv`` Linear(d_t -> d_v) shared by all deep vision layers and one ``g_vt``
    Linear(d_v -> d_t) shared by all deep text layers.

Effective prompts (docs/METHODS.md, MuDPT)::

    text   layer 0: P_t^0                     (no injection into the text input)
    text   layer i: P_t^i + I_vt(P_v)^i       i = 1..J-1
    vision layer 0: P_v^0 + I_tv(P_t)^0
    vision layer i: P_v^i + I_tv(P_t)^i       i = 1..J-1

Insertion is MaPLe's (text slots 1..N replaced at blocks 1..J-1; vision prompts appended after the
patches before ``ln_pre`` and replacing the last N tokens at blocks 1..J-1); it is done by the shared
prompted encoders (``vlprompt.clip.prompted``). ``CTX_INIT`` keeps only its first N words (MuDPT's
rule: "a photo" for N=2; unlike MaPLe no frozen "of a" stays in the prompt).

UMuDPT (one-directional, ``TRAINER.MUDPT.UNIDIRECTIONAL True`` or the ``UMuDPT`` trainer): text
prompts as above, vision prompts are only ``I_tv(stack[P_t^0..P_t^{J-1}])`` (transformer injection;
no independent vision prompts, no vision-to-text injection).

Only the prompt learner (prompts + injection weights) is registered, so checkpoints hold only the
learned state; class-derived token buffers are non-persistent and are rebuilt for the current class
list, so a checkpoint loads onto another label space (base -> new, ImageNet -> other datasets).

Precision: all learnable weights are fp32 master copies; prompts are cast to the activation dtype at
insertion. ``fp32`` (the authors' effective setting), ``amp``/``bf16`` (fp32 weights, autocast) and
``fp16`` (frozen CLIP in fp16, injection weights and prompts in fp32) all work; the public code's
fp16/fp32 mix failure (docs/METHODS.md, MuDPT: precision) cannot happen because the injection modules never live
inside the converted CLIP.
"""
from collections import OrderedDict
from dataclasses import replace

import torch
import torch.nn as nn

from vlprompt.clip import (
    ArgError,
    ClassPromptLearner,
    DeepPromptedCLIP,
    init_text_context,
    model_dims,
    prompt_geometry,
    random_prompt,
)
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.methods import MethodCard
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.errors import InvalidValueError, UserRuntimeError

__all__ = [
    "QuickGELU",
    "InjectionBlock",
    "InjectionModel",
    "LinearInjection",
    "TransformerInjection",
    "injection_heads",
    "MuDPTPromptLearner",
    "mudpt_clip",
    "MuDPT",
    "UMuDPT",
]

INJECTIONS = ("transformer", "linear")


# ------------------------------------------------------------------------------------------------
# injection modules
# ------------------------------------------------------------------------------------------------


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, CLIP's activation."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class InjectionBlock(nn.Module):
    """One pre-norm residual attention block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    Input/output (B, S, d) with batch first; no attention mask (every prompt token sees every other
    prompt token of the same layer). MLP: Linear(d, 4d) -> QuickGELU -> Linear(4d, d).
    """

    def __init__(self, width, heads, mlp_ratio=4):
        super().__init__()
        if heads < 1 or width % heads != 0:
            raise ValueError(f"Injection block: width {width} is not divisible into {heads} attention heads")
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class InjectionModel(nn.Module):
    """The paper's Injection Model: LayerNorm -> :class:`InjectionBlock` -> LayerNorm -> Linear.

    ``forward(prompts)``: (L, N, d_in) -> (L, N, d_out). Attention runs over the ``N`` prompt tokens
    of each layer separately (sequence axis N, "batch" axis = layer index), as in the public code.
    """

    def __init__(self, d_in, d_out, heads, mlp_ratio=4):
        super().__init__()
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.ln_pre = nn.LayerNorm(d_in)
        self.block = InjectionBlock(d_in, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(d_in)
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, prompts):
        if prompts.dim() != 3 or prompts.shape[-1] != self.d_in:
            raise ValueError(f"Injection model: expected (L, N, {self.d_in}) prompts, got {tuple(prompts.shape)}")
        x = self.ln_pre(prompts)
        x = self.block(x)
        x = self.ln_post(x)
        return self.proj(x)


def injection_heads(width, backbone_width, backbone_heads):
    """Attention heads for an injection block of ``width``: the backbone's head width is kept
    (``width / (backbone_width / backbone_heads)``: 8 heads at 512 and 12 at 768 for ViT-B/16)."""
    head_width = backbone_width // backbone_heads
    if head_width < 1 or width % head_width != 0:
        raise InvalidValueError(
            f"Cannot derive injection attention heads: width {width} is not a multiple of the backbone's "
            f"head width {head_width}"
        )
    return width // head_width


class TransformerInjection(nn.Module):
    """Transformer injection (paper / public ``UUMuDPT``): ``tv`` = I_tv (d_t -> d_v) and, unless
    ``unidirectional``, ``vt`` = I_vt (d_v -> d_t).

    * :meth:`text_to_vision` ``(P_t^0 (N, d_t), P_t^{1..J-1} (J-1, N, d_t) or None)`` ->
      ``(Î_tv^0 (N, d_v), Î_tv^{1..J-1} (J-1, N, d_v) or None)``; all J layers go through one call.
    * :meth:`vision_to_text` ``(P_v^{1..J-1} (J-1, N, d_v))`` -> (J-1, N, d_t).
    """

    def __init__(self, d_text, d_vision, text_heads, vision_heads, unidirectional=False):
        super().__init__()
        self.tv = InjectionModel(d_text, d_vision, text_heads)
        self.vt = None if unidirectional else InjectionModel(d_vision, d_text, vision_heads)

    def text_to_vision(self, shallow, deep):
        stack = shallow.unsqueeze(0) if deep is None else torch.cat([shallow.unsqueeze(0), deep], dim=0)
        out = self.tv(stack)
        return out[0], (out[1:] if deep is not None else None)

    def vision_to_text(self, deep):
        if self.vt is None:
            raise RuntimeError("This injection is one-directional (UMuDPT): no vision-to-text injection")
        return self.vt(deep)


class LinearInjection(nn.Module):
    """Linear injection (the public class named ``MuDPT``, docs/METHODS.md, MuDPT).

    ``embed_projection`` = g0_tv Linear(d_t -> d_v) for the vision input, ``deep_projections`` = one
    g_tv Linear(d_t -> d_v) shared across deep vision layers, ``visual_ctx_deep_projections`` = one
    g_vt Linear(d_v -> d_t) shared across deep text layers (official parameter names).
    """

    def __init__(self, d_text, d_vision):
        super().__init__()
        self.embed_projection = nn.Linear(d_text, d_vision)
        self.deep_projections = nn.Linear(d_text, d_vision)
        self.visual_ctx_deep_projections = nn.Linear(d_vision, d_text)

    def text_to_vision(self, shallow, deep):
        return self.embed_projection(shallow), (self.deep_projections(deep) if deep is not None else None)

    def vision_to_text(self, deep):
        return self.visual_ctx_deep_projections(deep)


# ------------------------------------------------------------------------------------------------
# prompt learner and model
# ------------------------------------------------------------------------------------------------


def _random_stack(count, n, dim):
    """(count, n, dim) fp32 tensor drawn from N(0, 0.02^2)."""
    return random_prompt(count * n, dim).reshape(count, n, dim)


class MuDPTPromptLearner(ClassPromptLearner):
    """Learned state of MuDPT / UMuDPT: prompts and injection weights (nothing else).

    Parameters (official names): ``ctx`` P_t^0 (N, d_t); ``deep_prompts`` P_t^{1..J-1} (J-1, N, d_t);
    unless ``unidirectional``: ``visual_ctx`` P_v^0 (N, d_v) and ``visual_ctx_deep_prompts``
    P_v^{1..J-1} (J-1, N, d_v); ``injection``: :class:`TransformerInjection` or :class:`LinearInjection`.
    With ``J = 1`` there are no deep prompts (``deep_prompts`` and ``visual_ctx_deep_prompts`` are None).

    Args:
        clip_model: the frozen open_clip CLIP (referenced, never registered).
        classnames: the current label space.
        n_ctx, depth, ctx_init: ``N``, ``J`` and the init phrase (first N words kept).
        injection: ``"transformer"`` or ``"linear"``.
        unidirectional: UMuDPT (requires ``injection == "transformer"``).
    """

    def __init__(self, clip_model, classnames, n_ctx, depth, ctx_init="", injection="transformer",
                 unidirectional=False):
        injection = str(injection).lower()
        if injection not in INJECTIONS:
            raise ArgError("injection", f"must be one of {INJECTIONS}, got '{injection}'")
        if unidirectional and injection != "transformer":
            raise ArgError(
                "unidirectional",
                f"UMuDPT (one-directional) uses the transformer injection; INJECTION '{injection}' with "
                "one-directional injection is not a published variant. Set INJECTION transformer.",
            )
        n_ctx, depth = prompt_geometry(clip_model, n_ctx, depth)
        dims = model_dims(clip_model)
        init = init_text_context(clip_model, n_ctx, ctx_init, rule="mudpt")
        super().__init__(clip_model, classnames, init.prefix, init.n_ctx)
        d_t, d_v = dims["d_text"], dims["d_vision"]
        self.d_text, self.d_vision = d_t, d_v
        self.depth = depth
        self.shared_prefix_length = 1 + n_ctx  # SOS + P_t^0 (deep prompts are shared over classes too)
        self.injection_type = injection
        self.unidirectional = bool(unidirectional)
        self.init_from_phrase = init.from_phrase

        self.ctx = nn.Parameter(init.vectors.clone())
        self.deep_prompts = nn.Parameter(_random_stack(depth - 1, n_ctx, d_t)) if depth > 1 else None
        if self.unidirectional:
            self.visual_ctx = None
            self.visual_ctx_deep_prompts = None
        else:
            self.visual_ctx = nn.Parameter(random_prompt(n_ctx, d_v))
            self.visual_ctx_deep_prompts = nn.Parameter(_random_stack(depth - 1, n_ctx, d_v)) if depth > 1 else None
        if injection == "transformer":
            self.injection = TransformerInjection(
                d_t, d_v,
                text_heads=injection_heads(d_t, d_t, dims["text_heads"]),
                vision_heads=injection_heads(d_v, d_v, dims["vision_heads"]),
                unidirectional=self.unidirectional,
            )
        else:
            self.injection = LinearInjection(d_t, d_v)

    def text_prompts(self):
        """``(prompts (K, text_length, d_t), deep)``: the input sequence (P_t^0 in slots 1..N, no
        injection) and the J-1 deep text prompts ``P_t^i + Î_vt^i`` (UMuDPT: ``P_t^i``), or None."""
        prompts = self.assemble(self.ctx)
        if self.deep_prompts is None:
            return prompts, None
        deep = self.deep_prompts
        if not self.unidirectional:
            deep = deep + self.injection.vision_to_text(self.visual_ctx_deep_prompts)
        return prompts, list(deep.unbind(0))

    def vision_prompts(self):
        """``(v0 (N, d_v), deep)``: ``P_v^0 + Î_tv^0`` and the J-1 deep vision prompts
        ``P_v^i + Î_tv^i`` (UMuDPT: ``Î_tv`` only), or None when J = 1."""
        inj0, inj_deep = self.injection.text_to_vision(self.ctx, self.deep_prompts)
        if self.unidirectional:
            v0, deep = inj0, inj_deep
        else:
            v0 = self.visual_ctx + inj0
            deep = self.visual_ctx_deep_prompts + inj_deep if inj_deep is not None else None
        return v0, (list(deep.unbind(0)) if deep is not None else None)


def mudpt_clip(clip_model, classnames, n_ctx, depth, ctx_init="", injection="transformer", unidirectional=False):
    """Frozen CLIP + :class:`MuDPTPromptLearner` (a :class:`vlprompt.clip.DeepPromptedCLIP`);
    ``forward(image) -> logits (B, K)`` (fp32)."""
    learner = MuDPTPromptLearner(clip_model, classnames, n_ctx, depth, ctx_init, injection, unidirectional)
    geometry = (learner.n_ctx, learner.depth)
    return DeepPromptedCLIP(clip_model, learner, text=geometry, vision=geometry)


# ------------------------------------------------------------------------------------------------
# trainers
# ------------------------------------------------------------------------------------------------


@TRAINER_REGISTRY.register()
class MuDPT(ClipPromptTrainer):
    """MuDPT trainer (``TRAINER.MUDPT``); checkpoints under ``MultimodalDeepPromptTuning/``.

    ``TRAINER.MUDPT.INJECTION`` picks the transformer (default) or linear injection;
    ``TRAINER.MUDPT.UNIDIRECTIONAL True`` gives UMuDPT from the same code.
    """

    CARD = MethodCard(
        config="vit_b16_bz4_ep10_nctx4_depth9",
        recipes={"cross_dataset": "vit_b16_bz4_ep10_nctx4_depth9_cross_datasets"},
        order=80,
        backbones=PROMPTABLE_VISION,  # vision prompts: transformer image towers only
        cfg_node="MUDPT",
        cfg_defaults={
            "N_CTX": 2,  # official train.py default; the configs use 4 (or 2)
            "CTX_INIT": "a photo of a",  # only the first N_CTX words are used (MuDPT's rule)
            "DEEP_PROMPT_DEPTH": 8,  # official train.py default; the configs use 9
            # The official default says fp16, but every official run loaded CLIP through clip.load(...,
            # device="cpu"), which calls model.float() (docs/METHODS.md, MuDPT): effectively fp32.
            "PREC": "fp32",
            "INJECTION": "transformer",  # transformer (paper's Injection Model) | linear (public MuDPT class)
            "UNIDIRECTIONAL": False,  # True: UMuDPT (text-to-vision transformer injection only)
        },
        cfg_args={"n_ctx": "N_CTX", "depth": "DEEP_PROMPT_DEPTH", "ctx_init": "CTX_INIT", "injection": "INJECTION",
                  "unidirectional": "UNIDIRECTIONAL"},
        model_name="MultimodalDeepPromptTuning",
    )
    LOG_ACC = True  # the official MuDPT trainer logs training accuracy

    @classmethod
    def variant(cls, node):
        """``(injection, unidirectional)`` for the config node."""
        return str(node.INJECTION).lower(), bool(node.UNIDIRECTIONAL)

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        node = cfg.TRAINER[cls.CFG_NODE]
        injection, unidirectional = cls.variant(node)
        name = "UMuDPT (one-directional)" if unidirectional else "MuDPT"
        print(f"{name}: injection={injection}, N_CTX={node.N_CTX}, DEEP_PROMPT_DEPTH={node.DEEP_PROMPT_DEPTH}")
        model = mudpt_clip(clip_model, classnames, node.N_CTX, node.DEEP_PROMPT_DEPTH, node.CTX_INIT,
                           injection=injection, unidirectional=unidirectional)
        learner = model.prompt_learner
        print(f'Initial context: "{learner.prompt_prefix}"')
        print(f"Number of context words (tokens): {learner.n_ctx}")
        print(f"Depth of deep prompt: {learner.depth}")
        return model

    def convert_legacy_state_dict(self, state_dict):
        own = set(self.learnable_module().state_dict().keys())
        official = ("mudpt_prompt_learner.", "umudpt_prompt_learner.", "uumudpt_prompt_learner.")
        if not own & set(state_dict) and any(k.startswith(official) for k in state_dict):
            raise UserRuntimeError(
                "This checkpoint has the layout of the official MuDPT repository (a whole CustomCLIP with "
                "'*mudpt_prompt_learner.' keys and vision parameters inside the image encoder). Its layout "
                "changed between the repository's commits, so it is not converted; retrain with vlprompt."
            )
        return super().convert_legacy_state_dict(state_dict)


@TRAINER_REGISTRY.register()
class UMuDPT(MuDPT):
    """UMuDPT (one-directional MuDPT, ``TRAINER.UMUDPT``): text prompts P_t^0..P_t^{J-1} and a
    text-to-vision Injection Model; the vision prompts are ``I_tv(stack[P_t])`` only. Same code as
    ``MuDPT`` with ``UNIDIRECTIONAL True``; checkpoints under ``UnifiedMultimodalDeepPromptTuning/``
    (official name)."""

    CARD = replace(
        MuDPT.CARD,
        config="vit_b16_bz4_ep5_nctx2_depth9",
        recipes={},
        protocols=("base2new", "few_shot"),
        order=85,
        cfg_node="UMUDPT",
        cfg_defaults={"N_CTX": 2, "CTX_INIT": "a photo of a", "DEEP_PROMPT_DEPTH": 9, "PREC": "fp32"},
        cfg_args={"n_ctx": "N_CTX", "depth": "DEEP_PROMPT_DEPTH", "ctx_init": "CTX_INIT"},
        model_name="UnifiedMultimodalDeepPromptTuning",
    )
    LOG_ACC = False  # the official UMuDPT trainer logs only the loss

    @classmethod
    def variant(cls, node):
        return "transformer", True
