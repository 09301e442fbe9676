"""The method kit's trainer base for CLIP prompt learning and adaptation (docs/EXTENDING.md).

A method is one file: its learnable module(s), its objective, its config node and its recipes::

    @TRAINER_REGISTRY.register()
    class MyMethod(ClipPromptTrainer):
        CARD = MethodCard(
            config="vit_b16",                           # default config (configs/trainers/MyMethod/)
            cfg_node="MYMETHOD",                        # cfg.TRAINER.MYMETHOD
            cfg_defaults=dict(N_CTX=4, PREC="fp16"),    # registered as that node's defaults
            cfg_args={"n_ctx": "N_CTX"},                # block argument -> config key (for errors)
            model_name="prompt_learner",                # checkpoint folder
        )

        @classmethod
        def build_custom_clip(cls, cfg, classnames, clip_model):
            m = cfg.TRAINER.MYMETHOD
            return DeepPromptedCLIP(clip_model, MyPrompts(clip_model, classnames, n_ctx=m.N_CTX), text=(...))

        def loss_terms(self, image, label):             # optional; default {"ce": cross-entropy}
            logits = self.model(image)
            return {"ce": F.cross_entropy(logits, label), "reg": ...}, logits

What the base does: ``check_cfg`` (``PREC`` in fp32/fp16/amp/bf16); ``build_model`` (frozen CLIP from the
config, precision applied, the method's model built, every parameter frozen except the learnable
module(s), ``MODEL.INIT_WEIGHTS`` loaded, the optimisers of :meth:`build_optimizers` registered under
their names); ``forward_backward`` (the objective under autocast, one engine step, every named term in
the log line and in tensorboard); ``model_inference``; ``load_model`` (learned state only, onto any
class list; official whole-model checkpoints converted). LR stepping, checkpoints, resume and
results are the engine's (:mod:`vlprompt.engine.trainer`).
"""
import os
import os.path as osp

import torch.nn.functional as F

from vlprompt.clip import Precision, build_clip_from_cfg, drop_class_derived_keys
from vlprompt.clip.blocks import ArgError
from vlprompt.config import ConfigError, add_trainer_cfg, register_trainer_node
from vlprompt.clip.precision import PRECISIONS
from vlprompt.metrics import compute_accuracy
from vlprompt.protocol.card import card_of
from vlprompt.optim import build_lr_scheduler, build_optimizer
from vlprompt.utils import count_num_param, load_checkpoint, load_pretrained_weights

from .trainer import TrainerX
from vlprompt.errors import UserPathNotFoundError, UserRuntimeError

__all__ = ["ClipPromptTrainer", "add_trainer_cfg"]


