"""Few-shot classification (CoOp): train with K = 1, 2, 4, 8, 16 shots per class on all classes, test on
the full test set. An eval-only method (zero-shot) runs once per dataset, filed under ``shots_0``.

Folders: ``few_shot/<d>/<T>/<cfg>/shots_<K>/seed<S>``; CoOp's own few-shot tree
(``<d>/<T>/<cfg>_<K>shots[/nctx.._csc.._ctp..]/seed<S>``) is read too. Tables: one per shot count, and the
average over datasets per shot count; figure: accuracy against shots.
"""
from ..datasets import DATASETS_11, DG_TARGETS, FEW_SHOT_SHOTS
from ..layout import Layout
from . import Protocol, Step, register_protocol

FEW_SHOT = register_protocol(Protocol(
    name="few_shot",
    title="Few-shot classification",
    steps=(Step("test"),),
    datasets=DATASETS_11,
    shots=FEW_SHOT_SHOTS,
    eval_only_shots=0,
    exclude=DG_TARGETS,
    layouts=(
        Layout("few_shot", "few_shot", "test", ("few_shot", "{dataset}", "{trainer}", "{config}", "shots_{shots}",
                                                "seed{seed}")),
        Layout("coop_few_shot", "few_shot", "test", ("{dataset}", "{trainer}", "{config}_{shots}shots", "seed{seed}"),
               dataset_rule="not_source", readonly=True),
        Layout("coop_few_shot_variant", "few_shot", "test",
               ("{dataset}", "{trainer}", "{config}_{shots}shots", "{variant}", "seed{seed}"),
               dataset_rule="not_source", readonly=True),
    ),
    table="few_shot",
    figure="few_shot",
))
