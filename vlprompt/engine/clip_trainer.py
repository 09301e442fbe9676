"""Shared trainer base for CLIP prompt-learning methods (CoOp, CoCoOp, MaPLe, IVLP, VPT, APLe, MuDPT).

A method subclasses :class:`ClipPromptTrainer`, sets a few class attributes and implements
:meth:`ClipPromptTrainer.build_custom_clip`::

    @TRAINER_REGISTRY.register()
    class MyMethod(ClipPromptTrainer):
        CFG_NODE = "MYMETHOD"                 # cfg.TRAINER.MYMETHOD (must have PREC)
        MODEL_NAME = "prompt_learner"         # registered name = checkpoint folder name
        LOG_ACC = False                       # also log training accuracy (CoOp does)

        def build_custom_clip(self, cfg, classnames, clip_model):
            return MyCustomCLIP(cfg, classnames, clip_model)   # a vlprompt.clip.PromptedCLIP

What the base does (the part every official trainer repeats):

* ``check_cfg``: ``TRAINER.<NODE>.PREC`` in {fp32, fp16, amp, bf16};
* ``build_model``: frozen CLIP from ``cfg`` (``build_clip_from_cfg``), precision applied
  (:class:`vlprompt.clip.Precision`: fp16 weights, or fp32 + autocast; CPU falls back to fp32), the
  method's model built, every parameter frozen except the learnable module(s) (the trainable
  parameters and their count are printed), ``MODEL.INIT_WEIGHTS`` loaded, moved to the device, the
  optimizer/scheduler built over the learnable module only and registered under ``MODEL_NAME``
  (only that module; the frozen CLIP stays in eval mode because ``set_model_mode`` touches only
  registered modules);
* ``forward_backward``: cross-entropy on the logits under the precision's autocast, then
  :meth:`model_backward_and_update` (non-finite loss -> ``detect_anomaly`` error naming epoch and
  batch; GradScaler for amp), ``update_lr()`` at the last batch of the epoch (Dassl contract: the
  engine never steps schedulers);
* ``parse_batch_train`` -> ``(img, label)``;
* ``load_model(directory, epoch=None)``: resolves ``<directory>/<MODEL_NAME>/model-best.pth.tar`` or
  ``model.pth.tar-<E>``, loads it with ``weights_only=True``, drops class-derived keys
  (``token_prefix``/``token_suffix``/...), converts legacy whole-model layouts of the official repos
  (:meth:`convert_legacy_state_dict`), prints ``Loading weights to <name> from "<path>" (epoch = E)``
  and loads non-strictly, but raises if a learnable key is missing or has another shape.

Checkpoints hold only the learned state (the learnable module's ``state_dict``; class-derived
buffers are non-persistent), not the frozen CLIP.
"""
import os
import os.path as osp

import torch.nn.functional as F

from vlprompt.clip import Precision, build_clip_from_cfg, drop_class_derived_keys
from vlprompt.clip.precision import PRECISIONS
from vlprompt.metrics import compute_accuracy
from vlprompt.optim import build_lr_scheduler, build_optimizer
from vlprompt.utils import count_num_param, load_checkpoint, load_pretrained_weights

from .trainer import TrainerX

__all__ = ["ClipPromptTrainer", "add_trainer_cfg"]


