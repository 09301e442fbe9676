"""CoPrompt: Consistency-guided Prompt Learning for Vision-Language Models (Roy & Etemad, ICLR 2024;
official code github.com/ShuvenduRoy/CoPrompt). What is learned, the loss, the per-dataset settings, the
official quirks and what vlprompt does about each: docs/METHODS.md (## CoPrompt).

* Prompts: MaPLe's coupled prompts (:class:`trainers.maple.CoupledPrompts`, the same init rule and order).
* Two residual adapters on the **raw** projected features (``Linear(d, d/4, no bias) -> ReLU -> Linear(d/4, d,
  no bias) -> ReLU``): ``f_img' = 0.1 adapter_image(f_img) + 0.9 f_img``, ``f_txt' = 0.2 adapter_text(f_txt) +
  0.8 f_txt``; then both are L2-normalised and ``logits = exp(logit_scale) img_n @ txt_n^T``.
* Loss: ``CE + W (L_text + L_image)``; ``L_text = 1 - mean_c cos(txt_n_c, t_c)`` with ``t`` the frozen-CLIP
  embedding of description number ``k = random.randint(0, n_desc - 1)`` of every class (Python's ``random``,
  one index per training forward); ``L_image = 1 - mean_i cos(img_n_i, i_i)`` with ``i`` the frozen,
  un-prompted image tower's feature of the **second** augmented view (the card asks for 2 views); cosine
  ``eps = 1e-7``. ``DISTILL`` other than "cosine": the two MSEs instead.

In a notebook: ``CoPromptCLIP(clip_model, CoPromptLearner(clip_model, ["cat", "dog"]))``.
"""
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import DeepPromptedCLIP
from vlprompt.clip.backbone import model_dims
from vlprompt.clip.families import PROMPTABLE_VISION
from vlprompt.clip.towers import encode_sentences, prompted_vision_encoder
from vlprompt.config import ConfigError
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.errors import UserRuntimeError

from .clip_adapter import Adapter
from .maple import CoupledPrompts

#: the official per-dataset settings (trainers/constants.py ``get_dataset_specified_config``):
#: DATASET.NAME -> {key of TRAINER.COPROMPT or OPTIM: value}; shipped as per-dataset configs
#: (configs/trainers/CoPrompt/coprompt_<dataset>.yaml); TRAINER.COPROMPT.OFFICIAL_TABLE True applies them
#: after the command line, as the official train.py does
OFFICIAL_TABLE = {
    "ImageNet": dict(PROMPT_DEPTH=12, N_CTX=4, W=8.0),
    "Caltech101": dict(PROMPT_DEPTH=12, N_CTX=4, W=4.0),
    "OxfordPets": dict(PROMPT_DEPTH=12, N_CTX=2, W=0.1),
    "StanfordCars": dict(PROMPT_DEPTH=12, N_CTX=4, W=4.0),
    "OxfordFlowers": dict(PROMPT_DEPTH=9, N_CTX=4, W=8.0),
    "Food101": dict(PROMPT_DEPTH=9, N_CTX=4, W=0.5, MAX_EPOCH=5),
    "FGVCAircraft": dict(PROMPT_DEPTH=9, N_CTX=4, W=2.0),
    "SUN397": dict(PROMPT_DEPTH=12, N_CTX=4, W=8.0),
    "DescribableTextures": dict(PROMPT_DEPTH=12, N_CTX=2, W=8.0),
    "EuroSAT": dict(PROMPT_DEPTH=12, N_CTX=2, W=0.1),
    "UCF101": dict(PROMPT_DEPTH=12, N_CTX=4, W=2.0),
}
#: dataset yaml names of the per-dataset configs
_YAML = {"ImageNet": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets",
         "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers", "Food101": "food101",
         "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DescribableTextures": "dtd", "EuroSAT": "eurosat",
         "UCF101": "ucf101"}

IMAGE_ADAPTER_RATIO = 0.1  # official: hard-coded
TEXT_ADAPTER_RATIO = 0.2  # official: hard-coded
COSINE_EPS = 1e-7  # official: nn.CosineSimilarity(dim=1, eps=1e-07)


class CoPromptLearner(CoupledPrompts):
    """MaPLe's coupled prompts plus CoPrompt's two adapters (everything CoPrompt learns, in one module).

    The adapters are built after the prompts (the official order of random draws: prompt learner, then
    ``adapter_image``, then ``adapter_text``); their width is the joint embedding width of the model.
    """

    def __init__(self, clip_model, classnames, n_ctx=2, depth=9, ctx_init="a photo of a", reduction=4):
        super().__init__(clip_model, classnames, n_ctx=n_ctx, depth=depth, ctx_init=ctx_init)
        d = model_dims(clip_model)["d_embed"]
        self.adapter_image = Adapter(d, reduction)
        self.adapter_text = Adapter(d, reduction)


