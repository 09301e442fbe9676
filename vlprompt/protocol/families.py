"""Backbone families as the torch-free layer knows them (standard library only).

What a backbone's towers are is read from the model itself by :func:`vlprompt.clip.families.tower_info`
(torch, the ``meta`` device, a cache); the facts here are what planning needs to *compare* such a reading
with what a method supports, without torch:

* :class:`TowerInfo`: the reading (text kind, image kind, whether the towers are open_clip ``CLIP``'s).
* :data:`FAMILIES`: the families the docs name, and :func:`family_of` (a reading -> its family name).
* The support values a method card declares (``backbones=`` of :class:`vlprompt.protocol.card.MethodCard`):
  :data:`ANY_TOWERS` (every family whose towers vlprompt can build) and :data:`PROMPTABLE_VISION` (every
  family whose image tower takes vision prompts); :func:`support_dict` reads any such value,
  :func:`support_problem` says in one line why a method cannot run on a backbone and
  :func:`describe_support` names the families a value admits.
"""
from dataclasses import dataclass

__all__ = ["TowerInfo", "FAMILIES", "family_of", "TEXT_ANY", "PROMPTABLE", "ANY_TOWERS", "PROMPTABLE_VISION",
           "support_dict", "support_fits", "describe_support", "support_problem"]

TEXT_ANY = ("causal", "bidirectional")
PROMPTABLE = ("clip_vit", "timm_vit", "timm_eva")  # image towers that take vision prompts

#: the common ``backbones=`` values of a method card: every family whose towers vlprompt can build, and
#: every family whose image tower takes vision prompts
ANY_TOWERS = {"text": TEXT_ANY, "vision": "any"}
PROMPTABLE_VISION = {"text": TEXT_ANY, "vision": PROMPTABLE}

#: (name, text kind, vision kind, open_clip CLIP class) of the families the docs name; "*" = any
FAMILIES = (
    ("CLIP ViT", "causal", "clip_vit", True),
    ("CLIP ResNet", "causal", "resnet", True),
    ("SigLIP/SigLIP2", "bidirectional", "timm_vit", False),
    ("EVA02/PE-Core", "causal", "timm_eva", False),
    ("causal text + timm ViT (e.g. MobileCLIP)", "causal", "timm_vit", False),
    ("other timm trunks", "*", "other", False),
)


@dataclass(frozen=True)
class TowerInfo:
    """What planning needs to know about a backbone's towers."""

    text: str  # causal | bidirectional | unsupported:<why>
    vision: str  # clip_vit | resnet | timm_vit | timm_eva | other:<class>
    clip_towers: bool  # open_clip CLIP (built-in text transformer), not CustomTextCLIP
    fp16_weights: bool  # PREC fp16 (fp16 weights) applies (vlprompt.clip.backbone.fp16_weights_supported)
    builtin: bool = False  # a built-in test backbone (no pretrained tag needed)

    @property
    def family(self):
        return family_of(self)


def family_of(info):
    """The family name of a :class:`TowerInfo` (``SigLIP/SigLIP2``, ...) or ``text X, image Y``."""
    if info.text.startswith("unsupported:"):
        return "unsupported text tower"
    for name, text, vision, clip in FAMILIES:
        vis_ok = info.vision.startswith("other:") if vision == "other" else info.vision == vision
        if vis_ok and text in ("*", info.text) and (vision == "other" or clip == info.clip_towers):
            return name
    return f"text {info.text}, image {info.vision}"


# ------------------------------------------------------------------------------------------ support
def support_dict(declared):
    """A ``backbones=`` value as ``{"text": (kinds), "vision": "any" | (kinds), "clip_towers": bool}``
    (tuples, whatever sequences were given; JSON round trips keep their meaning); None stays None."""
    if not declared:
        return None
    vision = declared.get("vision", "any")
    return {"text": tuple(declared.get("text", TEXT_ANY)), "vision": vision if vision == "any" else tuple(vision),
            "clip_towers": bool(declared.get("clip_towers", False))}


def support_fits(support, info):
    """Whether a backbone whose towers are ``info`` meets ``support`` (a :func:`support_dict`)."""
    if info.text not in support["text"]:
        return False
    if support["vision"] != "any" and info.vision not in support["vision"]:
        return False
    return info.clip_towers or not support["clip_towers"]


def describe_support(support):
    """The families a support value admits, by name (``CLIP ViT, SigLIP/SigLIP2, EVA02/PE-Core``)."""
    support = support_dict(support)
    names = []
    for name, text, vision, clip in FAMILIES:
        texts = TEXT_ANY if text == "*" else (text,)
        vis = "other:x" if vision == "other" else vision
        if any(support_fits(support, TowerInfo(text=t, vision=vis, clip_towers=clip, fp16_weights=clip))
               for t in texts):
            names.append(name)
    return ", ".join(names) if names else "none"


def support_problem(trainer, backbone, info, support):
    """One line saying why ``trainer`` cannot run on ``backbone`` (None when it can, or when either the
    reading ``info`` or the ``support`` is unknown)."""
    support = support_dict(support)
    if info is None or support is None or support_fits(support, info):
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
