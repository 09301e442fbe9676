"""Refuse a resume whose effective config differs from the one its checkpoint was made with.

A killed run resumes from its newest readable checkpoint (``<model>/model-last.pth.tar`` or a numbered
file), whose optimiser and scheduler states were built from the config of the run that wrote it. If the
command that resumes it asks for another config (``OPTIM.MAX_EPOCH 5`` instead of 3, another LR, another
``N_CTX``), the restored states silently win while ``config.yaml`` and ``results.json`` would show the new
values: a result that did not happen. :func:`check_resume` runs in ``train.py`` before anything in the
output folder changes and, when a resume point exists:

* compares the new effective config, key by key, with the config recorded in the checkpoint (``run_config``,
  written by :class:`vlprompt.engine.checkpoint.Checkpointer` since this check exists);
* for an older checkpoint that records no config, with ``config.yaml`` beside it (written by the run that
  started there; the message says that this was the reference);
* refuses (:class:`ResumeConfigError`, a :class:`vlprompt.utils.UserError`: one ``Error:`` line, exit 2)
  when any key differs other than those in :data:`SAFE_ON_RESUME`, or when no config is known at all;
* returns a :class:`ResumeInfo` naming the resume point and the safe keys that changed (they are applied:
  the new config is the one the run continues with, and results.json records them under ``resume``).

The rule is documented in docs/ENGINE.md ("What happens when things go wrong").
"""
import os
import os.path as osp
from dataclasses import dataclass, field

import yaml

from vlprompt.utils import UserError

from .checkpoint import RUN_CONFIG_KEY, checkpoint_candidates

__all__ = ["SAFE_ON_RESUME", "ResumeConfigError", "ResumeInfo", "check_resume", "resume_directory",
           "config_differences"]

#: Keys that may change when a run resumes: where things are (output, data root, feature store), how
#: often the log and numbered checkpoints are written, how many loader workers run, and how the final
#: test is evaluated (split, evaluator, per-class report, confusion matrix, feature cache, test batch
#: size). None of them changes the training trajectory's meaning; they are applied and recorded.
#: TEST.FINAL_MODEL / TEST.NO_TEST are not safe: they decide whether a best-val model is tracked during
#: training. SEED is not safe: it decides the few-shot draw and the restored RNG belongs to it.
SAFE_ON_RESUME = (
    "OUTPUT_DIR",
    "RESUME",
    "DATASET.ROOT",
    "VERBOSE",
    "FEATURES.DIR",
    "TRAIN.PRINT_FREQ",
    "TRAIN.CHECKPOINT_FREQ",
    "TRAIN.OVERWRITE",
    "DATALOADER.NUM_WORKERS",
    "DATALOADER.TEST.BATCH_SIZE",
    "TEST.SPLIT",
    "TEST.EVALUATOR",
    "TEST.PER_CLASS_RESULT",
    "TEST.COMPUTE_CMAT",
    "TEST.FEATURE_CACHE",
)

#: keys that say where a run is, not what it computes: a change is applied but not reported
_LOCATION_KEYS = ("OUTPUT_DIR", "RESUME", "TRAIN.OVERWRITE")

class ResumeConfigError(UserError, ValueError):
    """A resume whose config differs from the checkpoint's (the message lists the keys)."""


@dataclass
class ResumeInfo:
    """What :func:`check_resume` found: the resume point and the safe keys changed since it."""

    directory: str
    checkpoint: str
    epoch: int
    reference: str  # "checkpoint" or the path of the config.yaml compared with
    changed: dict = field(default_factory=dict)  # key -> [old, new], safe keys only

    def record(self):
        """The ``resume`` entry of results.json."""
        return {"from_epoch": self.epoch, "checkpoint": self.checkpoint, "config_reference": self.reference,
                "changed_keys": {k: list(v) for k, v in self.changed.items()}}


def resume_directory(cfg):
    """The folder a training run resumes from, or None when it trains from scratch (TRAIN.OVERWRITE)."""
    if cfg.RESUME:
        return cfg.RESUME
    if cfg.TRAIN.OVERWRITE:
        return None
    return cfg.OUTPUT_DIR


def _flatten(node, prefix=""):
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(node, tuple):
        node = list(node)
    return {prefix[:-1]: node}


