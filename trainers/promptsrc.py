"""PromptSRC: Prompting with Self-regulating Constraints (Khattak et al., ICCV 2023, arXiv 2307.06948;
official code github.com/muzairkhattak/PromptSRC), on the vlprompt engine.

What it learns: IVLP's independent deep vision-language prompts (:class:`vlprompt.clip.IndependentPrompts`:
``ctx`` (N_t, d_t) from "a photo of a", ``deep_text_prompts[i-1]`` replacing text slots 1..N_t at text
blocks 1..J_t-1, ``vision_ctx`` (N_v, d_v) appended after the patch tokens, ``deep_vision_prompts[i-1]``
replacing the last N_v tokens at vision blocks 1..J_v-1). 46,080 trainable parameters at ViT-B/16 with
the official 4+4 tokens and depth 9/9 (PromptSRC adds no parameter over IVLP).

What is PromptSRC's own (this file):

* **self-regulating losses** towards the frozen CLIP (one shared frozen CLIP, no second copy):
  ``scl_text = TEXT_LOSS_WEIGHT * L1(txt_n, fixed_n)`` where ``fixed_n`` are the zero-shot class
  text features averaged over the 60 ImageNet templates of the official code (raw features averaged,
  *then* normalised, as officially); ``scl_image = IMAGE_LOSS_WEIGHT * L1(img_n, zs_img_n)`` with the
  frozen unprompted image tower's features; ``scl_logits = KL(p_zs || p) / (B * K)`` summed over the
  batch (``F.kl_div(log p, log p_zs, reduction="sum", log_target=True) / logits.numel()``); plus
  ``ce``. ``F.l1_loss`` with ``reduction="mean"`` over all elements, as officially.
* **Gaussian prompt aggregation** (GPA, :class:`GaussianPromptAggregation`, an engine hook with
  state): after every epoch e (1-based) the learned prompts are added with weight
  ``w_e = N(e; GPA_MEAN, GPA_STD) / sum_e' N(e'; GPA_MEAN, GPA_STD)`` (e' = 1..MAX_EPOCH); after the
  last epoch the aggregate replaces the prompts, so the final checkpoint (``model.pth.tar-MAX_EPOCH``)
  and the final test hold the aggregated prompts (official behaviour). The running sum is the hook's
  state, checkpointed every epoch, so a killed run resumes exactly (officially it is lost).

Config ``TRAINER.PROMPTSRC`` (official ``train.py`` defaults): N_CTX_VISION 4, N_CTX_TEXT 4,
CTX_INIT "a photo of a", PREC fp16, PROMPT_DEPTH_VISION 9, PROMPT_DEPTH_TEXT 9, TEXT_LOSS_WEIGHT 25,
IMAGE_LOSS_WEIGHT 10, GPA_MEAN 15, GPA_STD 1. Registered model name ``VLPromptLearner`` (official);
official whole-model checkpoints (prompts inside the encoders, frozen CLIP and ``ZS_image_encoder``
weights beside them) load through :meth:`PromptSRC.convert_legacy_state_dict`.

Deviations from the official code (docs/METHODS.md, "PromptSRC"): fp32 is fp32 throughout (the
official fp32 path rounds prompts and ``fixed_embeddings`` to fp16 with hard-coded ``.half()`` calls and
runs an fp16 ``ZS_image_encoder``, which cannot run); GPA aggregates the learned prompts only (the
official code also averages the frozen CLIP weights, which in fp16 perturbs them by rounding); ``amp``
works (the official amp branch crashes); under fp16 the frozen text features come from the fp16 CLIP
(officially from an fp32 copy).
"""
import math

import torch
import torch.nn.functional as F

from vlprompt.clip import DeepPromptedCLIP, IndependentPrompts, ZeroShotHead
from vlprompt.clip.tokenizer import model_tokenizer
from vlprompt.clip.towers import prompted_text_encoder
from vlprompt.clip.templates import format_classnames
from vlprompt.config import ConfigError
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.engine import TRAINER_REGISTRY, HookBase
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard

from .ivlp import convert_official_vision_keys
from vlprompt.errors import InvalidValueError, UserRuntimeError

__all__ = ["PromptSRC", "GaussianPromptAggregation", "gpa_weights", "EnsembleTeacher", "IMAGENET_TEMPLATES"]

# The 60 templates of the official trainers/imagenet_templates.py (the first 60 of the 80 CLIP
# ImageNet templates from OpenAI's prompt-engineering notebook), in the official order.
IMAGENET_TEMPLATES = [
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
]


