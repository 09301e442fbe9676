"""The sweep's backbone axis: which methods run on which backbone.

**Tower kinds** come from :mod:`vlprompt.clip.families` (:func:`tower_info`: read from the model's
structure on the ``meta`` device, cached), re-exported here for the planner.

**Method support** (:func:`method_support`): a trainer may declare ``BACKBONE_SUPPORT = {"text": (...),
"vision": (...), "clip_towers": bool}`` (text kinds ``causal``/``bidirectional``; vision kinds
``clip_vit``, ``resnet``, ``timm_vit``, ``timm_eva`` or ``"any"``; ``clip_towers``: open_clip ``CLIP``
towers only). No trainer declares it yet, so :data:`KNOWN_SUPPORT` holds the table of docs/METHODS.md
("Which methods run on which family") until they do; a trainer in neither is planned unchecked, with a
note.
"""
from vlprompt.clip.families import FAMILIES, PROMPTABLE, TEXT_ANY, TowerInfo, family_of, tower_info

__all__ = [
    "TowerInfo",
    "tower_info",
    "FAMILIES",
    "family_of",
    "KNOWN_SUPPORT",
    "method_support",
    "support_problem",
    "describe_support",
]


# ------------------------------------------------------------------------------------------ support
def _s(text=TEXT_ANY, vision="any", clip_towers=False):
    return {"text": tuple(text), "vision": vision if vision == "any" else tuple(vision), "clip_towers": clip_towers}


#: docs/METHODS.md, "Which methods run on which family" (until the trainers declare BACKBONE_SUPPORT)
KNOWN_SUPPORT = {
    **{t: _s() for t in ("ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "KgCoOp", "ProGrad", "TCP", "LinearProbeCLIP",
                         "CLIP_Adapter", "TipAdapter", "TipAdapterF")},
    # prompts in the image tower: transformer image towers only (PromptSRC's text-only variant,
    # PROMPT_DEPTH_VISION 0, also runs on CNN towers: planned only where its default runs)
    **{t: _s(vision=PROMPTABLE) for t in ("VPT", "IVLP", "MaPLe", "MuDPT", "UMuDPT", "APLe", "PromptSRC")},
    "CLIPLoRA": _s(vision=PROMPTABLE),  # LoRA on the attention of both towers (ENCODER text: any image tower)
    "MMRL": _s(text=("causal",), vision=("clip_vit",), clip_towers=True),  # tokens inserted at a later block
}


def method_support(spec):
    """``(support dict, where it comes from)`` of a sweep spec, or ``(None, None)`` when unknown."""
    declared = getattr(spec, "backbone_support", None)
    if declared:
        return _s(declared.get("text", TEXT_ANY), declared.get("vision", "any"),
                  bool(declared.get("clip_towers", False))), f"BACKBONE_SUPPORT of trainer {spec.name}"
    if spec.name in KNOWN_SUPPORT:
        return KNOWN_SUPPORT[spec.name], "docs/METHODS.md (the trainer declares no BACKBONE_SUPPORT yet)"
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
