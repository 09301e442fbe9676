"""Checkpoint helpers (Dassl's ``dassl.utils.torchtools``), safe by construction.

Checkpoints are dicts of plain tensors, numbers, strings and lists (state dicts only, no pickled
objects), written atomically and loaded with ``torch.load(..., weights_only=True)``.
"""
import os.path as osp
import re
import shutil
import warnings
from collections import OrderedDict

import torch

from .errors import CheckpointError
from .tools import atomic_write, clean_stale_tmp, mkdir_if_missing

__all__ = [
    "CheckpointError",
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
    with ``is_best``, copies the file to ``model-best.pth.tar``. Files get the umask's mode.
    Partial ``*.tmp`` files left in ``save_dir`` by an interrupted earlier write are removed first
    (:func:`clean_stale_tmp`). Returns the path written.
    """
    mkdir_if_missing(save_dir)
    clean_stale_tmp(save_dir)
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


_WHAT_TO_DO = ("Delete it (a resumed run then starts from the previous checkpoint or from scratch), "
               "or point --model-dir/--resume at a folder with intact checkpoints.")


def unsafe_pickle_message(fpath, e, what="File"):
    """The message for a ``torch.load(weights_only=True)`` failure ``e`` caused by pickled Python
    objects (code that unpickling would run), or None when ``e`` is another failure (damaged bytes).

    The message says what the file is (not a weights-only file), that vlprompt refuses it, and never
    suggests ``weights_only=False``.
    """
    text = str(e)
    low = text.lower()
    if "unsupported global" not in low:
        if "unsupported operand" not in low:
            return None
        try:  # a pickle (protocol >= 2 starts with PROTO) with opcodes the weights-only unpickler refuses
            with open(fpath, "rb") as f:
                head = f.read(2)
                if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
                    return None  # not a pickle at all: damaged bytes or another format
        except OSError:
            return None
    found = re.search(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
    name = next((g for g in (found.groups() if found else ()) if g), None)
    holds = f"pickled Python objects (e.g. {name})" if name else "pickled Python objects or opcodes"
    legacy = (" A legacy Dassl checkpoint (which pickles its warmup scheduler) must be re-saved as plain tensors "
              "where it was written, or retrained." if what == "Checkpoint" else "")
    return (f'{what} "{fpath}" is not a weights-only file: it holds {holds} that only a full unpickler could '
            "load, and unpickling can run arbitrary code, so vlprompt refuses to load it. Use a file of plain "
            f"tensors (a state dict saved with torch.save).{legacy}")


def load_checkpoint(fpath, weights_only=True):
    """Load a checkpoint on the CPU (or the default CUDA device when available).

    Always ``torch.load(..., weights_only=True)``: plain tensors, numbers, strings and containers,
    never pickled objects. A missing, empty, truncated, corrupt or unsafe (pickled objects) file
    raises :class:`CheckpointError` naming the file and saying what to do. ``weights_only`` is
    kept for call compatibility; passing ``False`` raises ``ValueError`` (vlprompt never unpickles).
    """
    if fpath is None:
        raise ValueError("File path is None")
    if weights_only is not True:
        raise ValueError("vlprompt loads checkpoints with weights_only=True only (no pickled objects)")
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.isfile(fpath):
        raise CheckpointError(fpath, f'Checkpoint file not found: "{fpath}"')
    size = osp.getsize(fpath)
    if size == 0:
        raise CheckpointError(fpath, f'Checkpoint "{fpath}" is empty (0 bytes; an interrupted write?). '
                                     + _WHAT_TO_DO)
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        with warnings.catch_warnings():  # a pickle's protocol is named in the refusal, not in a warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(fpath, map_location=map_location, weights_only=True)
    except Exception as e:
        unsafe = unsafe_pickle_message(fpath, e, "Checkpoint")
        if unsafe:
            raise CheckpointError(fpath, unsafe) from None
        text = str(e)
        if "WeightsUnpickler error:" in text:  # not a pickle of plain data: damaged bytes
            text = text.split("WeightsUnpickler error:", 1)[1]
        first = text.strip().splitlines()[0] if text.strip() else ""
        first = first.split(". ")[0][:200]
        if "weights_only" in first:  # torch's advice to unpickle is never passed on
            first = ""
        raise CheckpointError(
            fpath,
            f'Checkpoint "{fpath}" ({size:,} bytes) is truncated or corrupt and cannot be read '
            f"({type(e).__name__}{': ' + first if first else ''}). " + _WHAT_TO_DO,
        ) from (None if "weights_only" in str(e) else e)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(fpath, f'Checkpoint "{fpath}" holds a {type(checkpoint).__name__}, not a dict of '
                                     "state dicts. " + _WHAT_TO_DO)
    return checkpoint


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None, return_checkpoint=False):
    """Resume from the file named in ``fdir/checkpoint``; returns the stored epoch
    (and the loaded checkpoint dict with ``return_checkpoint=True``).

    Partial ``*.tmp`` files in ``fdir`` are removed first. A missing/empty pointer file, a missing,
    truncated or corrupt checkpoint, or one without ``state_dict``/``epoch`` raises
    :class:`CheckpointError` naming the file (the engine catches it to fall back).
    """
    clean_stale_tmp(fdir)
    pointer = osp.join(fdir, "checkpoint")
    try:
        with open(pointer, "r") as f:
            lines = f.readlines()
    except OSError as e:
        raise CheckpointError(pointer, f'Cannot read the checkpoint pointer "{pointer}" ({e.strerror or e}). '
                                       + _WHAT_TO_DO) from None
    model_name = lines[0].strip() if lines else ""
    if not model_name:
        raise CheckpointError(pointer, f'The checkpoint pointer "{pointer}" is empty. ' + _WHAT_TO_DO)
    fpath = osp.join(fdir, model_name)
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    missing = [k for k in ("state_dict", "epoch") if k not in checkpoint]
    if missing:
        raise CheckpointError(osp.abspath(fpath), f'Checkpoint "{osp.abspath(fpath)}" has no {" or ".join(missing)}: '
                                                  "it is not a vlprompt/Dassl training checkpoint. " + _WHAT_TO_DO)
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
