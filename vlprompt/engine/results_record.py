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
    }
    extra = trainer.extra_results()
    if extra:
        record["extra"] = extra
    return record