class ClipPromptTrainer(TrainerX):
    """Base class of the CLIP prompt-learning trainers (see the module docstring)."""

    # What a method declares is its CARD (vlprompt.protocol.card.MethodCard); the card sets these class
    # attributes from its fields (read on instances: self.CFG_NODE, self.MODEL_NAME, ...). The values here
    # are the defaults of a class whose card leaves a field out, or that declares no card.
    #: name of the method's config node under ``cfg.TRAINER`` (card ``cfg_node``, e.g. ``"COOP"``)
    CFG_NODE = None
    #: that node's keys and defaults (card ``cfg_defaults``; registered as a config extension)
    CFG_DEFAULTS = None
    #: building-block argument -> config key of ``CFG_NODE`` (card ``cfg_args``), so that errors name the key
    CFG_ARGS = {}
    #: registered model name (= checkpoint sub-folder), as in the official repositories (card ``model_name``)
    MODEL_NAME = "prompt_learner"
    #: add training accuracy to the per-iteration log (CoOp does; CoCoOp/MaPLe log only the loss)
    LOG_ACC = False

    # -------------------------------------------------------------------------------------------
    # what a method provides
    # -------------------------------------------------------------------------------------------

    @classmethod
    def build_custom_clip(cls, cfg, classnames, clip_model):
        """Return the method's model (``nn.Module``, usually a :class:`vlprompt.clip.DeepPromptedCLIP`).

        ``clip_model`` is already in the precision's dtype. The model's ``forward(image)`` returns
        (B, K) fp32 logits; its learnable parameters live in :meth:`learnable_module`.
        """
        raise NotImplementedError

    def loss_terms(self, image, label):
        """``(terms, logits)``: the named loss terms of one batch (weights applied; the loss is their
        sum) and the logits. Default: ``{"ce": cross_entropy}``."""
        logits = self.model(image)
        return {"ce": F.cross_entropy(logits.float(), label)}, logits

    def build_optimizers(self, learnable):
        """``{name: (optimizer, scheduler)}``; the first entry is the model's first optimiser (Dassl's
        checkpoint slots, the logged LR). Default: one optimiser over the learnable module, named after
        ``MODEL_NAME``."""
        optim = build_optimizer(learnable, self.cfg.OPTIM)
        return {self.MODEL_NAME: (optim, build_lr_scheduler(optim, self.cfg.OPTIM))}

    def learnable_module(self):
        """The module registered under ``MODEL_NAME`` (default ``self.model.prompt_learner``)."""
        return self.model.prompt_learner

    def convert_legacy_state_dict(self, state_dict):
        """Map a checkpoint of the official implementation onto the learnable module's keys.

        The official MaPLe/IVLP/VPT trainers register the whole CustomCLIP, so their keys carry a
        ``prompt_learner.`` prefix next to frozen CLIP weights. Default: if no key matches the
        learnable module but ``prompt_learner.``-prefixed keys exist, keep only those, unprefixed.
        """
        own = set(self.learnable_module().state_dict().keys())
        if own & set(state_dict):
            return state_dict
        prefixed = {k[len("prompt_learner."):]: v for k, v in state_dict.items() if k.startswith("prompt_learner.")}
        return prefixed if prefixed else state_dict

    # -------------------------------------------------------------------------------------------
    # config and model
    # -------------------------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the config node a class's card (or loose CFG_DEFAULTS) brings becomes a config extension; a
        # subclass that declares none inherits its parent's node, registered already
        if "CARD" not in cls.__dict__ and "CFG_DEFAULTS" not in cls.__dict__:
            return
        card = card_of(cls)
        if not card.cfg_defaults:
            return
        if not card.cfg_node:
            raise TypeError(f"{cls.__name__} sets cfg_defaults but no cfg_node")
        register_trainer_node(card.cfg_node, card.cfg_defaults)

    @property
    def method_cfg(self):
        """``cfg.TRAINER.<CFG_NODE>``."""
        return self.cfg.TRAINER[self.CFG_NODE]

    def check_cfg(self, cfg):
        if self.CFG_NODE is None:
            raise TypeError(f"{type(self).__name__} must set CFG_NODE (its cfg.TRAINER node name)")
        if self.CFG_NODE not in cfg.TRAINER:
            raise KeyError(
                f"cfg.TRAINER.{self.CFG_NODE} is missing: import the trainer module (trainers/...) before "
                "building the config so that its config extension is registered"
            )
        prec = str(cfg.TRAINER[self.CFG_NODE].PREC).lower()
        if prec not in PRECISIONS:
            raise ConfigError(f"TRAINER.{self.CFG_NODE}.PREC must be one of {PRECISIONS}, got '{prec}'")

    @classmethod
    def custom_clip(cls, cfg, classnames, clip_model):
        """:meth:`build_custom_clip`, with block argument errors reported under their config keys."""
        try:
            return cls.build_custom_clip(cfg, classnames, clip_model)
        except ArgError as e:
            key = cls.CFG_ARGS.get(e.arg)
            if key is None:
                raise ConfigError(f"{cls.__name__}: {e}") from None
            raise ConfigError(f"TRAINER.{cls.CFG_NODE}.{key}: {e.message}") from None

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = Precision(self.method_cfg.PREC, self.device)
        clip_model = build_clip_from_cfg(cfg)
        self.precision.prepare_clip(clip_model)
        if self.precision.mode != "fp32" or self.precision.requested != "fp32":
            print(f"Precision: {self.precision.mode} (requested {self.precision.requested})")

        print("Building custom CLIP")
        self.model = self.custom_clip(cfg, classnames, clip_model)
        learnable = self.learnable_module()

        print("Turning off gradients in both the image and the text encoder")
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in clip_model.parameters():
            p.requires_grad_(False)
        for p in learnable.parameters():
            p.requires_grad_(True)
        enabled = sorted(n for n, p in learnable.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {enabled}")
        n_train = count_num_param(learnable, trainable_only=True)
        self.num_trainable_params = n_train
        print(f"Number of trainable parameters: {n_train:,}")

        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(learnable, cfg.MODEL.INIT_WEIGHTS)

        self.model.to(self.device)
        clip_model.to(self.device)
        self.model.train(False)  # frozen parts eval; the engine sets the learnable module's mode
        optimizers = list(self.build_optimizers(learnable).items())
        (first, (optim, sched)), rest = optimizers[0], optimizers[1:]
        self.optim, self.sched = optim, sched
        self.register_model(self.MODEL_NAME, learnable, optim, sched, optim_name=first)
        for name, (o, s) in rest:
            self.register_optimizer(name, o, s)
        self.scaler = self.precision.make_scaler()

    def set_classnames(self, classnames):
        """Swap the label space in place (rebuilds class-derived buffers; learned state is kept)."""
        self.model.set_classnames(classnames)

    def extra_results(self):
        n = getattr(self, "num_trainable_params", None)
        return {"trainable_params": int(n)} if n is not None else None

    # -------------------------------------------------------------------------------------------
    # training step
    # -------------------------------------------------------------------------------------------

    def parse_batch_train(self, batch):
        """``(image, label)``; for a method whose card reads K > 1 views (``views``), ``image`` is the list
        of the K augmented views (view 0 first), each on the device."""
        image = batch["img"]
        if isinstance(image, (list, tuple)):
            views = self.train_views()
            if views == 1:  # DATALOADER.K_TRANSFORMS > 1 for a method that reads one view: the first
                image = image[0].to(self.device)
            else:
                image = [v.to(self.device) for v in image[:views]]
        else:
            image = image.to(self.device)
        label = batch["label"].to(self.device)
        return image, label

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.precision.autocast():
            terms, logits = self.loss_terms(image, label)
        loss = self.step(terms)
        return self.loss_summary(loss, terms, logits, label)

    def loss_summary(self, loss, terms, logits=None, label=None):
        """The per-iteration log values: ``loss`` (the total), every term when there are several,
        and ``acc`` when ``LOG_ACC``."""
        summary = {"loss": loss.item()}
        if len(terms) > 1:
            summary.update({k: float(v.item()) for k, v in terms.items()})
        if self.LOG_ACC and logits is not None:
            summary["acc"] = compute_accuracy(logits, label)[0].item()
        return summary

    def logits_from_image_features(self, features):
        """Logits from stored frozen-tower features (trainers with ``FROZEN_IMAGE_FEATURES``); default:
        the model's ``logits_from_image_features``."""
        return self.model.logits_from_image_features(features)

    def model_inference(self, image, features=None):
        """(B, K) fp32 logits of a test batch. ``features``: the frozen, unprompted image tower's
        features of the batch (from the feature store; trainers with ``FROZEN_IMAGE_FEATURES``): the
        image pass is skipped and ``logits_from_image_features(features)`` gives the logits."""
        with self.precision.autocast():
            if features is not None:
                return self.logits_from_image_features(features).float()
            return self.model(image).float()

    # -------------------------------------------------------------------------------------------
    # checkpoints
    # -------------------------------------------------------------------------------------------

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                folder = osp.join(directory, name)
                avail = sorted(f for f in os.listdir(folder) if f.startswith("model")) if osp.isdir(folder) else []
                hint = f" (available: {avail})" if avail else f" (no checkpoints in {folder})"
                raise UserPathNotFoundError(f'Model not found at "{model_path}"{hint}')
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
            ckpt_epoch = checkpoint.get("epoch")
            state_dict = drop_class_derived_keys(self.convert_state_dict_for(name, dict(state_dict)))
            print(f'Loading weights to {name} from "{model_path}" (epoch = {ckpt_epoch})')
            self._load_learned_state(name, self._models[name], state_dict, model_path)

    def convert_state_dict_for(self, name, state_dict):
        """The checkpoint state of the registered model ``name`` mapped onto its keys (default:
        :meth:`convert_legacy_state_dict`; a composed trainer routes its plug-ins' folders to them)."""
        return self.convert_legacy_state_dict(state_dict)

    def _load_learned_state(self, name, module, state_dict, path):
        # a module whose shapes follow the checkpoint (e.g. a plug-in's head trained on another class list)
        # adapts itself before the shapes are compared
        adapt = getattr(module, "adapt_to_state_dict", None)
        if adapt is not None:
            adapt(state_dict)
        expected = module.state_dict()
        missing = [k for k in expected if k not in state_dict]
        wrong = [
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
        ]
        if missing or wrong:
            lines = [f'Cannot load "{path}" into {name}:']
            if missing:
                lines.append(f"  learnable keys missing from the checkpoint: {missing}")
                lines.append(f"  (is --model-dir the output folder of a {self.cfg.TRAINER.NAME} run? its config.yaml "
                             "names the trainer that wrote it)")
            if wrong:
                lines.append("  learnable keys with another shape: " + "; ".join(wrong))
                lines.append(
                    "  (was it trained with other prompt settings (N_CTX, depth, CSC with another class "
                    "count) or another backbone?)"
                )
            raise UserRuntimeError("\n".join(lines))
        unexpected = [k for k in state_dict if k not in expected]
        if unexpected:
            shown = unexpected[:5] + (["..."] if len(unexpected) > 5 else [])
            print(f"Ignoring {len(unexpected)} checkpoint keys that are not learnable here: {shown}")
        module.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)
