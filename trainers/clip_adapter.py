"""CLIP-Adapter (Gao et al., IJCV 2024, arXiv:2110.04544; gaopengcuhk/CLIP-Adapter), visual adapter.

A bottleneck MLP on the frozen image feature ``f`` (raw, not normalised), blended residually::

    a  = ReLU(ReLU(f W1^T) W2^T)            W1 (d/r, d), W2 (d, d/r), no biases, r = REDUCTION = 4
    f' = RATIO * a + (1 - RATIO) * f        RATIO = 0.2
    logits = exp(logit_scale) * <f'/|f'|, t/|t|>

with ``t`` the frozen text features of the dataset's hand-crafted template (CoOp's ``CUSTOM_TEMPLATES``).
Parameter names follow the official ``Adapter``: ``fc.0.weight`` and ``fc.2.weight`` under the model
name ``clip_adapter``, so official checkpoints load. The adapter acts on image features only, so the
class list can change freely (base -> novel: the adapter is kept, the text side is rebuilt).

Official quirks: the width is hard-coded to 1024 (RN50) there, which crashes on ViT backbones; here it is
the backbone's embedding width. ReLU after both layers and the ratio on raw features are reproduced.
Training runs from the feature store (augmented views, :mod:`vlprompt.features.training`); with
``FEATURES.TRAIN_CACHE False`` from images as the official trainer does.
"""
import torch
import torch.nn as nn

from vlprompt.clip import ArgError, PromptedCLIP, ZeroShotHead, get_template
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.features.training import FeatureEpochs


class Adapter(nn.Module):
    """``fc`` = Linear(d, d/r, no bias) -> ReLU -> Linear(d/r, d, no bias) -> ReLU (official names)."""

    def __init__(self, c_in, reduction=4):
        super().__init__()
        reduction = int(reduction)
        if reduction < 1 or c_in // reduction < 1:
            raise ArgError("reduction", f"must be between 1 and the feature width {c_in}, got {reduction}")
        self.fc = nn.Sequential(
            nn.Linear(c_in, c_in // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(c_in // reduction, c_in, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.fc(x)


class CLIPAdapterModel(PromptedCLIP):
    """Frozen CLIP + visual adapter; ``forward(image)`` -> (B, K) logits."""

    def __init__(self, clip_model, classnames, template, reduction=4, ratio=0.2):
        super().__init__(clip_model)
        ratio = float(ratio)
        if not 0.0 <= ratio <= 1.0:
            raise ArgError("ratio", f"must be in [0, 1], got {ratio}")
        self.ratio = ratio
        self.adapter = Adapter(self.dims["d_embed"], reduction)
        self.text_head = ZeroShotHead(clip_model, classnames, template)

    def learnable_modules(self):
        return [self.adapter]

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self.text_head.set_classnames(classnames)

    def logits_from_image_features(self, features):
        f = features.to(self.adapter.fc[0].weight.dtype)
        x = self.adapter(f)
        f = self.ratio * x + (1 - self.ratio) * f
        return self.logits(f, self.text_head.text_features())

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))


@TRAINER_REGISTRY.register()
class CLIP_Adapter(FeatureEpochs, ClipPromptTrainer):
    """CLIP-Adapter (visual adapter, residual ratio 0.2, reduction 4)."""

    CARD = MethodCard(
        config="vit_b16",  # every protocol
        order=210,
        backbones=ANY_TOWERS,
        cfg_node="CLIP_ADAPTER",
        # official: REDUCTION 4 and ratio 0.2 hard-coded in clip_adapter.py; clip_model.float() -> fp32
        cfg_defaults=dict(REDUCTION=4, RATIO=0.2, PREC="fp32"),
        cfg_args={"reduction": "REDUCTION", "ratio": "RATIO"},
        model_name="clip_adapter",
    )
    LOG_ACC = True  # the official forward_backward logs acc
    FROZEN_IMAGE_FEATURES = True  # the adapter acts after the frozen tower: evaluation uses the store

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER.CLIP_ADAPTER
        return CLIPAdapterModel(clip_model, classnames, get_template(cfg.DATASET.NAME), reduction=m.REDUCTION,
                                ratio=m.RATIO)

    def learnable_module(self):
        return self.model.adapter

    def parse_batch_train(self, batch):
        return self.image_features_of(batch), batch["label"].to(self.device)

    def loss_terms(self, features, label):
        logits = self.model.logits_from_image_features(features)
        return {"ce": torch.nn.functional.cross_entropy(logits, label)}, logits
