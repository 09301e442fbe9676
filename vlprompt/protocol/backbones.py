"""Backbones as the sweep, the output tree and the result tables name them (standard library only).

A backbone is written ``NAME[@TAG]``: ``NAME`` is ``MODEL.BACKBONE.NAME`` (a CLIP name such as
``ViT-B/16``, an open_clip model name such as ``ViT-B-16-SigLIP``, or a built-in test backbone) and
``TAG`` is ``MODEL.BACKBONE.PRETRAINED_TAG`` (open_clip's pretrained tag, e.g. ``webli``). The word
``default`` stands for each recipe's own backbone (the one its config file names).

* :func:`parse_backbone` reads ``NAME[@TAG]``; :func:`backbone_label` is the label the tables use
  (a CLIP name with the ``openai`` tag, or its open_clip QuickGELU twin with that tag, is the CLIP
  name alone: ``ViT-B-16-quickgelu@openai`` is ``ViT-B/16``).
* :func:`backbone_folder` / :func:`backbone_from_folder`: the ``bb-<NAME>[@<TAG>]`` level of the
  output tree (``/`` and other unsafe characters percent-encoded: ``bb-ViT-B%2F16``), read back
  exactly, so two backbones never share a folder (see vlprompt/protocol/tree.py).
* :data:`CONFIG_PREFIXES`: the config-file prefix of each backbone that has method configs of its own
  (``siglip_b16_ctxv1.yaml`` beside ``vit_b16_ctxv1.yaml``); :func:`family_config_name` names the
  sibling of a recipe config for a backbone, :func:`backbone_of_config_name` reads a config name's
  backbone (for runs that recorded none).
"""
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, unquote

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneError",
    "parse_backbone",
    "backbone_label",
    "same_backbone",
    "backbone_folder",
    "backbone_from_folder",
    "BACKBONE_LEVEL",
    "CLIP_NAMES",
    "CONFIG_PREFIXES",
    "family_config_name",
    "backbone_of_config_name",
]

DEFAULT_BACKBONE = "default"

#: CLIP names -> open_clip architecture names (the QuickGELU models OpenAI trained); also
#: vlprompt.clip.backbone.CLIP_NAME_TO_OPENCLIP (kept here, without torch)
CLIP_NAMES = {
    "RN50": "RN50-quickgelu",
    "RN101": "RN101-quickgelu",
    "RN50x4": "RN50x4-quickgelu",
    "RN50x16": "RN50x16-quickgelu",
    "RN50x64": "RN50x64-quickgelu",
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}
_OPENCLIP_TO_CLIP = {v: k for k, v in CLIP_NAMES.items()}

#: config-name prefix -> the backbone (MODEL.BACKBONE.NAME) every config with that prefix names; a test
#: checks each config file under configs/trainers/ against this table
CONFIG_PREFIXES = {
    "vit_b16": "ViT-B/16",
    "vit_b32": "ViT-B/32",
    "vit_l14": "ViT-L/14",
    "rn50": "RN50",
    "rn101": "RN101",
    "siglip_b16": "ViT-B-16-SigLIP",
    "eva02_b16": "EVA02-B-16",
}

BACKBONE_LEVEL = "bb-"
_SAFE = "-._+"


class BackboneError(ValueError):
    """A backbone spec that cannot be read (empty name or tag, a bad folder level)."""


@dataclass(frozen=True)
class Backbone:
    """``MODEL.BACKBONE.NAME`` and, when given, ``PRETRAINED_TAG`` ("" = not given)."""

    name: str
    tag: str = ""

    def __str__(self):
        return self.name + (f"@{self.tag}" if self.tag else "")

    @property
    def label(self):
        return backbone_label(self.name, self.tag)


def _split(text):
    # "ViT-L/14@336px" is a CLIP name of its own, not NAME@TAG
    for clip_name in CLIP_NAMES:
        if "@" in clip_name and (text == clip_name or text.startswith(clip_name + "@")):
            return clip_name, text[len(clip_name) + 1:] if text != clip_name else ""
    name, _, tag = text.partition("@")
    return name, tag


