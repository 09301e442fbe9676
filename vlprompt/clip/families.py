"""What a backbone's towers are, read from the model's structure, never from its name.

:func:`tower_info` instantiates the open_clip model config on PyTorch's ``meta`` device (no memory, no
weights, well under a second) and reads it with :func:`vlprompt.clip.backbone.tower_kinds` /
``fp16_weights_supported``, the same functions the trainers' build-time checks use. Built-in test
backbones are built for real (they are tiny). The answers are kept in ``<cache dir>/backbones.json``
(keyed by the open_clip and timm versions), so callers (the sweep's planning, the results record)
import torch only for a backbone not seen before. The facts planning compares a reading with (:class:`TowerInfo`,
:data:`FAMILIES`, the support values ``ANY_TOWERS`` / ``PROMPTABLE_VISION``) live without torch in
:mod:`vlprompt.protocol.families` and are re-exported here.
"""
import json
import os
import os.path as osp
from dataclasses import asdict
from typing import Optional
from vlprompt.errors import InvalidValueError

from vlprompt.protocol.families import (ANY_TOWERS, FAMILIES, PROMPTABLE, PROMPTABLE_VISION, TEXT_ANY, TowerInfo,
                                       family_of)

__all__ = ["TowerInfo", "tower_info", "FAMILIES", "family_of", "TEXT_ANY", "PROMPTABLE", "ANY_TOWERS",
           "PROMPTABLE_VISION"]


# ----------------------------------------------------------------------------------------- tower kinds
_MEMO = {}


def _versions():
    from importlib import metadata

    out = []
    for dist in ("open_clip_torch", "timm"):
        try:
            out.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist}=none")
    return ";".join(out)


def _cache_file():
    base = os.environ.get("VLPROMPT_CACHE_DIR")
    if base == "off":
        return None
    base = base or osp.join(os.environ.get("XDG_CACHE_HOME") or osp.join(osp.expanduser("~"), ".cache"), "vlprompt")
    return osp.join(base, "backbones.json")


def _read_cache(path, key):
    try:
        with open(path) as f:
            data = json.load(f)
        return data["entries"] if data.get("key") == key else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cache(path, key, entries):
    try:
        os.makedirs(osp.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"key": key, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs time


def _build_meta(name):
    """(model, builtin) for a backbone name: built-ins for real (tiny), open_clip models on ``meta``."""
    import torch
    from open_clip import get_model_config
    from open_clip.model import CLIP, CustomTextCLIP

    from vlprompt.clip import backbone as bb

    builder = bb._lazy_builtin(name)
    if builder is not None:
        return builder(path=""), True
    _, oc_name = bb.normalize_backbone_name(name)  # ValueError naming close matches for an unknown name
    cfg = get_model_config(oc_name)
    if cfg is None:
        raise InvalidValueError(f"open_clip has no model config for {oc_name}")
    cfg = dict(cfg)
    if cfg.get("text_cfg", {}).get("hf_model_name"):
        return None, False  # a Hugging Face text tower: not an open_clip transformer
    custom = cfg.pop("custom_text", False) or "multimodal_cfg" in cfg
    cfg.pop("multimodal_cfg", None)
    with torch.device("meta"):
        model = (CustomTextCLIP if custom else CLIP)(**cfg)
    return model, False


def _compute(name):
    from vlprompt.clip.backbone import fp16_weights_supported, tower_kinds

    model, builtin = _build_meta(name)
    if model is None:
        return TowerInfo(text="unsupported:Hugging Face text tower", vision="unknown", clip_towers=False,
                         fp16_weights=False)
    text, vision = tower_kinds(model)
    return TowerInfo(text=text, vision=vision, clip_towers=hasattr(model, "transformer"),
                     fp16_weights=bool(fp16_weights_supported(model)[0]), builtin=builtin)


def tower_info(name) -> Optional[TowerInfo]:
    """The :class:`TowerInfo` of a backbone name (``MODEL.BACKBONE.NAME``); None for a name whose
    structure cannot be read before the run (``hf-hub:`` models: their config is downloaded at run
    time). ``ValueError`` for an unknown name (the message lists close matches)."""
    if name in _MEMO:
        return _MEMO[name]
    if str(name).startswith(("hf-hub:", "local-dir:")):
        _MEMO[name] = None
        return None
    path, key = _cache_file(), _versions()
    entries = _read_cache(path, key) if path else {}
    if name in entries:
        try:
            _MEMO[name] = TowerInfo(**entries[name])
            return _MEMO[name]
        except TypeError:
            pass
    info = _compute(name)
    _MEMO[name] = info
    if path and not info.builtin:
        entries = _read_cache(path, key)
        entries[name] = asdict(info)
        _write_cache(path, key, entries)
    return info
