"""CLIP backbones through open_clip.

Names are accepted the CLIP way (``ViT-B/16``, ``RN50``) or the open_clip way (``ViT-B-16``, with
``MODEL.BACKBONE.PRETRAINED_TAG``). Weights come, in this order, from ``MODEL.BACKBONE.PATH``, the
usual cache folders (``MODEL.BACKBONE.CACHE_DIR``, ``$VLPROMPT_WEIGHTS``, ``~/.cache/clip``,
``~/.cache/vlprompt``), and finally open_clip's own download mechanism (needs network). With none of
them available the error names every file looked for and how to obtain it.

Random-weight backbones make every code path runnable without weights:

* ``test-vit-tiny``: a small ViT CLIP (224x224 input, 12+12 layers, narrow and with different text
  and vision widths so width mix-ups fail loudly), built in memory from a fixed seed;
* ``MODEL.BACKBONE.RANDOM_INIT True``: any named architecture at its real size.
"""
import os
import os.path as osp

import torch

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
]

# CLIP names -> open_clip architecture names (QuickGELU variants: what OpenAI trained with).
CLIP_NAME_TO_OPENCLIP = {
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


class MissingWeightsError(FileNotFoundError):
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
LAZY_BACKBONES = {"toy-clip": "vlprompt.toy.clip_model:build_toy_clip"}


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
    raise ValueError(
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
        jit_model = torch.jit.load(fpath, map_location="cpu")
        return {k: v for k, v in jit_model.state_dict().items()}
    except (RuntimeError, ValueError):
        pass
    try:
        obj = torch.load(fpath, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f'Cannot read weight file "{fpath}": {e}') from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise RuntimeError(f'Weight file "{fpath}" does not hold a state dict (got {type(obj).__name__})')
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
        raise RuntimeError(
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
    if builder is not None:
        model = builder(path=path)
        source = f"built-in {name}"
    else:
        clip_name, oc_name = normalize_backbone_name(name)
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
    return model


def build_clip_from_cfg(cfg):
    """:func:`build_clip_model` from ``cfg.MODEL.BACKBONE``; checks INPUT.SIZE against the model."""
    bb = cfg.MODEL.BACKBONE
    if not bb.NAME:
        raise ValueError("MODEL.BACKBONE.NAME is empty: set it in the method yaml or with --backbone")
    print(f"Loading CLIP (backbone: {bb.NAME})")
    model = build_clip_model(
        bb.NAME, path=bb.PATH, pretrained_tag=bb.PRETRAINED_TAG, cache_dir=bb.CACHE_DIR,
        random_init=bb.RANDOM_INIT,
    )
    res = model_dims(model)["image_size"]
    if tuple(cfg.INPUT.SIZE) != (res, res):
        raise ValueError(
            f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the backbone's input resolution "
            f"{res}x{res} ({bb.NAME}); set INPUT.SIZE ({res}, {res})"
        )
    return model


def model_dims(model):
    """Widths, depths and sizes read from an open_clip CLIP model (nothing hard-coded)."""
    visual = model.visual
    size = getattr(visual, "image_size", None)
    if size is None:
        size = getattr(visual, "input_resolution", 224)
    if isinstance(size, (tuple, list)):
        size = size[0]
    is_vit = hasattr(visual, "conv1") and hasattr(visual, "class_embedding")
    d = {
        "d_text": model.transformer.width,
        "text_layers": len(model.transformer.resblocks),
        "text_heads": model.transformer.resblocks[0].attn.num_heads,
        "context_length": model.positional_embedding.shape[0],
        "d_embed": model.text_projection.shape[1] if model.text_projection is not None else model.transformer.width,
        "image_size": int(size),
        "is_vit": is_vit,
    }
    if is_vit:
        d["d_vision"] = visual.transformer.width
        d["vision_layers"] = len(visual.transformer.resblocks)
        d["vision_heads"] = visual.transformer.resblocks[0].attn.num_heads
    return d
