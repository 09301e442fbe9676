"""Cross-dataset transfer (CoOp/CoCoOp): one model trained on the source (ImageNet, 16 shots, all classes)
is tested, eval-only, on each of the 10 other datasets.

The source run is shared with domain generalisation: its folder ``<source>/<T>/<cfg>_<K>shots/seed<S>``
carries the protocol name ``transfer``; a target's folder is ``evaluation/<T>/<cfg>_<K>shots/<d>/seed<S>``
(the protocol follows ``<d>``: an ImageNet variant is a domain-generalisation target). CoOp's own trees
(a ``nctx.._csc.._ctp..`` level) are read too. Table: the source column and the targets, averaged over the
targets.
"""
from ..datasets import DG_TARGETS, XD_SHOTS, XD_SOURCE, XD_TARGETS
from ..layout import Layout
from . import Protocol, Step, register_protocol

#: the steps of both transfer protocols: the shared source training run and the eval-only target tests
TRANSFER_STEPS = (Step("source", on_source=True, eval_only_shots_opt=False, tree="transfer"),
                  Step("target", model_from="source", shots_opt=False, records_shots=False))

#: the folders of both transfer protocols (the target's protocol follows its dataset)
TRANSFER_LAYOUTS = (
    Layout("target", None, "target", ("evaluation", "{trainer}", "{config}_{shots}shots", "{dataset}", "seed{seed}")),
    Layout("source", "transfer", "source", ("{dataset}", "{trainer}", "{config}_{shots}shots", "seed{seed}"),
           dataset_rule="source"),
    Layout("coop_target", None, "target",
           ("evaluation", "{trainer}", "{config}_{shots}shots", "{variant}", "{dataset}", "seed{seed}"), readonly=True),
    Layout("coop_source", "transfer", "source",
           ("{dataset}", "{trainer}", "{config}_{shots}shots", "{variant}", "seed{seed}"),
           dataset_rule="source", readonly=True),
)

CROSS_DATASET = register_protocol(Protocol(
    name="cross_dataset",
    title="Cross-dataset transfer",
    steps=TRANSFER_STEPS,
    datasets=(XD_SOURCE,) + XD_TARGETS,
    shots=XD_SHOTS,
    source=XD_SOURCE,
    exclude=DG_TARGETS,
    refuse_excluded=True,
    layouts=TRANSFER_LAYOUTS,
    table="transfer",
    figure=None,  # no figure of its own (its tables; the prompt-length figure has a panel for it)
))