def residual_adapt(adapter, features, ratio):
    """``ratio * adapter(f) + (1 - ratio) * f`` on the raw features (in the adapter's dtype)."""
    f = features.to(adapter.fc[0].weight.dtype)
    return ratio * adapter(f) + (1 - ratio) * f


def consistency_terms(text_n, text_target, image_n, image_target, distill="cosine"):
    """CoPrompt's two consistency terms ``(L_text, L_image)`` (unweighted).

    ``text_n`` (K, d) / ``image_n`` (B, d): the adapted, normalised features; ``text_target`` /
    ``image_target``: the frozen-CLIP targets, normalised. "cosine": ``1 - mean cos`` (eps 1e-7); else
    ``F.mse_loss`` (mean over every element)."""
    if distill == "cosine":
        l_text = 1.0 - torch.mean(F.cosine_similarity(text_n, text_target, dim=1, eps=COSINE_EPS))
        l_image = 1.0 - torch.mean(F.cosine_similarity(image_n, image_target, dim=1, eps=COSINE_EPS))
        return l_text, l_image
    return F.mse_loss(text_n, text_target), F.mse_loss(image_n, image_target)


class CoPromptCLIP(DeepPromptedCLIP):
    """Frozen CLIP with CoPrompt's prompts and adapters; ``forward(image)`` -> (B, K) fp32 logits.

    ``describe(classnames) -> [[sentence, ...] per class]`` gives the class descriptions of the text
    consistency term; their frozen-CLIP features (n_desc, K, d) are computed at the first training use
    for the current class list (:meth:`description_features`) and dropped by :meth:`set_classnames`.
    The image consistency target comes from the frozen, un-prompted image tower (the same weights as the
    official second CLIP copy).
    """

    def __init__(self, clip_model, learner, describe=None, image_ratio=IMAGE_ADAPTER_RATIO,
                 text_ratio=TEXT_ADAPTER_RATIO):
        super().__init__(clip_model, learner)
        object.__setattr__(self, "_clip_model", clip_model)
        self.frozen_image_encoder = prompted_vision_encoder(clip_model, 0, 0)
        self.image_ratio, self.text_ratio = float(image_ratio), float(text_ratio)
        self.describe = describe
        self.register_buffer("desc_features", None, persistent=False)

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.desc_features = None

    def text_features(self):
        """Adapted text features (K, d) of the current prompts (not normalised)."""
        raw = super().text_features()
        return residual_adapt(self.prompt_learner.adapter_text, raw, self.text_ratio)

    def image_features(self, image):
        """Adapted image features (B, d) with the prompts (not normalised)."""
        raw = super().image_features(image)
        return residual_adapt(self.prompt_learner.adapter_image, raw, self.image_ratio)

    @torch.no_grad()
    def description_features(self):
        """(n_desc, K, d) L2-normalised frozen-CLIP features of every description of every class."""
        if self.desc_features is None:
            if self.describe is None:
                raise UserRuntimeError("CoPrompt needs class descriptions to train (none were given)")
            sentences = self.describe(self.prompt_learner.classnames)
            counts = {len(s) for s in sentences}
            if len(counts) != 1:
                raise UserRuntimeError(
                    "CoPrompt needs the same number of descriptions for every class (it draws one index for "
                    f"all classes); the descriptions have {sorted(counts)} per class"
                )
            feats = [encode_sentences(self._clip_model, s) for s in sentences]  # K x (n_desc, d)
            self.desc_features = torch.stack(feats, dim=1)
        return self.desc_features

    @torch.no_grad()
    def frozen_image_features(self, image):
        """The frozen, un-prompted image tower's features (B, d) (not normalised)."""
        return self.frozen_image_encoder(image)


