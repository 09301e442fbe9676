"""Test-time adaptation (TPT, C-TPT, TDA, DMN-ZS, ...): a test-time procedure wraps a finished model and adapts
it on the test stream of each dataset, one image at a time (episodic: state reset per image; online: state
carried across the stream in a recorded, seeded order). The runs are ``train.py --eval-only ... TTA.METHOD
<procedure>`` (docs/METHODS.md, "Test-time adaptation"; vlprompt/tta/).

Datasets: the TTA benchmark's 15 — ImageNet, its four variants (the OOD group: A, V2, R, Sketch) and the 10
fine-grained sets (the cross-domain group) — on their test splits. The base model is zero-shot CLIP (eval-only)
or the ImageNet source model of the transfer protocols (16 shots, shared with cross-dataset transfer; CoOp +
TPT in the TPT paper); each dataset's test, ImageNet's included, is a ``tta`` run of that model with a procedure
(``none``: the base model itself, on the same view 0, with the same ECE and per-sample outputs).

Folders: ``test_time/<T>/<cfg>_<K>shots/<d>/seed<S>`` (the procedure and its options are part of ``<cfg>``,
from the run's config options, e.g. ``vit_b16_ep50_ctxv1_methodTPT``). Tables (``test_time`` kind of
vlprompt.results.aggregate): accuracy and ECE per dataset with the OOD average (A/V2/R/Sketch) and the
cross-domain average (the 10 fine-grained sets); one row per base model and procedure, so zero-shot CLIP, the
base model and base model + procedure stand side by side.
"""
from ..datasets import DG_TARGETS, XD_SHOTS, XD_SOURCE, XD_TARGETS
from ..layout import Layout
from . import Protocol, Step, register_protocol

#: the OOD group (its average is the "OOD average" of the TTA papers)
OOD_SETS = DG_TARGETS
#: the cross-domain group
CROSS_DOMAIN_SETS = XD_TARGETS

TEST_TIME = register_protocol(Protocol(
    name="test_time",
    title="Test-time adaptation",
    steps=(Step("source", on_source=True, eval_only_shots_opt=False, tree="transfer"),
           Step("tta", model_from="source", shots_opt=False, records_shots=False, opts=("TTA.METHOD", "none"))),
    datasets=(XD_SOURCE,) + DG_TARGETS + XD_TARGETS,
    shots=XD_SHOTS,
    source=XD_SOURCE,
    recipe_from="cross_dataset",
    layouts=(Layout("test_time", "test_time", "tta",
                    ("test_time", "{trainer}", "{config}_{shots}shots", "{dataset}", "seed{seed}")),),
    table="test_time",
    figure=None,
    extra={"ood": OOD_SETS, "cross_domain": CROSS_DOMAIN_SETS},
))
