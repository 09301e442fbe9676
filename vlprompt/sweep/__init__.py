"""Sweeps at scale: protocol presets, a local multi-GPU job runner and Slurm job arrays.

``python -m vlprompt.sweep --help`` for the command line; :func:`plan` / :func:`expand` for the
run list of a protocol. Nothing here imports torch.
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
    expand,
    family_config,
    parse_method,
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
    "expand",
    "family_config",
    "parse_method",
    "plan",
    "read_max_epoch",
    "route_datasets",
    "Runner",
    "Slot",
    "cpu_slots",
    "gpu_slots",
]
