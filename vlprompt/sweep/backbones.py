"""The sweep's backbone axis: which methods run on which backbone.

**Tower kinds** come from :func:`vlprompt.clip.families.tower_info` (read from the model's structure on
the ``meta`` device, cached); :func:`tower_info` here imports it only when called, so importing this
module does not import torch.

**Method support** (:func:`method_support`): a method card declares ``backbones={"text": (...),
"vision": (...), "clip_towers": bool}`` (text kinds ``causal``/``bidirectional``; vision kinds
``clip_vit``, ``resnet``, ``timm_vit``, ``timm_eva`` or ``"any"``; ``clip_towers``: open_clip ``CLIP``
towers only; :data:`vlprompt.protocol.families.ANY_TOWERS` / ``PROMPTABLE_VISION`` are the common values).
Every shipped trainer declares it (docs/METHODS.md, "Which methods run on which family"); a trainer
that does not is planned unchecked, with a note. The comparison itself is torch-free
(:mod:`vlprompt.protocol.families`).
"""
from vlprompt.protocol.families import (FAMILIES, TowerInfo, describe_support, family_of, support_dict,
                                        support_problem)

__all__ = [
    "TowerInfo",
    "tower_info",
    "FAMILIES",
    "family_of",
    "method_support",
    "support_problem",
    "describe_support",
]


def tower_info(name):
    """:func:`vlprompt.clip.families.tower_info` (imported on first use: it may need torch)."""
    from vlprompt.clip.families import tower_info as read

    return read(name)


def method_support(card):
    """``(support dict, where it comes from)`` of a method card, or ``(None, None)`` when it declares no
    backbone support."""
    support = support_dict(getattr(card, "backbones", None))
    if support is None:
        return None, None
    return support, f"the method card of trainer {card.name}"
