"""Zero-shot CLIP baselines (CoOp's ``ZeroshotCLIP`` and ``ZeroshotCLIP2``), run with ``--eval-only``.

* ``ZeroshotCLIP``: one hand-crafted template per dataset (``vlprompt.clip.CUSTOM_TEMPLATES``).
* ``ZeroshotCLIP2``: prompt ensembling over CLIP's 7 selected ImageNet templates plus the dataset's
  template (except for ImageNet). Unlike CoOp's file, the template list is a local copy, so it does
  not grow across instantiations.

Both register no model: the engine tolerates an empty registry in eval-only runs. Text features
are computed once at build time. Precision follows ``TRAINER.COOP.PREC`` semantics: fp16 weights on
GPU when PREC is fp16, fp32 on CPU.
"""
from dataclasses import replace

import torch

from vlprompt.clip import IMAGENET_TEMPLATES_SELECT, ZeroShotHead, build_clip_from_cfg, get_template
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY, TrainerX
from vlprompt.engine.methods import MethodCard
from vlprompt.errors import UserRuntimeError


def _maybe_half(clip_model, cfg, device):
    prec = cfg.TRAINER.COOP.PREC if "COOP" in cfg.TRAINER else "fp16"
    if device.type == "cuda" and prec == "fp16":
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(clip_model, torch.float16)
    return clip_model


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """Zero-shot CLIP with the dataset's hand-crafted template (CoOp's ``CUSTOM_TEMPLATES``)."""

    CARD = MethodCard(config="CoOp/vit_b16", order=10, backbones=ANY_TOWERS, eval_only=True)
    FROZEN_IMAGE_FEATURES = True  # evaluated from the feature store (vlprompt.features)

    def templates(self):
        return [get_template(self.cfg.DATASET.NAME)]

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        clip_model = build_clip_from_cfg(cfg)
        clip_model = _maybe_half(clip_model, cfg, self.device).to(self.device)
        for p in clip_model.parameters():
            p.requires_grad_(False)
        self.head = ZeroShotHead(clip_model, classnames, self.templates())
        print(f"Prompts ({len(self.head.templates)} template(s)): "
              f"{[t.format(self.head.classnames[0]) for t in self.head.templates]} ...")
        self.head.text_features()  # computed once, at build time
        self.clip_model = clip_model

    def model_inference(self, image, features=None):
        if features is not None:
            return self.logits_from_image_features(features)
        return self.head.logits(image)

    def frozen_image_tower(self):
        return self.head.image_encoder

    @torch.no_grad()
    def logits_from_image_features(self, features):
        """Logits from the frozen tower's features (what ``head.logits`` computes after the tower)."""
        from vlprompt.clip.prompted import normalized_logits

        return normalized_logits(features, self.head.text_features(), self.head.logit_scale)

    def forward_backward(self, batch):
        raise UserRuntimeError(f"{type(self).__name__} has nothing to train: run it with --eval-only")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling (CLIP's 7 selected templates + the dataset template)."""

    CARD = replace(ZeroshotCLIP.CARD, order=20)

    def templates(self):
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(get_template(self.cfg.DATASET.NAME))
        return templates
