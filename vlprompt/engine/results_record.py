"""The ``results.json`` record of a run: its schema lives here and only here.

Fields (schema 1; later versions only add fields) are documented in docs/ENGINE.md ("results.json").
``protocol`` / ``role`` / ``run`` come from the protocol layer's reading of the output directory
(``vlprompt.protocol.describe_run_dir``) and are ``null`` for a folder outside the standard tree.
``backbone`` / ``pretrained_tag`` are ``MODEL.BACKBONE.NAME`` / ``PRETRAINED_TAG``; ``backbone_label``
is how the result tables name the backbone (``vlprompt.protocol.backbone_label``); ``backbone_towers``
and ``backbone_family`` describe the towers (read from the model's structure,
``vlprompt.clip.families.tower_info``) and are ``null`` when they cannot be read.
"""
import datetime
import json
import os.path as osp
import time

from vlprompt.config import config_digest
from vlprompt.protocol import backbone_label, describe_run_dir
from vlprompt.utils import package_versions

RESULTS_FILE = "results.json"
RESULTS_SCHEMA = 1

__all__ = ["RESULTS_FILE", "RESULTS_SCHEMA", "build_results_record", "cfg_to_dict"]


def cfg_to_dict(node):
    """A yacs node as plain dicts/lists (JSON-ready)."""
    from yacs.config import CfgNode

    if isinstance(node, CfgNode):
        return {k: cfg_to_dict(v) for k, v in node.items()}
    if isinstance(node, tuple):
        return [cfg_to_dict(v) for v in node]
    return node


def _iso(t):
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _towers(name):
    """(towers dict, family name) of a backbone, or (None, None) when its structure cannot be read."""
    from vlprompt.clip.families import tower_info

    try:
        info = tower_info(name)
    except (ValueError, TypeError, ImportError, RuntimeError, AttributeError):  # a description field only
        return None, None
    if info is None:
        return None, None
    return {"text": info.text, "image": info.vision, "clip_towers": info.clip_towers}, info.family


def _shots_used(trainer):
    """``{"min", "max"}`` training images per class of the run's (few-shot, subsampled) train split."""
    dm = getattr(trainer, "dm", None)
    items = getattr(getattr(dm, "dataset", None), "train_x", None)
    if not items:
        return None
    counts = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    return {"min": min(counts.values()), "max": max(counts.values())}


def _parameter_counts(trainer):
    """(trainable, total) parameters of every module the trainer holds (its registered models and
    module attributes such as ``model``/``clip``), each parameter counted once."""
    import torch.nn as nn

    modules = list(getattr(trainer, "_models", {}).values())
    modules += [v for v in vars(trainer).values() if isinstance(v, nn.Module)]
    seen, trainable, total = set(), 0, 0
    for m in modules:
        if not isinstance(m, nn.Module):
            continue
        for p in m.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
    return trainable, total


def _peak_memory():
    """(peak CPU RSS of this process in MiB, max CUDA memory allocated in MiB or None)."""
    rss = None
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        pass
    return rss


def cost_record(trainer, eval_seconds=None, now=None):
    """The ``cost`` entry of results.json (docs/ENGINE.md, "results.json")."""
    import torch

    now = time.time() if now is None else now
    trainable, total = _parameter_counts(trainer)
    train_s = None
    epochs_run = None
    if hasattr(trainer, "time_start"):  # this process trained (a resumed run: from its resume point)
        end = now - (eval_seconds or 0.0)
        train_s = max(0.0, end - trainer.time_start)
        epochs_run = int(trainer.max_epoch) - int(getattr(trainer, "start_epoch", 0))
    # counted by the engine's one loop as it feeds them (every batch source: loaders, feature views,
    # iteration budgets; the labelled half of labelled + unlabelled pairs)
    train_images = getattr(trainer, "images_trained", None) if train_s is not None else None
    num_test = len(trainer.dm.dataset.test) if getattr(trainer, "dm", None) is not None else None
    cuda_peak = None
    device = getattr(trainer, "device", None)
    if device is not None and getattr(device, "type", "") == "cuda" and torch.cuda.is_available():
        cuda_peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = _peak_memory()

    def rate(n, s):
        return round(n / s, 2) if n and s else None

    return {
        "train_time_s": round(train_s, 3) if train_s is not None else None,
        "eval_time_s": round(eval_seconds, 3) if eval_seconds is not None else None,
        "train_epochs_run": epochs_run,
        "train_images": train_images,
        "train_images_per_s": rate(train_images, train_s),
        "eval_images": num_test,
        "eval_images_per_s": rate(num_test, eval_seconds),
        "peak_rss_mib": round(rss, 1) if rss is not None else None,
        "cuda_max_allocated_mib": round(cuda_peak, 1) if cuda_peak is not None else None,
        "trainable_params": trainable,
        "total_params": total,
    }


