"""CLIP backbones through open_clip.

Names are accepted the CLIP way (``ViT-B/16``, ``RN50``) or the open_clip way (``ViT-B-16``, with
``MODEL.BACKBONE.PRETRAINED_TAG``). Weights come, in this order, from ``MODEL.BACKBONE.PATH``, the
usual cache folders (``MODEL.BACKBONE.CACHE_DIR``, ``$VLPROMPT_WEIGHTS``, ``~/.cache/clip``,
``~/.cache/vlprompt``), and finally open_clip's own download mechanism (needs network). With none of
them available the error names every file looked for and how to obtain it.

Random-weight backbones make every code path runnable without weights:

* ``test-vit-tiny``: a small ViT CLIP (224x224 input, 12+12 layers, narrow and with different text
  and vision widths so width mix-ups fail loudly), built in memory from a fixed seed;
* ``MODEL.BACKBONE.RANDOM_INIT True``: any named architecture at its real size;
* ``test-siglip-tiny`` / ``test-eva02-tiny`` / ``test-pecore-tiny``: small random-weight open_clip
  ``CustomTextCLIP`` models with the tower structure of SigLIP, EVA02 and PE-Core
  (:mod:`vlprompt.clip.towers.tiny`).

Families are told apart by the model's **structure** (:func:`tower_kinds`), never by its name:
open_clip ``CLIP`` (built-in text transformer) or ``CustomTextCLIP`` (``model.text``), and the image
tower (open_clip ViT, ModifiedResNet, timm ViT, timm EVA, other timm trunks).

Pretrained tags: a QuickGELU mismatch between the tag and the model name is an error naming the right
model name (:func:`check_quickgelu`); the tag's preprocessing (mean, std, interpolation, resize mode)
is returned by :func:`backbone_preprocess` and applied to ``cfg.INPUT`` by
:func:`apply_backbone_preprocess` unless the user set those keys.
"""
import os
import os.path as osp
import warnings

import torch

from vlprompt.protocol.backbones import CLIP_NAMES
from vlprompt.utils.errors import UserError
from vlprompt.errors import InvalidValueError, UserRuntimeError


__all__ = [
    "CLIP_NAME_TO_OPENCLIP",
    "OPENAI_FILENAMES",
    "BUILTIN_BACKBONES",
    "register_builtin_backbone",
    "normalize_backbone_name",
    "build_clip_model",
    "build_clip_from_cfg",
    "MissingWeightsError",
    "model_dims",
    "tower_kinds",
    "adapt_model",
    "text_tower",
    "check_quickgelu",
    "QuickGELUMismatchError",
    "backbone_preprocess",
    "apply_backbone_preprocess",
    "input_keys_set_in",
    "VISION_PROMPT_FAMILIES",
    "fp16_weights_supported",
]

# CLIP names -> open_clip architecture names (QuickGELU variants: what OpenAI trained with); the table
# lives in the torch-free protocol layer, which names backbones without importing torch
CLIP_NAME_TO_OPENCLIP = CLIP_NAMES

# File names OpenAI's clip package caches under ~/.cache/clip (basename of its download URLs).
OPENAI_FILENAMES = {
    "RN50": "RN50.pt",
    "RN101": "RN101.pt",
    "RN50x4": "RN50x4.pt",
    "RN50x16": "RN50x16.pt",
    "RN50x64": "RN50x64.pt",
    "ViT-B/32": "ViT-B-32.pt",
    "ViT-B/16": "ViT-B-16.pt",
    "ViT-L/14": "ViT-L-14.pt",
    "ViT-L/14@336px": "ViT-L-14-336px.pt",
}

_OPENCLIP_TO_CLIP = {}
for _clip_name, _oc in CLIP_NAME_TO_OPENCLIP.items():
    _OPENCLIP_TO_CLIP[_oc] = _clip_name
    _OPENCLIP_TO_CLIP[_oc.replace("-quickgelu", "")] = _clip_name


class MissingWeightsError(UserError, FileNotFoundError):
    """No weight file could be found (and none could be downloaded)."""


def _tiny_vit_cfg():
    return dict(
        embed_dim=40,
        quick_gelu=True,
        vision_cfg=dict(image_size=224, layers=12, width=48, patch_size=32, head_width=16, mlp_ratio=2.0),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=12, mlp_ratio=2.0),
    )


