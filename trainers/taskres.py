"""TaskRes (TaskRes-Text): task residual tuning (Yu, Lu, Jin, Chen, Wang, "Task Residual for Tuning
Vision-Language Models", CVPR 2023, arXiv:2211.10277; official code geekyutao/TaskRes, ``trainers/taskres.py``).

The zero-shot classifier is kept as a frozen base ``t`` (K, D) and a task residual ``x`` (K, D), zero-initialised,
is learned::

    t_c    = mean over templates of the RAW (un-normalised) text features of template(class c)
    logits = exp(logit_scale) * <f / |f|, (t + alpha x) / |t + alpha x|>        alpha = RESIDUAL_SCALE

Templates: ImageNet: CLIP's 7 selected templates + 'a photo of a {}.' (8); every other dataset its one CoOp
template. Parameter names follow the official learner (``prompt_learner.text_feature_residuals``, buffer
``base_text_features``), so official checkpoints load. The loss is CE; the optimiser (Adam), schedule and
epochs are the config's (Dassl's ``build_optimizer`` over the learner only). Training runs from the feature store
(one fresh augmented view of the training images per epoch, :mod:`vlprompt.features.training`).

**Enhanced base** (``ENHANCED_BASE``: a path; official ``train_enhance.sh``): the base is computed with the text
projection replaced by a pre-trained one (a checkpoint whose ``state_dict`` holds ``weight`` (E, W) of a
linear text projection; ``text_projection = weight^T``). ``none`` (default): the regular base.

Official quirks (docs/METHODS.md, ## TaskRes): class names are put into the templates as given, without CoOp's
``_`` -> space (kept: ``RAW_CLASSNAMES True``; ``False`` cleans them); the official PREC fp16 computes the base
with the fp16 text tower and then casts the whole model to fp32 (here one precision, ``PREC``, default fp32);
the official ImageNet template list is extended in place (a second build in one process would add the custom
template again: not reproduced); the enhanced projection is only loaded when the model is fp16 (here always).

Class lists: the checkpoint also holds the class names of its residual rows (``class_names``); loaded onto
another class list (ImageNet -> ImageNet-A/R), rows are re-indexed by name and classes without a row get a zero
residual (their zero-shot base), as the official ImageNet-A/R re-indexing.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import IMAGENET_TEMPLATES_SELECT, ArgError, PromptedCLIP, clean_classname, get_template
from vlprompt.clip.families import ANY_TOWERS
from vlprompt.clip.templates import classnames_from_tensor, classnames_tensor, reindex_by_classname
from vlprompt.clip.tokenizer import tokenize
from vlprompt.config import ConfigError
from vlprompt.engine import TRAINER_REGISTRY
from vlprompt.engine.clip_trainer import ClipPromptTrainer
from vlprompt.engine.methods import MethodCard
from vlprompt.errors import UserRuntimeError
from vlprompt.features.training import FeatureEpochs


def taskres_templates(dataset_name):
    """ImageNet: CLIP's 7 selected templates + the custom one (8); other datasets: their custom template."""
    custom = get_template(dataset_name)
    return (list(IMAGENET_TEMPLATES_SELECT) if dataset_name == "ImageNet" else []) + [custom]


@torch.no_grad()
def base_text_features(clip_model, classnames, templates, raw_classnames=True, projection=None):
    """(K, E) fp32: per class, the mean over ``templates`` of the raw text features (the official
    ``_get_base_text_features``: one batch of all templates per class). ``projection`` (W, E): a text projection
    used instead of the model's (the enhanced base)."""
    device = next(clip_model.parameters()).device
    saved = None
    if projection is not None:
        proj = getattr(clip_model, "text_projection", None)
        if not isinstance(proj, torch.Tensor) or tuple(proj.shape) != tuple(projection.shape):
            shape = tuple(proj.shape) if isinstance(proj, torch.Tensor) else None
            raise ArgError("enhanced_base", f"needs a CLIP text tower with a text_projection matrix of shape "
                                            f"{tuple(projection.shape)} (this backbone has {shape})")
        saved = proj.data.clone()
        proj.data.copy_(projection.to(proj.dtype))
    try:
        rows = []
        for name in classnames:
            name = name if raw_classnames else clean_classname(name)
            tokens = tokenize([t.format(name) for t in templates], model=clip_model).to(device)
            rows.append(clip_model.encode_text(tokens).float())
        return torch.stack(rows).mean(1)
    finally:
        if saved is not None:
            clip_model.text_projection.data.copy_(saved)


class TaskResLearner(nn.Module):
    """``base_text_features`` (K, E) buffer, ``text_feature_residuals`` (K, E) zero-init parameter (official
    names) and the class names of the rows; ``forward()`` -> ``base + alpha * residuals``."""

    def __init__(self, base, classnames, alpha=0.5):
        super().__init__()
        self.alpha = float(alpha)
        self.register_buffer("base_text_features", base.detach().clone().float())
        self.text_feature_residuals = nn.Parameter(torch.zeros_like(self.base_text_features))
        self.register_buffer("class_names", classnames_tensor(classnames))

    def forward(self):
        return self.base_text_features + self.alpha * self.text_feature_residuals