class EnsembleTeacher(ZeroShotHead):
    """The frozen CLIP side of PromptSRC's self-regulating losses.

    A :class:`vlprompt.clip.ZeroShotHead` whose template ensemble is PromptSRC's: the *raw* text
    features of every template are averaged and the mean is normalised (official
    ``fixed_embeddings``; CLIP's own ensembling, used by ``ZeroShotHead``, normalises each template
    first). ``image_features`` (the frozen unprompted image tower) is inherited. Features are rebuilt
    for every class list and never saved.
    """

    chunk_size = 1024

    def __init__(self, clip_model, classnames, templates):
        super().__init__(clip_model, classnames, templates)
        # the unprompted text encoder of the model's family (equal to open_clip's encode_text): the
        # EOT-truncated pass for causal towers (60 templates x K classes), the full pass for SigLIP
        self.text_encoder = prompted_text_encoder(clip_model)
        self._tokenizer = model_tokenizer(clip_model)

    @torch.no_grad()
    def text_features(self):
        if self.features is None:
            names = format_classnames(self.classnames)
            texts = [t.replace("{}", n) for t in self.templates for n in names]
            raw = torch.cat([
                self.text_encoder.encode_tokens(self._tokenizer(texts[i:i + self.chunk_size])).float()
                for i in range(0, len(texts), self.chunk_size)
            ])
            mean = raw.view(len(self.templates), len(names), -1).mean(dim=0)
            self.features = F.normalize(mean, dim=-1)
        return self.features


def gpa_weights(n_epochs, mean, std):
    """GPA's per-epoch weights ``w_1..w_n`` (a list of floats summing to 1): the N(mean, std^2) density at
    epochs 1..n, normalised (computed in float64, as the official numpy code)."""
    mean, std = float(mean), float(std)
    if not std > 0 or not math.isfinite(std) or not math.isfinite(mean):
        raise ValueError(f"the GPA standard deviation must be a positive number, got {std} (mean {mean})")
    dens = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, n_epochs + 1)]
    total = sum(dens)
    if not total > 0:
        raise InvalidValueError(
            f"the GPA weights N(e; {mean}, {std}^2) underflow to 0 for every epoch e = 1..{n_epochs}; "
            "put GPA_MEAN within a few GPA_STD of the training epochs"
        )
    return [d / total for d in dens]


class GaussianPromptAggregation(HookBase):
    """Gaussian prompt aggregation over epochs (PromptSRC's GPA) as an engine hook with state.

    After each epoch (``after_epoch``: after the LR step, before the epoch's checkpoint) the learned
    state of ``trainer.learnable_module()`` is added to a running sum with that epoch's weight
    (:func:`gpa_weights`); after the last epoch the sum is loaded into the module, so the last
    checkpoint and the final test hold the aggregate. :meth:`state_dict` holds the running sum and the
    epochs added so far (saved in every checkpoint; a resumed run continues the same sum).
    """

    def __init__(self, mean, std):
        self.mean, self.std = float(mean), float(std)
        self.total = None  # {key: tensor} running weighted sum
        self.epochs = []  # 1-based epochs added to the sum
        self.weights = None

    def before_train(self):
        self.weights = gpa_weights(self.trainer.max_epoch, self.mean, self.std)

    def after_epoch(self):
        epoch = self.trainer.epoch + 1
        if epoch in self.epochs:  # already added (should not happen: resume starts after it)
            return
        if self.weights is None:
            self.before_train()
        w = self.weights[epoch - 1]
        module = self.trainer.learnable_module()
        current = {k: v.detach() for k, v in module.state_dict().items()}
        if self.total is None:
            self.total = {k: v * w for k, v in current.items()}
        else:
            self.total = {k: self.total[k] + current[k] * w for k in current}
        self.epochs.append(epoch)
        if epoch == self.trainer.max_epoch:
            print("Using GPA model for final inference...")
            module.load_state_dict(self.total)

    def state_dict(self):
        state = {"mean": self.mean, "std": self.std, "epochs": list(self.epochs)}
        if self.total is not None:
            state["total"] = {k: v.clone() for k, v in self.total.items()}
        return state

    def load_state_dict(self, state):
        if (float(state.get("mean", self.mean)), float(state.get("std", self.std))) != (self.mean, self.std):
            raise UserRuntimeError(
                f"Cannot resume: the checkpoint's GPA was N({state.get('mean')}, {state.get('std')}^2), this run's is "
                f"N({self.mean}, {self.std}^2) (TRAINER.PROMPTSRC.GPA_MEAN/GPA_STD changed); start a fresh run"
            )
        self.epochs = [int(e) for e in state.get("epochs", [])]
        total = state.get("total")
        self.total = None if total is None else {k: v.clone() for k, v in total.items()}


