"""Checkpoint helpers (Dassl's ``dassl.utils.torchtools``), safe by construction.

Checkpoints are dicts of plain tensors, numbers, strings and lists (state dicts only, no pickled
objects), written atomically and loaded with ``torch.load(..., weights_only=True)``.
"""
import os.path as osp
import shutil
import warnings
from collections import OrderedDict

import torch

from .tools import atomic_write, mkdir_if_missing

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "resume_from_checkpoint",
    "load_pretrained_weights",
    "count_num_param",
    "strip_module_prefix",
]


def strip_module_prefix(state_dict):
    """Remove a leading ``module.`` (DataParallel/DDP) from every key."""
    out = OrderedDict()
    for k, v in state_dict.items():
        out[k[7:] if k.startswith("module.") else k] = v
    return out


def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Save ``state`` to ``save_dir/<model_name or model.pth.tar-<epoch>>`` atomically.

    Also writes ``save_dir/checkpoint`` holding the basename just written (Dassl behaviour) and,
    with ``is_best``, copies the file to ``model-best.pth.tar``. Returns the path written.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys and "state_dict" in state:
        state = dict(state)
        state["state_dict"] = strip_module_prefix(state["state_dict"])
    epoch = state["epoch"]
    if not model_name:
        model_name = "model.pth.tar-" + str(epoch)
    fpath = osp.join(save_dir, model_name)
    with atomic_write(fpath, "wb") as f:
        torch.save(state, f)
    print(f"Checkpoint saved to {fpath}")
    with atomic_write(osp.join(save_dir, "checkpoint"), "w") as f:
        f.write(f"{osp.basename(fpath)}\n")
    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        with atomic_write(best_fpath, "wb") as fdst, open(fpath, "rb") as fsrc:
            shutil.copyfileobj(fsrc, fdst)
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


def load_checkpoint(fpath, weights_only=True):
    """Load a checkpoint on the CPU (or the default CUDA device when available).

    ``weights_only=True`` (the default) refuses pickled objects. Legacy Dassl checkpoints pickle
    their warmup scheduler; pass ``weights_only=False`` for such files **only if you trust them**.
    """
    if fpath is None:
        raise ValueError("File path is None")
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.exists(fpath):
        raise FileNotFoundError(f'Checkpoint file not found: "{fpath}"')
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        return torch.load(fpath, map_location=map_location, weights_only=weights_only)
    except Exception as e:
        if weights_only and "Unsupported global" in str(e):
            raise RuntimeError(
                f'"{fpath}" contains pickled Python objects (probably a legacy Dassl checkpoint whose '
                "scheduler state pickles its successor). vlprompt loads checkpoints with "
                "weights_only=True. If you trust the file, load it with "
                "load_checkpoint(path, weights_only=False)."
            ) from e
        raise


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None, return_checkpoint=False):
    """Resume from the file named in ``fdir/checkpoint``; returns the stored epoch
    (and the loaded checkpoint dict with ``return_checkpoint=True``)."""
    with open(osp.join(fdir, "checkpoint"), "r") as f:
        model_name = f.readlines()[0].strip("\n")
    fpath = osp.join(fdir, model_name)
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    print(f"Previous epoch: {start_epoch}")
    if return_checkpoint:
        return start_epoch, checkpoint
    return start_epoch


def load_pretrained_weights(model, weight_path):
    """Load the keys of ``weight_path`` whose name and shape match ``model``'s."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint
    model_dict = model.state_dict()
    new_state_dict = OrderedDict()
    matched, discarded = [], []
    for k, v in strip_module_prefix(state_dict).items():
        if k in model_dict and model_dict[k].size() == v.size():
            new_state_dict[k] = v
            matched.append(k)
        else:
            discarded.append(k)
    model_dict.update(new_state_dict)
    model.load_state_dict(model_dict)
    if not matched:
        warnings.warn(
            f'The pretrained weights "{weight_path}" cannot be loaded, '
            "please check the key names manually"
        )
    else:
        print(f"Successfully loaded pretrained weights from {weight_path}")
        if discarded:
            print(f"Layers discarded due to unmatched keys or size: {discarded}")
    return matched


def count_num_param(model=None, params=None, trainable_only=False):
    """Number of parameters of a module (or an iterable of parameters)."""
    if model is not None:
        params = model.parameters()
    return sum(p.numel() for p in params if (p.requires_grad or not trainable_only))