@TRAINER_REGISTRY.register()
class CoPrompt(ClipPromptTrainer):
    """Consistency-guided prompt learning (CoPrompt)."""

    CARD = MethodCard(
        config="coprompt",
        recipes={
            "base2new": {"per_dataset": {y: f"coprompt_{y}" for y in _YAML.values()}},
            "few_shot": {"per_dataset": {y: f"coprompt_{y}" for y in _YAML.values()}},
            "cross_dataset": "coprompt_cross_datasets",
        },
        order=75,
        backbones=PROMPTABLE_VISION,  # coupled vision prompts: transformer image towers only
        cfg_node="COPROMPT",
        # official train.py defaults (TRAINER.CoPrompt.* and TRAINER.W / TRAINER.DISTILL there), plus vlprompt's
        # DESCRIPTIONS (the description source) and OFFICIAL_TABLE (the per-dataset table over the command line)
        cfg_defaults=dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9, W=8.0, DISTILL="cosine",
                          DESCRIPTIONS="coprompt", OFFICIAL_TABLE=False),
        cfg_args={"n_ctx": "N_CTX", "depth": "PROMPT_DEPTH", "ctx_init": "CTX_INIT"},
        model_name="MultiModalPromptLearner",
        views=2,  # the prompted model sees view 0, the frozen image tower view 1 (official K_TRANSFORMS 2)
    )

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        m = cfg.TRAINER.COPROMPT
        if bool(m.OFFICIAL_TABLE):
            apply_official_table(cfg)

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        from vlprompt.data.descriptions import class_descriptions, descriptions_where, load_descriptions

        m = cfg.TRAINER.COPROMPT
        learner = CoPromptLearner(clip_model, classnames, n_ctx=m.N_CTX, depth=m.PROMPT_DEPTH, ctx_init=m.CTX_INIT)
        d = cfg.DATASET
        source = str(m.DESCRIPTIONS)

        def describe(names):  # read at the first training step: evaluation needs no description file
            table = load_descriptions(d.ROOT, source, d.NAME, d.FOLDER)
            where = descriptions_where(d.ROOT, source, d.NAME, d.FOLDER)
            print(f"CoPrompt: class descriptions from {where}")
            return class_descriptions(table, names, where)

        return CoPromptCLIP(clip_model, learner, describe=describe)

    def loss_terms(self, image, label):
        if not isinstance(image, (list, tuple)) or len(image) < 2:
            raise UserRuntimeError("CoPrompt trains on two augmented views of each image (DATALOADER.K_TRANSFORMS 2)")
        image1, image2 = image[0], image[1]
        m = self.method_cfg
        model = self.model
        text = model.text_features()
        img = model.image_features(image1)
        logits = model.logits(img, text)
        desc = model.description_features()
        k = random.randint(0, desc.shape[0] - 1)  # official: Python's global random, one index per forward
        with torch.autocast(device_type=logits.device.type, enabled=False):
            text_n = F.normalize(text.float(), dim=-1)
            img_n = F.normalize(img.float(), dim=-1)
            t_hat = F.normalize(desc[k].float(), dim=-1)
            i_hat = F.normalize(model.frozen_image_features(image2).float(), dim=-1)
            l_text, l_image = consistency_terms(text_n, t_hat, img_n, i_hat, str(m.DISTILL))
        self.last_consistency = {"text": float(l_text.detach()), "image": float(l_image.detach()), "index": k}
        return {"ce": F.cross_entropy(logits, label), "distill": float(m.W) * (l_text + l_image)}, logits

    def convert_legacy_state_dict(self, state_dict):
        """Official checkpoints hold the whole CustomCLIP: keep ``prompt_learner.*`` (unprefixed) and the two
        adapters (``adapter_image.*``, ``adapter_text.*``, kept as they are)."""
        if not any(k.startswith("prompt_learner.") for k in state_dict):
            return state_dict  # a vlprompt checkpoint (the learner's own keys)
        out = {}
        for k, v in state_dict.items():
            if k.startswith("prompt_learner."):
                out[k[len("prompt_learner."):]] = v
            elif k.startswith(("adapter_image.", "adapter_text.")):
                out[k] = v
        return out or state_dict


def apply_official_table(cfg):
    """The official behaviour (``TRAINER.COPROMPT.OFFICIAL_TABLE True``): the per-dataset values of
    :data:`OFFICIAL_TABLE` replace N_CTX / PROMPT_DEPTH / W (and Food101's MAX_EPOCH) whatever the config
    files and command line say. A dataset outside the table is refused (the official train.py crashes)."""
    row = OFFICIAL_TABLE.get(cfg.DATASET.NAME)
    if row is None:
        raise ConfigError(
            f"TRAINER.COPROMPT.OFFICIAL_TABLE True: the official per-dataset table has no row for "
            f"{cfg.DATASET.NAME} (it lists {', '.join(OFFICIAL_TABLE)}); set OFFICIAL_TABLE False to use the "
            "config and command-line values"
        )
    frozen = cfg.is_frozen()
    cfg.defrost()
    changed = []
    for key, value in row.items():
        node, name = (cfg.OPTIM, "OPTIM") if key == "MAX_EPOCH" else (cfg.TRAINER.COPROMPT, "TRAINER.COPROMPT")
        if node[key] != value:
            changed.append(f"{name}.{key} {node[key]} -> {value}")
        node[key] = value
    if frozen:
        cfg.freeze()
    if changed:
        print(f"CoPrompt official per-dataset table for {cfg.DATASET.NAME}: " + ", ".join(changed))