class ClipPromptTrainer(TrainerX):
    """Base class of the CLIP prompt-learning trainers (see the module docstring)."""

    #: name of the method's config node under ``cfg.TRAINER`` (e.g. ``"COOP"``)
    CFG_NODE = None
    #: registered model name (= checkpoint sub-folder), as in the official repositories
    MODEL_NAME = "prompt_learner"
    #: add training accuracy to the per-iteration log (CoOp does; CoCoOp/MaPLe log only the loss)
    LOG_ACC = False

    # -------------------------------------------------------------------------------------------
    # hooks for subclasses
    # -------------------------------------------------------------------------------------------

    def build_custom_clip(self, cfg, classnames, clip_model):
        """Return the method's model (``nn.Module``, usually a ``vlprompt.clip.PromptedCLIP``).

        ``clip_model`` is already in the precision's dtype. The model's ``forward(image)`` returns
        (B, K) logits; its learnable parameters live in :meth:`learnable_module`.
        """
        raise NotImplementedError

    def build_optimizers(self, learnable):
        """``(optimizer, scheduler)`` registered with the learnable module (default: one SGD/... over
        all of it). Override to split parameters over several optimisers (APLe); the returned pair
        takes the registered slots (checkpoint ``optimizer``/``scheduler``, the logged LR)."""
        optim = build_optimizer(learnable, self.cfg.OPTIM)
        return optim, build_lr_scheduler(optim, self.cfg.OPTIM)

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
            raise ValueError(f"TRAINER.{self.CFG_NODE}.PREC must be one of {PRECISIONS}, got '{prec}'")

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = Precision(self.method_cfg.PREC, self.device)
        clip_model = build_clip_from_cfg(cfg)
        self.precision.prepare_clip(clip_model)
        if self.precision.mode != "fp32" or self.precision.requested != "fp32":
            print(f"Precision: {self.precision.mode} (requested {self.precision.requested})")

        print("Building custom CLIP")
        self.model = self.build_custom_clip(cfg, classnames, clip_model)
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
        self.optim, self.sched = self.build_optimizers(learnable)
        self.register_model(self.MODEL_NAME, learnable, self.optim, self.sched)
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
        image = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        return image, label

    def compute_loss(self, image, label):
        """``(loss, logits)`` for one batch (CE on the logits); override for other objectives."""
        logits = self.model(image)
        return F.cross_entropy(logits.float(), label), logits

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.precision.autocast():
            loss, logits = self.compute_loss(image, label)
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item()}
        if self.LOG_ACC:
            summary["acc"] = compute_accuracy(logits, label)[0].item()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def model_backward_and_update(self, loss, names=None):
        """zero_grad, anomaly check (names epoch and batch), backward, step; GradScaler for amp."""
        names = self.get_model_names(names)
        self.detect_anomaly(loss)
        self.model_zero_grad(names)
        scaler = getattr(self, "scaler", None)
        if scaler is None:
            loss.backward()
            self.model_update(names)
            return
        scaler.scale(loss).backward()
        for name in names:
            if self._optims[name] is not None:
                scaler.step(self._optims[name])
        scaler.update()

    def model_inference(self, image):
        with self.precision.autocast():
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
                raise FileNotFoundError(f'Model not found at "{model_path}"{hint}')
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
            ckpt_epoch = checkpoint.get("epoch")
            state_dict = drop_class_derived_keys(self.convert_legacy_state_dict(dict(state_dict)))
            print(f'Loading weights to {name} from "{model_path}" (epoch = {ckpt_epoch})')
            self._load_learned_state(name, self._models[name], state_dict, model_path)

    def _load_learned_state(self, name, module, state_dict, path):
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
            if wrong:
                lines.append("  learnable keys with another shape: " + "; ".join(wrong))
                lines.append(
                    "  (was it trained with other prompt settings (N_CTX, depth, CSC with another class "
                    "count) or another backbone?)"
                )
            raise RuntimeError("\n".join(lines))
        unexpected = [k for k in state_dict if k not in expected]
        if unexpected:
            shown = unexpected[:5] + (["..."] if len(unexpected) > 5 else [])
            print(f"Ignoring {len(unexpected)} checkpoint keys that are not learnable here: {shown}")
        module.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=False)


def add_trainer_cfg(cfg, node, defaults):
    """Add ``cfg.TRAINER.<node>`` with ``defaults`` (a dict), keeping keys that already exist.

    For config extensions registered with ``vlprompt.config.register_cfg_extension``: safe to call
    any number of times, and it never fails when the node already exists.
    """
    from yacs.config import CfgNode as CN

    if node not in cfg.TRAINER:
        setattr(cfg.TRAINER, node, CN())
    for key, value in defaults.items():
        if key not in cfg.TRAINER[node]:
            setattr(cfg.TRAINER[node], key, value)
    return cfg