@TRAINER_REGISTRY.register()
class PromptSRC(ClipPromptTrainer):
    """Independent V-L prompts with self-regulating losses and Gaussian prompt aggregation."""

    CARD = MethodCard(
        config="vit_b16_c2_ep20_batch4_4+4ctx",
        recipes={
            "cross_dataset": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
            "few_shot": {
                "config": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
                # the official few-shot file's commented alternative (GPA 45 / 5) for these five datasets
                "per_dataset": {d: "vit_b16_c2_ep50_batch4_4+4ctx_few_shot_gpa45" for d in
                                ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")},
            },
        },
        order=120,
        # its default has vision prompts (its text-only variant, PROMPT_DEPTH_VISION 0, also runs on CNN towers)
        backbones=PROMPTABLE_VISION,
        cfg_node="PROMPTSRC",
        cfg_defaults=dict(N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=9,
                          PROMPT_DEPTH_TEXT=9, TEXT_LOSS_WEIGHT=25, IMAGE_LOSS_WEIGHT=10, GPA_MEAN=15, GPA_STD=1),
        cfg_args={"n_ctx_text": "N_CTX_TEXT", "depth_text": "PROMPT_DEPTH_TEXT", "n_ctx_vision": "N_CTX_VISION",
                  "depth_vision": "PROMPT_DEPTH_VISION", "ctx_init": "CTX_INIT"},
        model_name="VLPromptLearner",
    )

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        learner = IndependentPrompts.from_cfg(clip_model, classnames, cfg.TRAINER.PROMPTSRC)
        model = DeepPromptedCLIP(clip_model, learner, text=learner.text_geometry, vision=learner.vision_geometry)
        model.zero_shot = EnsembleTeacher(clip_model, classnames, IMAGENET_TEMPLATES)  # frozen, never saved
        return model

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        m = cfg.TRAINER.PROMPTSRC
        try:
            gpa_weights(int(cfg.OPTIM.MAX_EPOCH), m.GPA_MEAN, m.GPA_STD)
        except ValueError as e:
            raise ConfigError(f"TRAINER.PROMPTSRC.GPA_MEAN/GPA_STD: {e}") from None

    def build_model(self):
        super().build_model()
        m = self.method_cfg
        self.register_hook("gpa", GaussianPromptAggregation(m.GPA_MEAN, m.GPA_STD))

    def loss_terms(self, image, label):
        model, m = self.model, self.method_cfg
        text = model.text_features()
        img = model.image_features(image)
        logits = model.logits(img, text)  # fp32, exp(logit_scale) * cos
        with torch.no_grad():
            fixed_n = model.zero_shot.text_features().float()  # (K, d), normalised template ensemble
            zs_img = model.zero_shot.image_features(image)  # frozen unprompted image tower
        with torch.autocast(device_type=image.device.type, enabled=False):  # the losses in fp32
            txt_n = F.normalize(text.float(), dim=-1)
            img_n = F.normalize(img.float(), dim=-1)
            zs_img_n = F.normalize(zs_img.float(), dim=-1)
            zs_logits = model.logit_scale.exp().float() * zs_img_n @ fixed_n.t()
            kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                          log_target=True)
            terms = {
                "ce": F.cross_entropy(logits, label),
                "scl_text": F.l1_loss(txt_n, fixed_n, reduction="mean") * float(m.TEXT_LOSS_WEIGHT),
                "scl_image": F.l1_loss(img_n, zs_img_n, reduction="mean") * float(m.IMAGE_LOSS_WEIGHT),
                "scl_logits": kl / logits.numel(),
            }
        return terms, logits

    def convert_legacy_state_dict(self, state_dict):
        """Official PromptSRC checkpoints (the whole CustomCLIP: prompts inside the encoders, frozen CLIP
        and ``prompt_learner.ZS_image_encoder`` weights beside them) -> the learner's keys."""
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        out = convert_official_vision_keys(state_dict)
        return {k: v for k, v in out.items() if not k.startswith("ZS_image_encoder.")}