def build_results_record(trainer, metrics, eval_seconds=None, world_size=1):
    """The dict written to ``OUTPUT_DIR/results.json`` after an evaluation on the test split."""
    cfg = trainer.cfg
    info = dict(trainer.run_info)
    config_file = info.get("config_file", "")
    now = time.time()
    started = info.get("started_at", trainer._time_created)
    trained = hasattr(trainer, "time_start")
    run = describe_run_dir(cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR else None
    bb = cfg.MODEL.BACKBONE
    towers, family = _towers(bb.NAME) if bb.NAME else (None, None)
    record = {
        "schema": RESULTS_SCHEMA,
        "trainer": cfg.TRAINER.NAME,
        "dataset": getattr(trainer.dm.dataset, "record_name", None) or cfg.DATASET.NAME,
        "subsample": cfg.DATASET.SUBSAMPLE_CLASSES,
        "shots": cfg.DATASET.NUM_SHOTS,
        "seed": cfg.SEED,
        "backbone": bb.NAME,
        "pretrained_tag": bb.PRETRAINED_TAG,
        "backbone_label": backbone_label(bb.NAME, bb.PRETRAINED_TAG),
        "backbone_towers": towers,
        "backbone_family": family,
        "config_file": config_file,
        "config_name": osp.splitext(osp.basename(config_file))[0] if config_file else "",
        "dataset_config_file": info.get("dataset_config_file", ""),
        "config_digest": config_digest(cfg),
        "phase": info.get("phase", "train" if trained else "eval"),
        "model_dir": info.get("model_dir", ""),
        "load_epoch": info.get("load_epoch"),
        "split": "test",
        "metrics": {k: float(v) for k, v in metrics.items()},
        "num_classes": int(trainer.num_classes),
        "num_test": len(trainer.dm.dataset.test),
        # the real number of training images per class (a K-shot request larger than a class's images
        # uses all of them): {"min", "max"}; null when the trainer has no dataset
        "shots_used": _shots_used(trainer),
        "epochs": int(trainer.max_epoch) if trained else 0,
        "wall_time_s": round(now - started, 3),
        "eval_time_s": round(eval_seconds, 3) if eval_seconds is not None else None,
        "started_at": _iso(started),
        "finished_at": _iso(now),
        "output_dir": osp.abspath(cfg.OUTPUT_DIR),
        "device": str(trainer.device),
        "world_size": int(world_size),
        "versions": package_versions(),
        "protocol": run.get("protocol") if run else None,
        "role": run.get("role") if run else None,
        "run": run,
        "config": json.loads(json.dumps(cfg_to_dict(cfg), default=str)),
        # a resumed run: the epoch and checkpoint it resumed from, and the keys that are safe to change on
        # resume that were changed (vlprompt.engine.resume_guard); null for a run trained in one go
        "resume": info.get("resume"),
        # what the run cost: times, images/s, peak memory, parameter counts (cost_record)
        "cost": cost_record(trainer, eval_seconds=eval_seconds, now=now),
    }
    extra = trainer.extra_results()
    if extra:
        record["extra"] = extra
    tta = getattr(trainer, "tta_info", None)  # a test-time run (vlprompt.tta.runner): procedure, order, views
    if tta:
        record["tta"] = tta
    return record