def parse_backbone(text):
    """``NAME[@TAG]`` -> :class:`Backbone`; ``default`` -> None (the recipe's own backbone)."""
    text = str(text).strip()
    if text == DEFAULT_BACKBONE:
        return None
    name, tag = _split(text)
    if not name or (text.endswith("@") and not tag) or "@" in tag:
        raise BackboneError(f"Backbone '{text}' must be NAME or NAME@TAG (e.g. ViT-B/16, ViT-B-16-SigLIP@webli), "
                            f"or '{DEFAULT_BACKBONE}' for each recipe's own backbone")
    return Backbone(name, tag)


def backbone_label(name, tag=""):
    """The table label of a backbone: ``NAME[@TAG]``, with the CLIP spelling for OpenAI's weights."""
    if not name:
        return None
    name, tag = str(name), str(tag or "")
    if name in _OPENCLIP_TO_CLIP and tag == "openai":
        return _OPENCLIP_TO_CLIP[name]
    if name in CLIP_NAMES and tag in ("", "openai"):
        return name
    return name + (f"@{tag}" if tag else "")


def same_backbone(a, b):
    """Whether two ``(name, tag)`` pairs name the same weights; a tag of "" on one side matches any tag
    on the other (it means "whatever the config says")."""
    (na, ta), (nb, tb) = a, b
    if not ta or not tb:
        return _OPENCLIP_TO_CLIP.get(na, na) == _OPENCLIP_TO_CLIP.get(nb, nb)
    return backbone_label(na, ta) == backbone_label(nb, tb)


def backbone_folder(backbone):
    """The output-tree level of a backbone: ``bb-`` + NAME (+ ``@`` + TAG), percent-encoded."""
    if isinstance(backbone, str):
        backbone = parse_backbone(backbone)
        if backbone is None:
            raise BackboneError(f"'{DEFAULT_BACKBONE}' (the recipe's own backbone) has no folder level")
    name = quote(backbone.name, safe=_SAFE)
    return BACKBONE_LEVEL + name + (f"@{quote(backbone.tag, safe=_SAFE)}" if backbone.tag else "")


_FOLDER = re.compile(re.escape(BACKBONE_LEVEL) + r"(?P<name>[A-Za-z0-9%._+-]+)(?:@(?P<tag>[A-Za-z0-9%._+-]+))?\Z")


def backbone_from_folder(segment):
    """The ``NAME[@TAG]`` string of a ``bb-...`` folder level (the inverse of :func:`backbone_folder`)."""
    m = _FOLDER.match(segment)
    if m is None:
        raise BackboneError(f"'{segment}' is not a backbone folder ({BACKBONE_LEVEL}NAME[@TAG])")
    return str(Backbone(unquote(m.group("name")), unquote(m.group("tag") or "")))


def _prefix_of(name):
    """The longest :data:`CONFIG_PREFIXES` prefix of a config base name (``rn50_ep50`` -> ``rn50``), or None."""
    best = None
    for prefix in CONFIG_PREFIXES:
        if (name == prefix or name.startswith(prefix + "_")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def family_config_name(recipe_config, backbone_name):
    """The sibling of a recipe config for another backbone with configs of its own, or None.

    A config ``<p><rest>`` whose prefix ``<p>`` is in :data:`CONFIG_PREFIXES` has the sibling
    ``<q><rest>`` for the backbone listed under ``<q>``: ``vit_b16_ctxv1`` + ``ViT-B-16-SigLIP`` ->
    ``siglip_b16_ctxv1``, ``rn50_imagenet`` + ``ViT-B/16`` -> ``vit_b16_imagenet``. None when the
    backbone has no prefix or is the config's own. Whether the file exists is the caller's question (the
    sweep looks in the method's config folder).
    """
    folder, _, name = str(recipe_config).rpartition("/")
    p = _prefix_of(name)
    if p is None:
        return None
    base = _OPENCLIP_TO_CLIP.get(backbone_name, backbone_name)
    for q, bb in CONFIG_PREFIXES.items():
        if bb == base and q != p:
            return (f"{folder}/" if folder else "") + q + name[len(p):]
    return None


def backbone_of_config_name(config) -> Optional[str]:
    """The backbone a config name's prefix stands for (``rn50_ep50`` -> ``RN50``), or None."""
    p = _prefix_of(str(config).split("/")[0])
    return CONFIG_PREFIXES[p] if p else None
