"""Sweeps at scale: protocol presets, a local multi-GPU job runner and Slurm job arrays.

``python -m vlprompt.sweep --help`` for the command line; :func:`plan` / :func:`expand` for the
run list of a protocol. The dataset lists and the output tree come from
``vlprompt.protocol``; the default configs from the trainers' method cards (:func:`registry_specs`,
which loads the trainers and so torch, unless specs are passed); the backbone axis (``backbones=``,
``--backbones``) from :mod:`vlprompt.sweep.backbones`.
"""
from .protocols import (
    DATASETS_11,
    DEFAULT_SEEDS,
    DG_TARGETS,
    FEW_SHOT_SHOTS,
    PROTOCOLS,
    Method,
    Run,
    SweepError,
    UnsupportedBackbone,
    expand,
    family_config,
    parse_method,
    registry_specs,
    plan,
    read_max_epoch,
    route_datasets,
)
from .runner import Runner, Slot, cpu_slots, gpu_slots

__all__ = [
    "DATASETS_11",
    "DEFAULT_SEEDS",
    "DG_TARGETS",
    "FEW_SHOT_SHOTS",
    "PROTOCOLS",
    "Method",
    "Run",
    "SweepError",
    "UnsupportedBackbone",
    "expand",
    "family_config",
    "parse_method",
    "registry_specs",
    "plan",
    "read_max_epoch",
    "route_datasets",
    "Runner",
    "Slot",
    "cpu_slots",
    "gpu_slots",
]
