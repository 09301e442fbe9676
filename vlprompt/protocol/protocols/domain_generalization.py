"""Domain generalisation (CoOp/CoCoOp): the ImageNet source model of cross-dataset transfer (the same run)
tested, eval-only, on ImageNet-V2, -Sketch, -A and -R.

Steps and folders are cross-dataset's (vlprompt/protocol/protocols/cross_dataset.py); a method card's
recipe for it defaults to its cross-dataset recipe (``recipe_from``), since the source run is shared.
"""
from ..datasets import DG_TARGETS, XD_SHOTS, XD_SOURCE
from . import Protocol, register_protocol
from .cross_dataset import TRANSFER_LAYOUTS, TRANSFER_STEPS

DOMAIN_GENERALIZATION = register_protocol(Protocol(
    name="domain_generalization",
    title="Domain generalization",
    steps=TRANSFER_STEPS,
    datasets=DG_TARGETS,
    shots=XD_SHOTS,
    source=XD_SOURCE,
    only=DG_TARGETS,
    recipe_from="cross_dataset",
    layouts=TRANSFER_LAYOUTS,
    table="transfer",
    figure=None,  # no figure of its own (its tables; the prompt-length figure has a panel for it)
))
