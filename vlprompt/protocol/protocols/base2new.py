"""Base-to-novel generalisation (CoCoOp's protocol): train on the base half of the classes with 16 shots, test
on the base classes (the training run's own test) and, eval-only, on the new half.

Folders: ``base2new/train_base/<d>/shots_<K>/<T>/<cfg>/seed<S>`` and ``base2new/test_new/...``. Table: per
dataset base, novel and their harmonic mean; the 11-dataset average HM is the HM of the averaged base and
novel accuracies (the papers' convention).
"""
from ..datasets import B2N_SHOTS, DATASETS_11, DG_TARGETS
from ..layout import Layout
from . import Protocol, Step, register_protocol

_TAIL = ("{dataset}", "shots_{shots}", "{trainer}", "{config}", "seed{seed}")

BASE2NEW = register_protocol(Protocol(
    name="base2new",
    title="Base-to-novel generalization",
    steps=(Step("base", subsample="base"), Step("novel", model_from="base", subsample="new")),
    datasets=DATASETS_11,
    shots=B2N_SHOTS,
    exclude=DG_TARGETS,
    layouts=(Layout("base2new_base", "base2new", "base", ("base2new", "train_base") + _TAIL),
             Layout("base2new_novel", "base2new", "novel", ("base2new", "test_new") + _TAIL)),
    table="base2new",
    figure="base2new",
))
