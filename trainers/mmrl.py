"""MMRL: Multi-Modal Representation Learning (Guo, Gu; CVPR 2025), on the vlprompt engine.

Official code: https://github.com/yunncheng/MMRL (``trainers/mmrl.py``, ``clip/model_mmrl.py``,
``trainers/config.py``, ``configs/trainers/MMRL/*.yaml``, ``scripts/mmrl/*.sh``). MMRL learns

* ``representation_learner.compound_rep_tokens`` R (N, REP_DIM): N(0, 0.02^2) representation tokens
  shared by both towers;
* ``representation_learner.compound_rep_tokens_r2tproj.{k}`` / ``..._r2vproj.{k}``: one Linear
  (REP_DIM -> d_t) and one (REP_DIM -> d_v) per representation layer ``REP_LAYERS[k]`` (1-based; the
  official [6..12] are blocks 5..11). The copies start **identical** (the official code deep-copies one
  Linear with PyTorch's default init);
* ``image_encoder.proj_rep`` (d_v, d_e): the representation head's projection, random
  ``d_v^-0.5 * N(0, 1)`` (CLIP's init rule for ``proj``; not a copy of the frozen ``proj``).

At the first representation layer the projected tokens are **inserted**: text right after SOS (the
sequence grows by N, the causal mask is rebuilt over the new length, the EOT feature is read at
``argmax(ids) + N``), vision after the patch tokens (attention without a mask is permutation
equivariant, so this equals the official position after the class token up to float rounding); at
the later listed layers they **replace** those N tokens; no positional embedding on them
(``vlprompt.clip.prompted``, ``insert=``). The text prompt is the dataset's fixed hand-crafted template
(CoOp's table, the official ``CUSTOM_TEMPLATES``); nothing learnable on the text side but R's
projections.

Heads (logit scale **100, hard-coded** officially, not CLIP's ``logit_scale``):
``logits = 100 img_n @ txt_n^T`` (class token: ``ln_post(x_cls) @ proj``, frozen) and
``logits_rep = 100 rep_n @ txt_n^T`` (``rep = mean_N ln_post(x_rep) @ proj_rep``);
``fusion = ALPHA logits + (1 - ALPHA) logits_rep``. Evaluation uses ``fusion`` where the official
``test()`` does, and the class-token ``logits`` elsewhere (:func:`uses_rep_head`): TASK B2N: fusion only
with ``DATASET.SUBSAMPLE_CLASSES base`` (novel classes and "all": class token); FS: fusion; CD: fusion
only on ``DATASET.NAME ImageNet`` (the source; cross-dataset and DG targets: class token).

Loss (official ``MMRL_Loss``), terms named and logged: ``ce`` = ALPHA CE(logits), ``ce_rep`` =
(1 - ALPHA) CE(logits_rep), ``reg_image`` = W (1 - mean cos(img_n, zs_img_n)), ``reg_text`` = W (1 -
mean cos(txt_n, zs_txt_n)) with ``F.cosine_similarity(dim=1)`` (eps 1e-8), the zero-shot features from
the frozen, unprompted CLIP (same template) and W = ``REG_WEIGHT``.

Config ``TRAINER.MMRL.{ALPHA=0.7, REG_WEIGHT=1.0, REP_LAYERS=[6..12], REP_DIM=512, N_REP_TOKENS=5,
PREC="fp16", DATASET_CONFIG=True}`` and the top-level ``TASK`` ("B2N", "CD" or "FS"; the official
extra key). ``DATASET_CONFIG``: the official ``get_dataset_specified_config`` per-dataset values
(:data:`MMRL_DATASET_CONFIG`) replace ``REG_WEIGHT`` / ``REP_DIM`` for the listed datasets (printed;
``False`` keeps the config's values). Deviations (docs/METHODS.md, MMRL): ``REP_LAYERS`` defaults to
[6..12] (officially [], which crashes; every official config sets [6..12]); the per-dataset values
are applied by the trainer after the config is merged, so they win over command-line options too
(officially options given after them win: set ``DATASET_CONFIG False`` to use your own values, as
``vit_b16_cross_datasets.yaml`` does); logits and losses are computed in fp32 under amp (officially
in fp16 under autocast); text features are cached during evaluation until a learnable tensor changes
(officially cached at the first evaluation forward and never refreshed).
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import (
    ArgError,
    PromptedCLIP,
    ZeroShotHead,
    clean_classname,
    get_template,
    model_dims,
    tokenize,
)
from vlprompt.clip.backbone import tower_kinds
from vlprompt.clip.prompt_init import token_embeddings
from vlprompt.config import ConfigError, register_cfg_extension
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard

#: the official per-dataset values (``trainers/config.py``, ``get_dataset_specified_config``, MMRL part:
#: the same for every TASK)
MMRL_DATASET_CONFIG = {
    "StanfordCars": {"REG_WEIGHT": 7.0},
    "FGVCAircraft": {"REG_WEIGHT": 6.0},
    "SUN397": {"REG_WEIGHT": 6.0},
    "DescribableTextures": {"REG_WEIGHT": 6.0},
    "Food101": {"REG_WEIGHT": 5.0},
    "OxfordFlowers": {"REG_WEIGHT": 4.0},
    "UCF101": {"REG_WEIGHT": 3.0},
    "ImageNet": {"REG_WEIGHT": 0.5},
    "Caltech101": {"REG_WEIGHT": 0.5},
    "OxfordPets": {"REG_WEIGHT": 0.2},
    "EuroSAT": {"REP_DIM": 2048, "REG_WEIGHT": 0.01},
}

#: the official TASK values
TASKS = ("B2N", "CD", "FS")

#: the official hard-coded logit scale
LOGIT_SCALE = 100.0


@register_cfg_extension
def extend_cfg_mmrl_task(cfg):
    """The official top-level ``TASK`` key (train.py's ``extend_cfg``): which evaluation head to use."""
    if "TASK" not in cfg:
        cfg.TASK = "B2N"


def dataset_specified_config(dataset_name):
    """The official per-dataset ``TRAINER.MMRL`` values of ``DATASET.NAME`` (``{}`` when none)."""
    return dict(MMRL_DATASET_CONFIG.get(dataset_name, {}))


def mmrl_settings(cfg):
    """The values this run uses: ``{"REG_WEIGHT", "REP_DIM", "changed"}`` (``changed``: the keys the
    official per-dataset table set, ``{key: (config value, used value)}``)."""
    m = cfg.TRAINER.MMRL
    used = {"REG_WEIGHT": float(m.REG_WEIGHT), "REP_DIM": int(m.REP_DIM)}
    changed = {}
    if m.DATASET_CONFIG:
        for key, value in dataset_specified_config(cfg.DATASET.NAME).items():
            value = type(used[key])(value)
            if value != used[key]:
                changed[key] = (used[key], value)
            used[key] = value
    used["changed"] = changed
    return used


def uses_rep_head(cfg):
    """Whether evaluation uses the fused output (the representation head) or the class-token logits,
    as the official ``MMRL.test``: B2N: base classes only; FS: always; CD: on ImageNet only."""
    task = str(cfg.TASK)
    if task not in TASKS:
        raise ConfigError(f"TASK must be one of {list(TASKS)} (MMRL's evaluation protocol: base-to-novel, "
                          f"cross-dataset / domain generalisation, few-shot), got '{task}'")
    if task == "B2N":
        return cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    if task == "FS":
        return True
    return cfg.DATASET.NAME == "ImageNet"


def check_rep_layers(rep_layers, n_layers):
    """``REP_LAYERS`` (1-based, strictly increasing, within both towers) as a list of ints."""
    try:
        layers = [int(x) for x in rep_layers]
    except (TypeError, ValueError):
        raise ArgError("rep_layers", f"expected a list of layer numbers, got {rep_layers!r}") from None
    if not layers:
        raise ArgError("rep_layers", f"give the layers that receive representation tokens (1-based), e.g. "
                                     f"[6, 7, ..., {n_layers}] as the official configs")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ArgError("rep_layers", f"the layers must be strictly increasing (the tokens are inserted at the "
                                     f"first one and replaced at the others), got {layers}")
    if layers[0] < 1 or layers[-1] > n_layers:
        raise ArgError("rep_layers", f"layers are numbered 1..{n_layers} on this backbone (1-based, as "
                                     f"officially), got {layers}")
    return layers


class MultiModalRepresentationLearner(nn.Module):
    """The shared representation tokens and their per-layer projections (official names and init).

    ``forward()`` -> ``(text_tokens, vision_tokens)``: lists with one (N, d_t) / (N, d_v) tensor per
    representation layer.
    """

    def __init__(self, n_rep_tokens, rep_dim, d_text, d_vision, n_rep_layers):
        super().__init__()
        self.compound_rep_tokens = nn.Parameter(torch.empty(int(n_rep_tokens), int(rep_dim)))
        nn.init.normal_(self.compound_rep_tokens, std=0.02)
        r2v = nn.Linear(int(rep_dim), d_vision)
        r2t = nn.Linear(int(rep_dim), d_text)
        # deep copies of one Linear: every layer's projection starts from the same weights (official)
        self.compound_rep_tokens_r2vproj = nn.ModuleList([copy.deepcopy(r2v) for _ in range(n_rep_layers)])
        self.compound_rep_tokens_r2tproj = nn.ModuleList([copy.deepcopy(r2t) for _ in range(n_rep_layers)])

    def forward(self):
        r = self.compound_rep_tokens
        text = [proj(r) for proj in self.compound_rep_tokens_r2tproj]
        vision = [proj(r) for proj in self.compound_rep_tokens_r2vproj]
        return text, vision


class RepresentationProjection(nn.Module):
    """Holds ``proj_rep`` (d_v, d_e), the representation head's projection (officially a parameter of
    the image encoder, hence the module name ``image_encoder`` in :class:`MMRLLearner`)."""

    def __init__(self, d_vision, d_embed):
        super().__init__()
        self.proj_rep = nn.Parameter(d_vision ** -0.5 * torch.randn(d_vision, d_embed))


class MMRLLearner(nn.Module):
    """Every learnable tensor of MMRL; its state_dict keys are the official checkpoint's
    (``representation_learner.*``, ``image_encoder.proj_rep``). Nothing in it depends on the classes."""

    def __init__(self, clip_model, n_rep_tokens=5, rep_layers=(6, 7, 8, 9, 10, 11, 12), rep_dim=512):
        super().__init__()
        dims = model_dims(clip_model)
        n_layers = min(dims["text_layers"], dims["vision_layers"])
        self.rep_layers = check_rep_layers(rep_layers, n_layers)
        if int(n_rep_tokens) < 1:
            raise ArgError("n_rep_tokens", f"the number of representation tokens must be >= 1, got {n_rep_tokens}")
        if int(rep_dim) < 1:
            raise ArgError("rep_dim", f"the representation dimension must be >= 1, got {rep_dim}")
        self.n_rep_tokens = int(n_rep_tokens)
        # the official order of initialisation: proj_rep (built with the CLIP model), then the learner
        self.image_encoder = RepresentationProjection(dims["d_vision"], dims["d_embed"])
        self.representation_learner = MultiModalRepresentationLearner(
            n_rep_tokens, rep_dim, dims["d_text"], dims["d_vision"], len(self.rep_layers))

    @property
    def insert_block(self):
        """The 0-based block at whose input the tokens are inserted."""
        return self.rep_layers[0] - 1

    def schedule(self, tokens):
        """``(insert, deep)`` for an encoder: ``insert=(first block, tokens[0])`` and the deep-prompt list
        with ``tokens[k]`` at block ``REP_LAYERS[k] - 1`` (None elsewhere)."""
        blocks = [layer - 1 for layer in self.rep_layers]
        deep = [None] * blocks[-1]
        for block, t in zip(blocks[1:], tokens[1:]):
            deep[block - 1] = t
        return (blocks[0], tokens[0]), deep


def _unit(x):
    """``x / |x|`` in fp32 (the official normalisation)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


class MMRLCLIP(PromptedCLIP):
    """Frozen CLIP with MMRL's representation tokens; ``forward(image)`` -> the evaluation logits.

    Args:
        clip_model: the frozen open_clip CLIP (ViT image tower, built-in text transformer).
        classnames: K class names; template: the fixed text prompt (one ``{}``).
        n_rep_tokens, rep_layers, rep_dim: ``N_REP_TOKENS``, ``REP_LAYERS`` (1-based), ``REP_DIM``.
        alpha: ``ALPHA``, the weight of the class-token logits in the fusion.
        use_rep_head: evaluation output: the fusion (True) or the class-token logits (False).
    """

    def __init__(self, clip_model, classnames, template, n_rep_tokens=5, rep_layers=(6, 7, 8, 9, 10, 11, 12),
                 rep_dim=512, alpha=0.7, use_rep_head=True):
        text_kind, vision_kind = tower_kinds(clip_model)
        if not hasattr(clip_model, "transformer") or vision_kind != "clip_vit":
            raise ArgError("backbone", "MMRL inserts its tokens into the towers of open_clip's CLIP class; this "
                                       f"backbone's towers (text {text_kind}, image {vision_kind}) do not take "
                                       "inserted tokens; supported backbones: open_clip CLIP ViTs (OpenAI / LAION / "
                                       "DFN / MetaCLIP, e.g. ViT-B/16)")
        learner = MMRLLearner(clip_model, n_rep_tokens, rep_layers, rep_dim)
        depth = learner.rep_layers[-1]  # deep prompts up to block REP_LAYERS[-1] - 1
        n = learner.n_rep_tokens
        super().__init__(clip_model, text_prompts=(n, depth), vision_prompts=(n, depth))
        if "{}" not in template:
            raise ArgError("template", f'must contain "{{}}", got "{template}"')
        self.prompt_learner = learner
        self.template = template
        self.alpha = float(alpha)
        self.use_rep_head = bool(use_rep_head)
        object.__setattr__(self, "_clip_model", clip_model)  # referenced, not a child
        self.zero_shot = ZeroShotHead(clip_model, classnames, template)
        self.register_buffer("prompt_embeddings", None, persistent=False)
        self.register_buffer("eot_idx", None, persistent=False)
        self.set_classnames(classnames)

    @torch.no_grad()
    def set_classnames(self, classnames):
        classnames = list(classnames)
        if not classnames:
            raise ArgError("classnames", "the class list is empty")
        clip_model = self._clip_model
        self.classnames = [clean_classname(c) for c in classnames]
        tokens = tokenize([self.template.format(c) for c in self.classnames], self.dims["context_length"])
        self.prompt_embeddings = token_embeddings(clip_model, tokens)
        self.eot_idx = tokens.argmax(dim=-1).to(self.prompt_embeddings.device)
        self.zero_shot.set_classnames(classnames)
        self.text_cache.clear()

    def text_features(self, text_tokens=None):
        """Class text features (K, d_e), not normalised; ``text_tokens``: the learner's text tokens
        (computed here when not given)."""
        if text_tokens is None:
            text_tokens = self.prompt_learner.representation_learner()[0]
        insert, deep = self.prompt_learner.schedule(text_tokens)
        return self.text_encoder(self.prompt_embeddings, self.eot_idx, deep, insert=insert)

    def image_features(self, image, vision_tokens=None):
        """``(class-token features, representation features)`` (B, d_e) each, not normalised."""
        if vision_tokens is None:
            vision_tokens = self.prompt_learner.representation_learner()[1]
        insert, deep = self.prompt_learner.schedule(vision_tokens)
        cls, rep_tokens = self.image_encoder(image, deep_prompts=deep, insert=insert, return_prompt_tokens=True)
        proj_rep = self.prompt_learner.image_encoder.proj_rep
        rep = rep_tokens.mean(dim=1) @ proj_rep.to(rep_tokens.dtype)
        return cls, rep

    def forward_all(self, image):
        """``(logits, logits_rep, logits_fusion, img_n, txt_n)`` (fp32), as the official CustomCLIP."""
        text_tokens, vision_tokens = self.prompt_learner.representation_learner()
        text = self.cached_text_features(lambda: self.text_features(text_tokens))
        cls, rep = self.image_features(image, vision_tokens)
        with torch.autocast(device_type=cls.device.type, enabled=False):
            img_n, rep_n, txt_n = _unit(cls), _unit(rep), _unit(text)
            # the official order: the scale multiplies the image features first
            logits = LOGIT_SCALE * img_n @ txt_n.t()
            logits_rep = LOGIT_SCALE * rep_n @ txt_n.t()
            fusion = self.alpha * logits + (1 - self.alpha) * logits_rep
        return logits, logits_rep, fusion, img_n, txt_n

    def forward(self, image):
        logits, _, fusion, _, _ = self.forward_all(image)
        return fusion if self.use_rep_head else logits

    def zero_shot_features(self, image):
        """``(zs_img_n (B, d_e), zs_txt_n (K, d_e))``: the frozen, unprompted CLIP's normalised features
        (text in fp32 outside autocast, computed once per class list)."""
        with torch.autocast(device_type=image.device.type, enabled=False):
            zs_txt = self.zero_shot.text_features()
        zs_img = self.zero_shot.image_features(image)
        with torch.autocast(device_type=image.device.type, enabled=False):
            return _unit(zs_img), zs_txt.float()


@TRAINER_REGISTRY.register()
class MMRL(ClipPromptTrainer):
    """Multi-Modal Representation Learning."""

    # official: base_to_novel.sh -> scripts/mmrl/base2new_*.sh (vit_b16, ImageNet vit_b16_imagenet),
    # cross_datasets.sh -> scripts/mmrl/cross_datasets_*.sh (vit_b16_cross_datasets: ImageNet source, the
    # other datasets and the ImageNet variants as targets), few_shot.sh -> scripts/mmrl/few_shot.sh
    # (vit_b16_few_shot, ImageNet vit_b16_imagenet with TASK FS: vit_b16_imagenet_few_shot here)
    CARD = MethodCard(
        config="vit_b16",
        recipes={"base2new": {"per_dataset": {"imagenet": "vit_b16_imagenet"}},
                 "cross_dataset": "vit_b16_cross_datasets",
                 "few_shot": {"config": "vit_b16_few_shot", "per_dataset": {"imagenet": "vit_b16_imagenet_few_shot"}}},
        order=140,
        # tokens inserted at a later block of open_clip CLIP ViT towers
        backbones=dict(text=("causal",), vision=("clip_vit",), clip_towers=True),
        cfg_node="MMRL",
        # official train.py defaults, except REP_LAYERS ([] there, which crashes; every official config sets
        # [6..12]); DATASET_CONFIG switches the official per-dataset table (trainers/config.py) on
        cfg_defaults=dict(ALPHA=0.7, REG_WEIGHT=1.0, REP_LAYERS=[6, 7, 8, 9, 10, 11, 12], REP_DIM=512,
                          N_REP_TOKENS=5, PREC="fp16", DATASET_CONFIG=True),
        cfg_args={"rep_layers": "REP_LAYERS", "n_rep_tokens": "N_REP_TOKENS", "rep_dim": "REP_DIM", "alpha": "ALPHA"},
        model_name="MultiModalRepresentationLearner",  # the official registered model name
    )
    LOG_ACC = True  # the official trainer logs the accuracy of the fused output

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.MMRL
        alpha = float(m.ALPHA)
        if not 0.0 <= alpha <= 1.0:
            raise ArgError("alpha", f"must lie between 0 and 1, got {alpha}")
        settings = mmrl_settings(cfg)
        for key, (old, new) in settings["changed"].items():
            print(f"TRAINER.MMRL.{key}: {new} for {cfg.DATASET.NAME} (the official per-dataset value; the config "
                  f"says {old}; TRAINER.MMRL.DATASET_CONFIG False keeps the config's value)")
        template = get_template(cfg.DATASET.NAME)
        rep_head = uses_rep_head(cfg)
        print(f'MMRL text prompt: "{template}"; representation layers {list(m.REP_LAYERS)}, {m.N_REP_TOKENS} tokens '
              f"of dimension {settings['REP_DIM']}")
        print(f"MMRL evaluation output (TASK {cfg.TASK}): "
              + (f"{m.ALPHA} * class-token logits + {1 - float(m.ALPHA):g} * representation logits" if rep_head
                 else "class-token logits"))
        return MMRLCLIP(clip_model, classnames, template, n_rep_tokens=m.N_REP_TOKENS, rep_layers=m.REP_LAYERS,
                        rep_dim=settings["REP_DIM"], alpha=alpha, use_rep_head=rep_head)

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        uses_rep_head(cfg)  # TASK checked before anything is built

    @property
    def reg_weight(self):
        return mmrl_settings(self.cfg)["REG_WEIGHT"]

    def loss_terms(self, image, label):
        model = self.model
        logits, logits_rep, fusion, img_n, txt_n = model.forward_all(image)
        with torch.no_grad():
            zs_img, zs_txt = model.zero_shot_features(image)
        alpha, w = model.alpha, self.reg_weight
        with torch.autocast(device_type=logits.device.type, enabled=False):
            terms = {
                "ce": alpha * F.cross_entropy(logits, label),
                "ce_rep": (1 - alpha) * F.cross_entropy(logits_rep, label),
                "reg_image": w * (1 - torch.mean(F.cosine_similarity(img_n, zs_img, dim=1))),
                "reg_text": w * (1 - torch.mean(F.cosine_similarity(txt_n, zs_txt, dim=1))),
            }
        return terms, fusion

    def extra_results(self):
        out = dict(super().extra_results() or {})
        settings = mmrl_settings(self.cfg)
        out["mmrl"] = {"REG_WEIGHT": settings["REG_WEIGHT"], "REP_DIM": settings["REP_DIM"],
                       "eval_output": "fusion" if self.model.use_rep_head else "class_token"}
        return out


__all__ = ["MMRL", "MMRLCLIP", "MMRLLearner", "MultiModalRepresentationLearner", "MMRL_DATASET_CONFIG",
           "dataset_specified_config", "mmrl_settings", "uses_rep_head", "check_rep_layers"]
