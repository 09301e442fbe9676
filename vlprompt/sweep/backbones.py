"""The sweep's backbone axis: which methods run on which backbone.

**Tower kinds** come from :mod:`vlprompt.clip.families` (:func:`tower_info`: read from the model's
structure on the ``meta`` device, cached), re-exported here for the planner.

**Method support** (:func:`method_support`): a trainer declares ``BACKBONE_SUPPORT = {"text": (...),
"vision": (...), "clip_towers": bool}`` (text kinds ``causal``/``bidirectional``; vision kinds
``clip_vit``, ``resnet``, ``timm_vit``, ``timm_eva`` or ``"any"``; ``clip_towers``: open_clip ``CLIP``
towers only; :data:`vlprompt.clip.families.ANY_TOWERS` / ``PROMPTABLE_VISION`` are the common values).
Every shipped trainer declares it (docs/METHODS.md, "Which methods run on which family"); a trainer
that does not is planned unchecked, with a note.
"""
from vlprompt.clip.families import FAMILIES, TEXT_ANY, TowerInfo, family_of, tower_info

__all__ = [
    "TowerInfo",
    "tower_info",
    "FAMILIES",
    "family_of",
    "method_support",
    "support_problem",
    "describe_support",
]


# ------------------------------------------------------------------------------------------ support
def _s(text=TEXT_ANY, vision="any", clip_towers=False):
    return {"text": tuple(text), "vision": vision if vision == "any" else tuple(vision), "clip_towers": clip_towers}


def method_support(spec):
    """``(support dict, where it comes from)`` of a sweep spec, or ``(None, None)`` when the trainer
    declares no ``BACKBONE_SUPPORT``."""
    declared = getattr(spec, "backbone_support", None)
    if declared:
        return _s(declared.get("text", TEXT_ANY), declared.get("vision", "any"),
                  bool(declared.get("clip_towers", False))), f"BACKBONE_SUPPORT of trainer {spec.name}"
    return None, None


def _fits(support, info):
    if info.text not in support["text"]:
        return False
    if support["vision"] != "any" and info.vision not in support["vision"]:
        return False
    return info.clip_towers or not support["clip_towers"]


def describe_support(support):
    """The families a support dict admits, by name (``CLIP ViT, SigLIP/SigLIP2, EVA02/PE-Core``)."""
    names = []
    for name, text, vision, clip in FAMILIES:
        texts = TEXT_ANY if text == "*" else (text,)
        vis = "other:x" if vision == "other" else vision
        if any(_fits(support, TowerInfo(text=t, vision=vis, clip_towers=clip, fp16_weights=clip)) for t in texts):
            names.append(name)
    return ", ".join(names) if names else "none"


def support_problem(trainer, backbone, info, support):
    """One line saying why ``trainer`` cannot run on ``backbone`` (None when it can)."""
    if info is None or support is None or _fits(support, info):
        return None
    if info.text.startswith("unsupported:"):
        why = f"its text tower is not supported ({info.text.split(':', 1)[1]})"
    elif info.text not in support["text"]:
        why = f"its text tower is {info.text}"
    elif support["vision"] != "any" and info.vision not in support["vision"]:
        why = f"its image tower is {info.vision}"
    else:
        why = "it is not an open_clip CLIP model (CustomTextCLIP towers)"
    return (f"{trainer} cannot run on {backbone} ({info.family}: {why}); {trainer} supports: "
            f"{describe_support(support)}")
