"""The registered evaluation protocols (standard library only): one file each.

Part of the protocol registry (see :class:`Protocol`): base2new.py, cross_dataset.py,
domain_generalization.py, few_shot.py.
"""
from dataclasses import dataclass
from typing import Optional

__all__ = ["Protocol", "PROTOCOL_REGISTRY", "register_protocol", "get_protocol"]

PROTOCOL_REGISTRY = {}


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol."""

    name: str
    recipe_from: Optional[str] = None  # the protocol whose recipe a method card's default is, when it names none


def register_protocol(protocol, replace=False):
    if protocol.name in PROTOCOL_REGISTRY and not replace:
        raise KeyError(f"Protocol {protocol.name!r} is already registered")
    PROTOCOL_REGISTRY[protocol.name] = protocol
    return protocol


def get_protocol(name):
    return PROTOCOL_REGISTRY[name]


for _p in (Protocol("base2new"), Protocol("cross_dataset"),
           Protocol("domain_generalization", recipe_from="cross_dataset"), Protocol("few_shot")):
    register_protocol(_p)
