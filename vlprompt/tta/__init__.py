"""Test-time adaptation (TTA): test-time procedures that wrap a finished model, and the run that streams the
test split through them (docs/METHODS.md, "Test-time adaptation").

* :mod:`vlprompt.tta.base` — the procedure interface (:class:`TestTimeProcedure`, :data:`TTA_REGISTRY`), the
  wrapped model (:class:`BaseModel`) and the ``none`` procedure (the base model on view 0);
* :mod:`vlprompt.tta.views` — the official view generation (centre view + random crops/flips, AugMix);
* :mod:`vlprompt.tta.objectives` — confident-view selection, marginal entropy, ECE;
* :mod:`vlprompt.tta.runner` — episodic/online streams, results.json and per-sample outputs.

The procedures themselves are one file each in ``trainers/tta/`` (TPT, C-TPT, TDA, DMN-ZS). The config node
``TTA`` (``TTA.METHOD`` empty: no test-time adaptation, the plain test) is added here; each procedure's own keys go
under ``TTA.<NODE>``.
"""
from vlprompt.config import add_cfg_node, register_cfg_extension

from .base import (
    TTA_REGISTRY,
    BaseModel,
    NoAdapt,
    Sample,
    TestTimeProcedure,
    TTAError,
    get_procedure,
    procedure_names,
    register_tta_node,
)
from .base import TTA_NODES

__all__ = ["TTA_REGISTRY", "BaseModel", "NoAdapt", "Sample", "TestTimeProcedure", "TTAError", "get_procedure",
           "procedure_names", "register_tta_node", "TTA_DEFAULTS", "tta_enabled"]

#: the keys of ``cfg.TTA`` (procedure nodes are added beside them)
TTA_DEFAULTS = dict(
    METHOD="",  # a registered test-time procedure (none, TPT, CTPT, ...); empty: no test-time adaptation
    N_VIEWS=64,  # views per test image (view 0 + 63 augmented), unless the procedure fixes its own
    AUGMIX="auto",  # auto (fine-grained sets on, ImageNet family off) | on | off
    VIEW_SEED=0,  # the views of image i are drawn from generators seeded with (VIEW_SEED, i)
    ORDER="auto",  # auto (episodic: dataset order; online: shuffled) | dataset | shuffle
    ORDER_SEED=0,  # the shuffle's seed
    SAVE_LOGITS=False,  # also write tta_logits.pt (per-sample logits)
    MAX_IMAGES=0,  # > 0: only the first MAX_IMAGES images of the stream (quick checks; recorded, not a full result)
)


@register_cfg_extension
def extend_cfg_tta(cfg):
    tta = add_cfg_node(cfg, "TTA", TTA_DEFAULTS)
    for node, defaults in TTA_NODES.items():
        add_cfg_node(tta, node, defaults)
    return cfg


def tta_enabled(cfg):
    return "TTA" in cfg and bool(str(cfg.TTA.METHOD).strip())
