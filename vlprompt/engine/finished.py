"""A finished run as a frozen model: what ``train.py --eval-only --model-dir DIR [--load-epoch N]`` builds and
loads, for use inside another run (a distillation teacher: PromptKD).

:func:`run_config` reads the run's ``config.yaml`` (the dump train.py writes into every output folder) onto the
defaults of the trainers registered now; :func:`run_checkpoint` names the checkpoint file; :func:`frozen_model`
builds that trainer's model for a given class list from a config and loads a checkpoint file into it through the
trainer's own loading path (:meth:`~vlprompt.engine.clip_trainer.ClipPromptTrainer.load_model`'s: the official
checkpoint conversion, class-derived keys dropped, the missing/shape checks with their messages). Every
parameter of the returned model is frozen and the model is in eval mode.
"""
import os
import os.path as osp
import re

from vlprompt.errors import UserPathNotFoundError, UserRuntimeError

__all__ = ["run_config", "run_checkpoint", "frozen_model", "FrozenRun"]


def run_config(run_dir, where="--model-dir"):
    """The config of the finished run in ``run_dir`` (its ``config.yaml`` merged onto the defaults)."""
    from vlprompt.config import extend_cfg, get_cfg_default, merge_from_file

    path = osp.join(run_dir, "config.yaml")
    if not osp.isfile(path):
        raise UserPathNotFoundError(
            f'{where} "{run_dir}": no config.yaml there; name the output folder of a finished vlprompt run '
            "(train.py writes config.yaml into it)"
        )
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, path)
    return cfg


def run_checkpoint(run_dir, model_name, epoch=None, where="--model-dir"):
    """The checkpoint file of a finished run: ``<run_dir>/<model_name>/model.pth.tar-<epoch>`` for an epoch,
    else ``model-best.pth.tar`` when the run kept one, else its last numbered checkpoint."""
    folder = osp.join(run_dir, model_name)
    if epoch:
        path = osp.join(folder, f"model.pth.tar-{int(epoch)}")
        if not osp.isfile(path):
            raise UserPathNotFoundError(f'{where}: model not found at "{path}"{_available(folder)}')
        return path
    best = osp.join(folder, "model-best.pth.tar")
    if osp.isfile(best):
        return best
    numbered = sorted((int(m.group(1)), f) for f in (os.listdir(folder) if osp.isdir(folder) else [])
                      for m in [re.fullmatch(r"model\.pth\.tar-(\d+)", f)] if m)
    if not numbered:
        raise UserPathNotFoundError(f'{where} "{run_dir}": no checkpoint in {folder}{_available(folder)}')
    return osp.join(folder, numbered[-1][1])


def _available(folder):
    avail = sorted(f for f in os.listdir(folder) if f.startswith("model")) if osp.isdir(folder) else []
    return f" (available: {avail})" if avail else f" (no checkpoints in {folder})"


class FrozenRun:
    """What :func:`frozen_model` returns: ``model`` (frozen, eval mode), ``cfg``, ``trainer`` (the trainer
    class), ``path`` (the checkpoint loaded), ``clip_model`` (the frozen open_clip model it was built on)."""

    def __init__(self, model, cfg, trainer, path, clip_model):
        self.model, self.cfg, self.trainer, self.path, self.clip_model = model, cfg, trainer, path, clip_model


def frozen_model(cfg, classnames, checkpoint, device, where="--model-dir"):
    """Build the model of trainer ``cfg.TRAINER.NAME`` for ``classnames`` from ``cfg`` (its backbone, its
    method node, its precision) and load ``checkpoint`` (a file) into its learnable module the way
    ``--eval-only`` does. Returns a :class:`FrozenRun`."""
    from vlprompt.clip import Precision, build_clip_from_cfg, drop_class_derived_keys
    from vlprompt.utils import load_checkpoint

    from .build import TRAINER_REGISTRY
    from .clip_trainer import ClipPromptTrainer

    name = cfg.TRAINER.NAME
    if name not in TRAINER_REGISTRY.registered_names():
        raise UserRuntimeError(f"{where}: the run was trained by {name!r}, which is not a registered trainer here")
    cls = TRAINER_REGISTRY.get(name)
    if not issubclass(cls, ClipPromptTrainer):
        raise UserRuntimeError(f"{where}: the run's trainer {name} is not a CLIP prompt-learning trainer (its model "
                               "cannot be rebuilt outside its own run)")
    from .trainer import TrainerBase

    shell = cls.__new__(cls)  # the trainer's loading code, without its data and optimisers
    TrainerBase.__init__(shell)
    shell.cfg, shell.device = cfg, device
    shell.precision = Precision(cfg.TRAINER[cls.CFG_NODE].PREC, device)
    clip_model = build_clip_from_cfg(cfg)
    shell.precision.prepare_clip(clip_model)
    shell.model = cls.custom_clip(cfg, list(classnames), clip_model)
    learnable = shell.learnable_module()
    shell.register_model(cls.MODEL_NAME, learnable)
    ckpt = load_checkpoint(checkpoint)
    state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    state = drop_class_derived_keys(shell.convert_state_dict_for(cls.MODEL_NAME, dict(state)))
    print(f'Loading weights to {cls.MODEL_NAME} of the {name} run from "{checkpoint}" (epoch = {ckpt.get("epoch")})')
    shell._load_learned_state(cls.MODEL_NAME, learnable, state, checkpoint)
    model = shell.model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in clip_model.parameters():
        p.requires_grad_(False)
    model.to(device)
    clip_model.to(device)
    model.eval()
    return FrozenRun(model, cfg, cls, checkpoint, clip_model)