def _build_test_vit_tiny(**_):
    import open_clip

    # A fixed seed that does not disturb the caller's RNG streams.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20240101)
        model = open_clip.model.CLIP(**_tiny_vit_cfg())
        # open_clip zero-inits nothing important; make logit_scale CLIP's usual 1/0.07.
    return model


BUILTIN_BACKBONES = {"test-vit-tiny": _build_test_vit_tiny}
#: built-in backbones named by the dotted path of their builder ("package.module:function"), imported
#: only when the backbone is requested (so this layer imports nothing from the layers above it)
LAZY_BACKBONES = {
    "toy-clip": "vlprompt.toy.clip_model:build_toy_clip",
    "test-siglip-tiny": "vlprompt.clip.towers.tiny:build_siglip_tiny",
    "test-eva02-tiny": "vlprompt.clip.towers.tiny:build_eva02_tiny",
    "test-pecore-tiny": "vlprompt.clip.towers.tiny:build_pecore_tiny",
    "test-rn-tiny": "vlprompt.clip.towers.tiny:build_rn_tiny",
    "test-timm-resnet-tiny": "vlprompt.clip.towers.tiny:build_timm_resnet_tiny",
}


def register_builtin_backbone(name, builder):
    """Register ``builder(**kwargs) -> open_clip CLIP`` under ``name``; ``builder`` may be a callable
    or a dotted path ``"package.module:function"`` (imported at first use)."""
    if isinstance(builder, str):
        LAZY_BACKBONES[name] = builder
    else:
        BUILTIN_BACKBONES[name] = builder


def _lazy_builtin(name):
    if name not in BUILTIN_BACKBONES and name in LAZY_BACKBONES:
        import importlib

        module, _, attr = LAZY_BACKBONES[name].partition(":")
        BUILTIN_BACKBONES[name] = getattr(importlib.import_module(module), attr)
    return BUILTIN_BACKBONES.get(name)


def normalize_backbone_name(name):
    """Return ``(clip_name or None, open_clip_name)`` for a CLIP or open_clip model name."""
    import open_clip

    if name in CLIP_NAME_TO_OPENCLIP:
        return name, CLIP_NAME_TO_OPENCLIP[name]
    if name in _OPENCLIP_TO_CLIP:
        return _OPENCLIP_TO_CLIP[name], name
    if name in open_clip.list_models():
        return None, name
    import difflib

    known = list(CLIP_NAME_TO_OPENCLIP) + list(BUILTIN_BACKBONES) + list(LAZY_BACKBONES) + open_clip.list_models()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise InvalidValueError(
        f'Unknown backbone "{name}".{hint} Use a CLIP name ({", ".join(CLIP_NAME_TO_OPENCLIP)}), '
        f"an open_clip model name (open_clip.list_models()), or a built-in: "
        f"{', '.join(sorted(set(BUILTIN_BACKBONES) | set(LAZY_BACKBONES)))}."
    )


def _candidate_files(clip_name, oc_name, path, cache_dir):
    cands = []
    if path:
        return [osp.abspath(osp.expanduser(path))]
    fname = OPENAI_FILENAMES.get(clip_name) if clip_name else None
    names = [n for n in (fname, oc_name + ".pt", oc_name.replace("-quickgelu", "") + ".pt") if n]
    dirs = []
    if cache_dir:
        dirs.append(cache_dir)
    if os.environ.get("VLPROMPT_WEIGHTS"):
        dirs.append(os.environ["VLPROMPT_WEIGHTS"])
    dirs += ["~/.cache/clip", "~/.cache/vlprompt"]
    for d in dirs:
        d = osp.abspath(osp.expanduser(d))
        for n in dict.fromkeys(names):
            cands.append(osp.join(d, n))
    return cands