class TaskResModel(PromptedCLIP):
    """Frozen CLIP + the task-residual learner; ``forward(image)`` -> (B, K) logits."""

    def __init__(self, clip_model, classnames, templates, alpha=0.5, raw_classnames=True, projection=None):
        super().__init__(clip_model)
        object.__setattr__(self, "_clip_model", clip_model)
        self.templates, self.raw_classnames, self.projection = list(templates), bool(raw_classnames), projection
        self.prompt_learner = TaskResLearner(self._base(classnames), classnames, alpha)

    def _base(self, classnames):
        return base_text_features(self._clip_model, classnames, self.templates, self.raw_classnames, self.projection)

    def set_classnames(self, classnames):
        """Another class list: a new base; residual rows re-indexed by class name (zero for unknown classes)."""
        old = self.prompt_learner
        new = TaskResLearner(self._base(classnames), classnames, old.alpha).to(old.base_text_features.device)
        with torch.no_grad():
            reindex_by_classname(new.text_feature_residuals, old.text_feature_residuals, classnames,
                                 classnames_from_tensor(old.class_names))
        new.text_feature_residuals.requires_grad_(old.text_feature_residuals.requires_grad)
        self.prompt_learner = new
        self.text_cache.clear()

    def logits_from_image_features(self, features):
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = features.float()
            f = f / f.norm(dim=-1, keepdim=True)
            t = self.prompt_learner()
            t = t / t.norm(dim=-1, keepdim=True)
            return self.logit_scale.exp().float() * f @ t.t()

    def forward(self, image):
        return self.logits_from_image_features(self.image_encoder(image))


def _enhanced_projection(path):
    """The ``text_projection`` (W, E) of an enhanced-base checkpoint (``state_dict['weight']`` (E, W))."""
    from vlprompt.utils import load_checkpoint

    ckpt = load_checkpoint(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or "weight" not in sd:
        raise ConfigError(f"TRAINER.TASKRES.ENHANCED_BASE: {path} holds no state_dict with a 'weight' (the pre-trained "
                          "text projection of TaskRes's enhanced base)")
    return sd["weight"].t().float()


@TRAINER_REGISTRY.register()
class TaskRes(FeatureEpochs, ClipPromptTrainer):
    """TaskRes-Text: a zero-initialised residual on the frozen zero-shot classifier."""

    # few-shot (train_regular.sh) and domain generalisation (the paper's ImageNet -> V2/Sketch/A/R table); the
    # residual is per class, so there is no base-to-novel or cross-dataset recipe (other classes keep their base)
    CARD = MethodCard(
        config="adam_lr2e-3_B256_ep100",
        # train_regular.sh: lr 2e-3 (ImageNet 2e-4), 100 epochs for 1/2/4 shots and 200 for 8/16, residual scale
        # 0.5 (OxfordFlowers 1.0). A recipe's per-dataset config cannot vary with the shots, so ImageNet and
        # OxfordFlowers run their 200-epoch config at every shot count (their 100-epoch configs ship too)
        recipes={"few_shot": {"per_dataset": {"imagenet": "adam_lr2e-4_B256_ep200",
                                              "oxford_flowers": "adam_lr2e-3_B256_ep200_scale1"},
                              "per_shots": {"8": "adam_lr2e-3_B256_ep200", "16": "adam_lr2e-3_B256_ep200"}},
                 "domain_generalization": "generalization_vit16"},
        protocols=("few_shot", "domain_generalization"),
        order=235,
        backbones=ANY_TOWERS,
        cfg_node="TASKRES",
        # official extend_cfg: RESIDUAL_SCALE 1.0 (the scripts pass 0.5, OxfordFlowers 1.0), ENHANCED_BASE none
        cfg_defaults=dict(RESIDUAL_SCALE=1.0, ENHANCED_BASE="none", RAW_CLASSNAMES=True, PREC="fp32"),
        cfg_args={"enhanced_base": "ENHANCED_BASE"},
        model_name="prompt_learner",
    )
    LOG_ACC = True
    FROZEN_IMAGE_FEATURES = True

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        m = cfg.TRAINER[cls.CFG_NODE]
        enhanced = str(m.ENHANCED_BASE)
        projection = None if enhanced.lower() in ("", "none") else _enhanced_projection(enhanced)
        if projection is not None:
            print(f"TaskRes: enhanced base (text projection from {enhanced})")
        return TaskResModel(clip_model, classnames, taskres_templates(cfg.DATASET.NAME), alpha=m.RESIDUAL_SCALE,
                            raw_classnames=m.RAW_CLASSNAMES, projection=projection)

    def learnable_module(self):
        return self.model.prompt_learner

    def parse_batch_train(self, batch):
        return self.image_features_of(batch), batch["label"].to(self.device)

    def loss_terms(self, features, label):
        logits = self.model.logits_from_image_features(features)
        return {"ce": F.cross_entropy(logits, label)}, logits

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        self._models[self.MODEL_NAME] = self.model.prompt_learner

    def _load_learned_state(self, name, module, state_dict, path):
        """Residual rows by class name when the checkpoint records them; the base is always this run's."""
        if "text_feature_residuals" not in state_dict:
            return super()._load_learned_state(name, module, state_dict, path)
        res = state_dict["text_feature_residuals"]
        current = classnames_from_tensor(module.class_names)
        saved = classnames_from_tensor(state_dict["class_names"]) if "class_names" in state_dict else None
        with torch.no_grad():
            if saved is None or saved == current:
                if tuple(res.shape) != tuple(module.text_feature_residuals.shape):
                    raise UserRuntimeError(
                        f'Cannot load "{path}" into {name}: text_feature_residuals {tuple(res.shape)} vs model '
                        f"{tuple(module.text_feature_residuals.shape)} (another class list or backbone?)")
                module.text_feature_residuals.copy_(res)
                return
            module.text_feature_residuals.zero_()
            hit = reindex_by_classname(module.text_feature_residuals, res.to(module.text_feature_residuals.device),
                                       current, saved)
        print(f"TaskRes: residuals of {hit} of the {len(current)} current classes loaded (by class name)")