def _plain(cfg_or_yaml):
    """A config (yacs node or its YAML dump) as flat ``{KEY: value}`` with YAML-normalised values."""
    text = cfg_or_yaml if isinstance(cfg_or_yaml, str) else cfg_or_yaml.dump()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return _flatten(data)


def config_differences(old, new):
    """``{KEY: (old, new)}`` for the keys present in both flat configs whose values differ.

    A key present on one side only (a key added or removed by another vlprompt version, or another
    trainer's node) is not a difference: its value cannot have been used by the other run.
    """
    return {k: (old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]}


def _load_quiet(path):
    """The checkpoint dict at ``path`` (plain data only, memory-mapped), or None when unreadable."""
    import torch

    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # not a zip archive: old format
    except Exception:  # unreadable: the resume skips it too (vlprompt.engine.checkpoint)
        return None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "epoch" not in ckpt:
        return None
    return ckpt


def _resume_points(directory):
    """``[(path, checkpoint)]``: the newest readable checkpoint of each model folder in ``directory``."""
    points = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return points
    for name in names:
        folder = osp.join(directory, name)
        if not osp.isdir(folder):
            continue
        for path in checkpoint_candidates(folder):
            if not osp.isfile(path):
                continue
            ckpt = _load_quiet(path)
            if ckpt is not None:
                points.append((path, ckpt))
                break
    return points


def _fmt(v):
    return repr(v)


def check_resume(cfg):
    """Check a training run's resume point against its config (see the module docstring).

    Returns None when the run starts from scratch (no checkpoint, or ``TRAIN.OVERWRITE True``), a
    :class:`ResumeInfo` when it resumes; raises :class:`ResumeConfigError` when it must not resume.
    Reads only: nothing in the folder changes.
    """
    directory = resume_directory(cfg)
    if not directory or not osp.isdir(directory):
        return None
    points = _resume_points(directory)
    if not points:
        return None
    path, ckpt = max(points, key=lambda p: int(p[1]["epoch"]))
    epoch = int(ckpt["epoch"])
    where = f"{directory} ({osp.relpath(path, directory)}, epoch {epoch})"
    fix = (f"Nothing was changed. To resume, run again with the checkpoint's values; to train with the new "
           f"config, use another --output-dir, or add TRAIN.OVERWRITE True to discard the checkpoints of "
           f"{directory} and train from scratch.")
    recorded = ckpt.get(RUN_CONFIG_KEY)
    reference = "checkpoint"
    if not isinstance(recorded, str):
        yaml_path = osp.join(directory, "config.yaml")
        if not osp.isfile(yaml_path):
            raise ResumeConfigError(
                f"Cannot resume from {where}: the checkpoint records no config (written before vlprompt "
                f"recorded it) and there is no config.yaml beside it, so this run's config cannot be checked "
                f"against the one it was made with. {fix}")
        with open(yaml_path) as f:
            recorded = f.read()
        reference = yaml_path
    try:
        old = _plain(recorded)
    except (ValueError, yaml.YAMLError) as e:
        raise ResumeConfigError(
            f"Cannot resume from {where}: the config it was made with ({reference}) cannot be read "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}). {fix}") from None
    new = _plain(cfg)
    diffs = config_differences(old, new)
    unsafe = {k: v for k, v in diffs.items() if k not in SAFE_ON_RESUME}
    if unsafe:
        shown = [f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in list(unsafe.items())[:8]]
        if len(unsafe) > 8:
            shown.append(f"... ({len(unsafe) - 8} more)")
        ref = "" if reference == "checkpoint" else f" (the checkpoint records no config; compared with {reference})"
        raise ResumeConfigError(
            f"Cannot resume from {where} with another config{ref}: {'; '.join(shown)}. The checkpoint's "
            f"state (weights, optimiser, scheduler, RNG, the few-shot draw) belongs to its config, so the result "
            f"would not be what the new config says. {fix}")
    changed = {k: v for k, v in diffs.items() if k not in _LOCATION_KEYS}
    return ResumeInfo(directory=directory, checkpoint=osp.relpath(path, directory), epoch=epoch,
                      reference=reference, changed=changed)


def describe(info):
    """Lines printed when a run resumes with safe keys changed."""
    if info is None or not info.changed:
        return []
    items = "; ".join(f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in info.changed.items())
    return [f"Resuming from {info.checkpoint} (epoch {info.epoch}) with keys that are safe to change on resume "
            f"changed (applied, recorded in results.json under resume.changed_keys): {items}"]