def _load_weight_file(fpath):
    """Load an OpenAI JIT archive, a plain state dict, or an open_clip checkpoint -> state dict."""
    try:
        with warnings.catch_warnings():  # torch's deprecation notice of jit.load is not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            jit_model = torch.jit.load(fpath, map_location="cpu")
        return {k: v for k, v in jit_model.state_dict().items()}
    except (RuntimeError, ValueError):
        pass
    try:
        with warnings.catch_warnings():  # a pickle's protocol is named in the refusal, not in a warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(fpath, map_location="cpu", weights_only=True)
    except Exception as e:
        from vlprompt.utils.torchtools import unsafe_pickle_message

        unsafe = unsafe_pickle_message(fpath, e, "Weight file")
        if unsafe:
            raise UserRuntimeError(unsafe) from None
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        if "weights_only" in first:  # torch's advice to unpickle is never passed on
            first = ""
        raise UserRuntimeError(
            f'Cannot read weight file "{fpath}" ({type(e).__name__}{": " + first if first else ""}): it is not an '
            "OpenAI CLIP archive, a state dict or an open_clip checkpoint, or it is truncated. Check "
            "MODEL.BACKBONE.PATH (docs/ENGINE.md lists the formats)."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserRuntimeError(f'Weight file "{fpath}" does not hold a state dict (got {type(obj).__name__})')
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _model_from_state_dict(sd, oc_name, fpath):
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    # OpenAI-format state dicts (JIT archives, clip.load models, and open_clip's own CLIP with the
    # OpenAI layout) carry the architecture in their shapes.
    try:
        model = build_model_from_openai_state_dict(dict(sd))
        model.float()
        # open_clip's builder rounds weights to fp16; reload the file's own values at full precision.
        own = {k: v for k, v in sd.items() if k in model.state_dict()}
        model.load_state_dict(own, strict=False)
        return model
    except (KeyError, AttributeError, IndexError, RuntimeError):
        pass
    model = open_clip.create_model(oc_name, pretrained=None, device="cpu")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise UserRuntimeError(
            f'Weight file "{fpath}" does not match architecture {oc_name}: '
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return model


def _network_available(host="huggingface.co", port=443, timeout=3.0):
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _open_clip_pretrained(oc_name, tag, cache_dir, allow_download):
    """open_clip weights from its Hugging Face cache, or downloaded when the network is up.

    Returns ``(model or None, reason)``. Offline, only the local cache is consulted (no retries).
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    pcfg = get_pretrained_cfg(oc_name, tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(oc_name)
        return None, f"unknown pretrained tag '{tag}' for {oc_name}; known tags: {tags}"
    repo = (pcfg.get("hf_hub") or "").strip("/")
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
                cached = try_to_load_from_cache(repo, fname, cache_dir=cache_dir or None)
                if isinstance(cached, str) and osp.isfile(cached):
                    model = open_clip.create_model(oc_name, pretrained=cached, device="cpu", require_pretrained=True)
                    return model, None
        except ImportError:
            pass
    if not allow_download or os.environ.get("VLPROMPT_OFFLINE"):
        return None, "not in the local cache, and downloads are disabled (VLPROMPT_OFFLINE)"
    if not _network_available():
        return None, "not in the local cache, and huggingface.co is unreachable (offline)"
    try:
        model = open_clip.create_model(
            oc_name, pretrained=tag, device="cpu", cache_dir=cache_dir or None, require_pretrained=True
        )
        return model, None
    except Exception as e:
        return None, f"download failed: {type(e).__name__}: {e}"


def _how_to_get(clip_name, oc_name, tag):
    lines = []
    if clip_name in OPENAI_FILENAMES:
        lines.append(
            f"  - OpenAI weights: on a machine with network, run\n"
            f"      python -c \"import open_clip; open_clip.create_model('{oc_name}', pretrained='openai')\"\n"
            f"    or download {OPENAI_FILENAMES[clip_name]} with OpenAI's clip package "
            f"(clip.load('{clip_name}')), and copy it to ~/.cache/clip/{OPENAI_FILENAMES[clip_name]}"
        )
    lines.append("  - or point MODEL.BACKBONE.PATH at a weight file (JIT archive, state dict or open_clip checkpoint)")
    lines.append("  - or set $VLPROMPT_WEIGHTS / MODEL.BACKBONE.CACHE_DIR to the folder holding it")
    lines.append("  - for code paths without weights: MODEL.BACKBONE.RANDOM_INIT True, or MODEL.BACKBONE.NAME test-vit-tiny")
    return "\n".join(lines)


def build_clip_model(name, path="", pretrained_tag="", cache_dir="", random_init=False, allow_download=True):
    """Build an open_clip ``CLIP`` model in fp32, eval mode, on the CPU.

    Returns the model; ``model.vlprompt_backbone`` records the resolved name and weight source.
    """
    import open_clip

    builder = _lazy_builtin(name)
    found = None  # the weights file the model was loaded from, if any
    if builder is not None:
        model = builder(path=path)
        source = f"built-in {name}"
    else:
        clip_name, oc_name = normalize_backbone_name(name)
        if pretrained_tag and not random_init:
            check_quickgelu(name, pretrained_tag)
        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(oc_name, pretrained=None, device="cpu")
            source = "random init"
        else:
            tag = pretrained_tag or ("openai" if clip_name else "")
            cands = _candidate_files(clip_name, oc_name, path, cache_dir)
            found = next((c for c in cands if osp.isfile(c)), None)
            if path and found is None:
                raise MissingWeightsError(
                    f'MODEL.BACKBONE.PATH points at "{cands[0]}", which does not exist.\n'
                    + _how_to_get(clip_name, oc_name, tag)
                )
            if found is not None and not (pretrained_tag and pretrained_tag != "openai" and not path):
                sd = _load_weight_file(found)
                model = _model_from_state_dict(sd, oc_name, found)
                source = found
            else:
                if not tag:
                    raise MissingWeightsError(
                        f'Backbone "{name}" needs MODEL.BACKBONE.PRETRAINED_TAG (e.g. one of '
                        f"{[t for t in open_clip.list_pretrained_tags_by_model(oc_name)][:6]}) or "
                        "MODEL.BACKBONE.PATH"
                    )
                model, err = _open_clip_pretrained(oc_name, tag, cache_dir, allow_download)
                if model is None:
                    looked = "\n".join(f"    {c}" for c in cands)
                    raise MissingWeightsError(
                        f'No weights found for backbone "{name}" (open_clip {oc_name}, pretrained={tag}).\n'
                        f"  Looked for:\n{looked}\n    the Hugging Face cache of open_clip\n"
                        f"  open_clip: {err}\n  How to get them:\n" + _how_to_get(clip_name, oc_name, tag)
                    )
                source = f"open_clip pretrained={tag}"
    model.float()
    model.eval()
    model.vlprompt_backbone = {"name": name, "source": source}
    if found is not None and source == found and getattr(model, "visual", None) is not None:
        # the file the tower was loaded from (the feature store remembers its weights digest per file)
        model.visual.vlprompt_weights = {"file": found}
    adapt_model(model, None if builder is not None else oc_name)
    return model


def adapt_model(model, open_clip_name=None):
    """Prepare an open_clip model for vlprompt (idempotent; returns it).

    * ``open_clip_name``: recorded as ``model.vlprompt_tokenizer_name`` (the tokenizer that
      :func:`vlprompt.clip.tokenizer.model_tokenizer` loads for bidirectional text towers);
    * ``CustomTextCLIP``: ``model.token_embedding`` becomes a plain (unregistered) reference to
      ``model.text.token_embedding``, so code written for open_clip ``CLIP`` that embeds token ids
      (``prompt_init.token_embeddings``) reads the text tower's; nothing enters the state dict and
      ``.to()`` / fp16 conversion act on the one module.
    """
    if open_clip_name and not hasattr(model, "vlprompt_tokenizer_name"):
        model.vlprompt_tokenizer_name = open_clip_name
    text = getattr(model, "text", None)
    if not hasattr(model, "transformer") and text is not None and hasattr(text, "token_embedding"):
        model.__dict__["token_embedding"] = text.token_embedding
    return model


def build_clip_from_cfg(cfg):
    """:func:`build_clip_model` from ``cfg.MODEL.BACKBONE``; checks INPUT.SIZE against the model."""
    bb = cfg.MODEL.BACKBONE
    if not bb.NAME:
        raise InvalidValueError("MODEL.BACKBONE.NAME is empty: set it in the method yaml or with --backbone")
    print(f"Loading CLIP (backbone: {bb.NAME}{', pretrained tag ' + bb.PRETRAINED_TAG if bb.PRETRAINED_TAG else ''})")
    model = build_clip_model(
        bb.NAME, path=bb.PATH, pretrained_tag=bb.PRETRAINED_TAG, cache_dir=bb.CACHE_DIR,
        random_init=bb.RANDOM_INIT,
    )
    dims = model_dims(model)
    res = dims["image_size"]
    print(f"Backbone towers: text {dims['text_kind']}, image {dims['vision_kind']}; "
          f"logit scale exp(s) = {float(model.logit_scale.detach().exp()):.2f}"
          + ("; logit bias not used (it cancels in softmax over classes)" if getattr(model, "logit_bias", None) is not None else ""))
    if tuple(cfg.INPUT.SIZE) != (res, res):
        raise InvalidValueError(
            f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the backbone's input resolution "
            f"{res}x{res} ({bb.NAME}); set INPUT.SIZE ({res}, {res})"
        )
    return model



# --------------------------------------------------------------------------------------------------
# QuickGELU: open_clip only warns when the tag was trained with another activation than the model
# name builds; here it is an error naming the right model name.


class QuickGELUMismatchError(UserError, ValueError):
    """The pretrained tag was trained with a different activation than the named model builds."""


def _quickgelu_sibling(oc_name):
    return oc_name[: -len("-quickgelu")] if oc_name.endswith("-quickgelu") else oc_name + "-quickgelu"


def check_quickgelu(name, tag):
    """Raise :class:`QuickGELUMismatchError` if ``tag`` was trained with QuickGELU and ``name`` builds
    nn.GELU (or the reverse); the message names the model name to use. Unknown tags pass (the loader
    reports them)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    if not tag or _lazy_builtin(name) is not None:
        return
    _, oc_name = normalize_backbone_name(name)
    sibling = _quickgelu_sibling(oc_name)
    own = get_pretrained_cfg(oc_name, tag)
    other = get_pretrained_cfg(sibling, tag) if sibling in open_clip.list_models() else {}
    pcfg = own or other
    if not pcfg:
        return
    tag_qg = bool(pcfg.get("quick_gelu", False))
    model_qg = bool((open_clip.get_model_config(oc_name) or {}).get("quick_gelu", False))
    if tag_qg == model_qg:
        return
    right = sibling if sibling in open_clip.list_models() else None
    act = "QuickGELU" if tag_qg else "nn.GELU"
    built = "QuickGELU" if model_qg else "nn.GELU"
    fix = (f'set MODEL.BACKBONE.NAME "{right}"' if right else
           "no open_clip model name pairs this tag with its activation")
    raise QuickGELUMismatchError(
        f"MODEL.BACKBONE.PRETRAINED_TAG '{tag}' was trained with {act}, but MODEL.BACKBONE.NAME "
        f"'{name}' builds {built} (open_clip {oc_name}); the weights would run with the wrong "
        f"activation. {fix}."
    )


# --------------------------------------------------------------------------------------------------
# Preprocessing of a pretrained tag (mean, std, interpolation, resize mode).

#: INPUT keys written by :func:`apply_backbone_preprocess`, per open_clip preprocess field
PREPROCESS_KEYS = {"mean": "PIXEL_MEAN", "std": "PIXEL_STD", "interpolation": "INTERPOLATION",
                   "resize_mode": "RESIZE_MODE"}


def backbone_preprocess(name, tag=""):
    """The preprocessing a pretrained tag was trained with, from open_clip's tables (no weights read).

    Returns ``{"mean": [3], "std": [3], "interpolation": str, "resize_mode": str, "source": str}`` or
    ``None`` when no tag is known (built-in test backbones, ``MODEL.BACKBONE.PATH`` without a tag).
    CLIP names (``ViT-B/16``) without a tag mean the ``openai`` tag.
    """
    from open_clip.pretrained import get_pretrained_cfg

    if _lazy_builtin(name) is not None:
        return None
    clip_name, oc_name = normalize_backbone_name(name)
    tag = tag or ("openai" if clip_name else "")
    if not tag:
        return None
    pcfg = get_pretrained_cfg(oc_name, tag) or get_pretrained_cfg(_quickgelu_sibling(oc_name), tag)
    if not pcfg:
        return None
    out = {k: pcfg[k] for k in PREPROCESS_KEYS if pcfg.get(k) is not None}
    for k in ("mean", "std"):
        if k in out:
            out[k] = [float(v) for v in out[k]]
    out["source"] = f"pretrained tag '{tag}' of {oc_name}"
    return out


def _flatten_yaml_keys(node, prefix=""):
    keys = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}{k}"
            keys.add(path)
            keys |= _flatten_yaml_keys(v, path + ".")
    return keys


def input_keys_set_in(sources):
    """``INPUT.*`` keys that the user set for the final backbone, from the merge sources in order.

    ``sources``: yaml paths (str) and option lists (``["KEY", value, ...]``), in merge order. A yaml's
    ``INPUT.*`` keys count only if no later source changes ``MODEL.BACKBONE.NAME`` or
    ``PRETRAINED_TAG`` (a method yaml written for ViT-B/16 sets CLIP's mean; that is not a choice
    for the SigLIP backbone given on the command line). Keys in option lists always count.
    Returns a set of key names such as ``{"PIXEL_MEAN"}``.
    """
    import yaml

    per_source = []
    for src in sources:
        if not src:
            continue
        if isinstance(src, str):
            with open(src) as f:
                keys = _flatten_yaml_keys(yaml.safe_load(f) or {})
            per_source.append((keys, False))
        else:
            per_source.append(({str(k) for k in list(src)[0::2]}, True))
    explicit = set()
    for i, (keys, is_opts) in enumerate(per_source):
        later = set().union(*[k for k, _ in per_source[i + 1:]]) if i + 1 < len(per_source) else set()
        backbone_changed_later = bool(later & {"MODEL.BACKBONE.NAME", "MODEL.BACKBONE.PRETRAINED_TAG"})
        if is_opts or not backbone_changed_later:
            explicit |= {k.split(".", 1)[1] for k in keys if k.startswith("INPUT.") and k.count(".") == 1}
    return explicit


def apply_backbone_preprocess(cfg, explicit=()):
    """Write the backbone tag's preprocessing into ``cfg.INPUT`` unless the user set the key.

    ``explicit``: INPUT key names the user set (:func:`input_keys_set_in`). Prints one line per key
    saying which value is used and why; returns ``{key: (value, reason)}``. ``RESIZE_MODE`` is written
    only where ``cfg.INPUT`` has that key. Must run before the data loaders are built. Also runs
    :func:`check_quickgelu` (a mismatch raises :class:`QuickGELUMismatchError` before any data is read).
    """
    bb = cfg.MODEL.BACKBONE
    if bb.NAME and bb.PRETRAINED_TAG and not bb.RANDOM_INIT:
        check_quickgelu(bb.NAME, bb.PRETRAINED_TAG)  # at config time, before any data is read
    pre = backbone_preprocess(bb.NAME, bb.PRETRAINED_TAG) if bb.NAME else None
    used = {}
    if pre is None:
        print("Preprocessing: INPUT.* from the config (no pretrained tag to take preprocessing from)")
        return used
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    for field, key in PREPROCESS_KEYS.items():
        if field not in pre:
            continue
        value = pre[field]
        if key not in cfg.INPUT:
            print(f"Preprocessing: {pre['source']} uses {field}={value}; INPUT.{key} does not exist in this "
                  "config, so it is not applied")
            continue
        current = list(cfg.INPUT[key]) if isinstance(value, list) else cfg.INPUT[key]
        if key in explicit:
            reason = "set in the config" + ("" if current == value else f" ({pre['source']} uses {value})")
            used[key] = (current, reason)
        else:
            cfg.INPUT[key] = value
            reason = f"from {pre['source']}"
            used[key] = (value, reason)
        print(f"Preprocessing: INPUT.{key} = {used[key][0]} ({used[key][1]})")
    if was_frozen:
        cfg.freeze()
    return used


# --------------------------------------------------------------------------------------------------
# Tower structure (never the model name).

#: image towers that take vision prompts, as named in errors
VISION_PROMPT_FAMILIES = (
    "open_clip ViT (OpenAI / LAION / DFN / MetaCLIP CLIP ViTs)",
    "timm ViT trunks (SigLIP, SigLIP2)",
    "timm EVA trunks (EVA02, PE-Core)",
)


def text_tower(model):
    """The module holding the text transformer: the model itself for open_clip ``CLIP`` (built-in
    tower), ``model.text`` for ``CustomTextCLIP``. Raises ``TypeError`` naming the tower otherwise."""
    if hasattr(model, "transformer") and hasattr(model, "token_embedding"):
        return model
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text, "token_embedding"):
        return text
    kind = type(text).__name__ if text is not None else type(model).__name__
    raise TypeError(
        f"{kind}: this text tower is not an open_clip text transformer (Hugging Face text towers are "
        "not supported); supported: open_clip CLIP and CustomTextCLIP with a built-in TextTransformer"
    )


def tower_kinds(model):
    """``(text_kind, vision_kind)`` read from the model's modules.

    text: ``"causal"`` (causal mask, EOT/argmax pooling: CLIP, EVA02, PE-Core), ``"bidirectional"``
    (no mask, last-token pooling: SigLIP, SigLIP2), or ``"unsupported:<why>"``.
    vision: ``"clip_vit"``, ``"resnet"``, ``"timm_vit"``, ``"timm_eva"`` or ``"other:<class>"``.
    """
    try:
        tt = text_tower(model)
        pool = getattr(tt, "pool_type", getattr(tt, "text_pool_type", "argmax"))
        causal = getattr(tt, "attn_mask", None) is not None
        if getattr(tt, "cls_emb", None) is not None:
            text = "unsupported:appended class token (CoCa)"
        elif causal and pool in ("argmax", "eos"):
            text = "causal"
        elif not causal and pool == "last":
            text = "bidirectional"
        else:
            text = f"unsupported:{'causal' if causal else 'bidirectional'} attention with '{pool}' pooling"
    except TypeError as e:
        text = f"unsupported:{e}"
    visual = model.visual
    trunk = getattr(visual, "trunk", None)
    if hasattr(visual, "conv1") and hasattr(visual, "class_embedding"):
        vision = "clip_vit"
    elif type(visual).__name__ == "ModifiedResNet":
        vision = "resnet"
    elif trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
        vision = "timm_eva" if hasattr(trunk, "rope") else "timm_vit"
    else:
        vision = f"other:{type(trunk if trunk is not None else visual).__name__}"
    return text, vision


def model_dims(model):
    """Widths, depths and sizes read from an open_clip CLIP / CustomTextCLIP model (nothing hard-coded).

    Keys: ``d_text``, ``text_layers``, ``text_heads``, ``context_length``, ``d_embed``, ``image_size``,
    ``is_vit`` (the image tower takes vision prompts), ``text_kind`` / ``vision_kind``
    (:func:`tower_kinds`), and for prompt-capable image towers ``d_vision``, ``vision_layers``,
    ``vision_heads``. Text keys are ``None`` for text towers that are not open_clip transformers.
    """
    visual = model.visual
    size = getattr(visual, "image_size", None)
    if size is None:
        size = getattr(visual, "input_resolution", 224)
    if isinstance(size, (tuple, list)):
        size = size[0]
    text_kind, vision_kind = tower_kinds(model)
    is_vit = vision_kind in ("clip_vit", "timm_vit", "timm_eva")
    d = {"image_size": int(size), "is_vit": is_vit, "text_kind": text_kind, "vision_kind": vision_kind}
    try:
        tt = text_tower(model)
    except TypeError:
        tt = None
    if tt is not None:
        proj = tt.text_projection
        if isinstance(proj, torch.nn.Linear):
            d_embed = proj.out_features
        elif proj is not None:
            d_embed = proj.shape[1]
        else:
            d_embed = tt.transformer.width
        d.update(
            d_text=tt.transformer.width,
            text_layers=len(tt.transformer.resblocks),
            text_heads=tt.transformer.resblocks[0].attn.num_heads,
            context_length=tt.positional_embedding.shape[0],
            d_embed=d_embed,
        )
    else:
        d.update(d_text=None, text_layers=None, text_heads=None, context_length=None,
                 d_embed=getattr(getattr(model, "text", None), "output_dim", None))
    if vision_kind == "clip_vit":
        d["d_vision"] = visual.transformer.width
        d["vision_layers"] = len(visual.transformer.resblocks)
        d["vision_heads"] = visual.transformer.resblocks[0].attn.num_heads
    elif vision_kind in ("timm_vit", "timm_eva"):
        trunk = visual.trunk
        d["d_vision"] = trunk.embed_dim
        d["vision_layers"] = len(trunk.blocks)
        d["vision_heads"] = trunk.blocks[0].attn.num_heads
    return d


def fp16_weights_supported(model):
    """``(ok, reason)``: whether ``PREC fp16`` (fp16 weights, vlprompt.clip.precision.convert_clip_to_fp16)
    applies to this model. open_clip's ``convert_weights_to_lp`` handles the open_clip ``CLIP`` towers
    only; on ``CustomTextCLIP`` it fails on a Linear text projection (SigLIP) and timm LayerNorms keep fp32
    weights. Use ``amp`` or ``bf16`` (fp32 weights + autocast) for those."""
    text_kind, vision_kind = tower_kinds(model)
    if hasattr(model, "transformer") and vision_kind in ("clip_vit", "resnet"):
        return True, ""
    return False, (
        f"PREC fp16 (fp16 weights) supports open_clip CLIP towers only; this backbone has a "
        f"{'CustomTextCLIP text tower' if not hasattr(model, 'transformer') else 'CLIP text tower'} and a "
        f"{vision_kind} image tower. Use PREC amp or bf16 (fp32 weights with autocast)"
    )
