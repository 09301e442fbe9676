"""The toy CLIP: a small open_clip ViT CLIP pretrained on the toy world, shipped with the package.

``MODEL.BACKBONE.NAME toy-clip`` loads it through the normal backbone loader (importing this module
registers the builder). Architecture (:data:`TOY_CLIP_CFG`): 32x32 input, patch 8 (4x4 patches + CLS),
10 vision layers of width 96, 10 text layers of width 64 (different widths on purpose), joint
embedding 64, CLIP's BPE tokenizer and 77-token context, so every trainer runs unchanged. Prompt
depths up to 10 are valid (the default depth 9 of MaPLe/APLe/IVLP included).

Weight file format (``torch.save`` of plain tensors, numbers and strings; loads with
``weights_only=True``)::

    {"format": "vlprompt-toy-clip-v1",
     "config": TOY_CLIP_CFG,
     "state_dict": {name: fp16 tensor, ... all weights except token_embedding.weight},
     "token_rows": int64 tensor (k,),           # the token ids the pretraining vocabulary used
     "token_values": fp16 tensor (k, width),    # their trained embedding rows
     "token_init_seed": int,                    # the other rows: untrained init, regenerated
     "meta": {...}}                             # how it was trained and what it reached

Only the rows of the token embedding that pretraining touched are stored (all other rows keep their
initial values, which :func:`token_embedding_init` regenerates), so the file stays small. A
``<file>.sha256`` beside the shipped file guards against truncated or corrupt copies.
"""
import os.path as osp

import numpy as np
import torch
from vlprompt.data.integrity import file_digest
from vlprompt.errors import UserError

__all__ = [
    "TOY_CLIP_CFG",
    "TOY_IMAGE_SIZE",
    "TOY_WEIGHTS",
    "REGENERATE_CMD",
    "ToyWeightsError",
    "create_toy_clip",
    "token_embedding_init",
    "build_toy_clip",
    "save_toy_clip",
    "load_toy_clip_file",
    "file_sha256",
]

TOY_IMAGE_SIZE = 32
TOY_CLIP_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": TOY_IMAGE_SIZE, "patch_size": 8, "width": 96, "layers": 10, "head_width": 24,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 10,
                 "mlp_ratio": 2.0},
}
FORMAT = "vlprompt-toy-clip-v1"
TOKEN_INIT_SEED = 20240117
TOKEN_INIT_STD = 0.02

TOY_WEIGHTS = osp.join(osp.dirname(osp.abspath(__file__)), "weights", "toy_clip.pt")
REGENERATE_CMD = "python -m vlprompt.toy.pretrain --out vlprompt/toy/weights/toy_clip.pt"


class ToyWeightsError(UserError, RuntimeError):
    """The toy CLIP weight file is missing, corrupt or of the wrong format."""


def file_sha256(fpath):
    return file_digest(fpath, "sha256")


def token_embedding_init(vocab_size, width, seed=TOKEN_INIT_SEED, std=TOKEN_INIT_STD):
    """The initial token-embedding matrix (numpy PCG64 normal, so it is the same everywhere)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.standard_normal((vocab_size, width)) * std).astype(np.float32))


def create_toy_clip(cfg=None, seed=0):
    """A freshly initialised toy-architecture open_clip ``CLIP`` (fp32), deterministic in ``seed``.

    The token embedding is set to :func:`token_embedding_init` so that rows never trained keep values
    a weight file need not store.
    """
    import open_clip

    cfg = cfg or TOY_CLIP_CFG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.model.CLIP(
            embed_dim=cfg["embed_dim"], vision_cfg=dict(cfg["vision_cfg"]), text_cfg=dict(cfg["text_cfg"]),
            quick_gelu=cfg["quick_gelu"],
        )
    tcfg = cfg["text_cfg"]
    with torch.no_grad():
        model.token_embedding.weight.copy_(token_embedding_init(tcfg["vocab_size"], tcfg["width"]))
    return model.float()


def save_toy_clip(model, fpath, trained_rows, meta=None, cfg=None, write_sha=True):
    """Write ``model`` in the shipped format (fp16, only ``trained_rows`` of the token embedding).

    Written atomically; a ``.sha256`` file is written beside it when ``write_sha``.
    """
    from vlprompt.utils import atomic_write

    cfg = cfg or TOY_CLIP_CFG
    sd = model.state_dict()
    rows = torch.as_tensor(sorted(set(int(r) for r in trained_rows)), dtype=torch.long)
    obj = {
        "format": FORMAT,
        "config": cfg,
        "state_dict": {k: v.detach().to(torch.float16).clone() for k, v in sd.items()
                       if k != "token_embedding.weight" and k != "attn_mask"},
        "token_rows": rows,
        "token_values": sd["token_embedding.weight"][rows].detach().to(torch.float16).clone(),
        "token_init_seed": TOKEN_INIT_SEED,
        "meta": meta or {},
    }
    with atomic_write(fpath, "wb") as f:
        torch.save(obj, f)
    if write_sha:
        digest = file_sha256(fpath)
        with atomic_write(fpath + ".sha256", "w") as f:
            f.write(f"{digest}  {osp.basename(fpath)}\n")
    return fpath


def _fail(fpath, why):
    shipped = osp.abspath(fpath) == osp.abspath(TOY_WEIGHTS)
    how = (f"Regenerate it with:\n    {REGENERATE_CMD}\n(about 15 minutes on 2 CPU cores; see docs/TOY.md)"
           if shipped else
           f"Point MODEL.BACKBONE.PATH at a toy CLIP weight file written by vlprompt.toy.pretrain, or leave it "
           f"empty to use the shipped {TOY_WEIGHTS}\n(regenerate that one with: {REGENERATE_CMD})")
    return ToyWeightsError(f'toy-clip weights "{fpath}": {why}.\n{how}')


def load_toy_clip_file(fpath, check_sha=None):
    """Load a toy CLIP weight file into an fp32 open_clip ``CLIP``; return ``(model, meta)``.

    ``check_sha``: verify ``<fpath>.sha256`` (default: required for the shipped file, used when present
    for any other file).
    """
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.isfile(fpath):
        raise _fail(fpath, "file not found")
    sha_file = fpath + ".sha256"
    if check_sha is None:
        check_sha = osp.isfile(sha_file) or fpath == osp.abspath(TOY_WEIGHTS)
    if check_sha:
        if not osp.isfile(sha_file):
            raise _fail(fpath, f"checksum file {sha_file} is missing")
        with open(sha_file) as f:
            expected = (f.read().split() or [""])[0].strip().lower()
        actual = file_sha256(fpath)
        if actual != expected:
            raise _fail(fpath, f"sha256 mismatch (file is corrupt or truncated): expected {expected}, got {actual}")
    try:
        obj = torch.load(fpath, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _fail(fpath, f"cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise _fail(fpath, f'not a toy CLIP weight file (format {got!r}, expected "{FORMAT}")')
    cfg = obj["config"]
    model = create_toy_clip(cfg)
    if int(obj.get("token_init_seed", TOKEN_INIT_SEED)) != TOKEN_INIT_SEED:
        tcfg = cfg["text_cfg"]
        with torch.no_grad():
            model.token_embedding.weight.copy_(
                token_embedding_init(tcfg["vocab_size"], tcfg["width"], seed=int(obj["token_init_seed"])))
    own = model.state_dict()
    sd = obj["state_dict"]
    missing = [k for k in own if k not in sd and k not in ("token_embedding.weight", "attn_mask")]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        raise _fail(fpath, f"does not match the toy architecture (missing {missing[:4]}, unexpected "
                           f"{unexpected[:4]}, wrong shapes {bad_shape[:4]})")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.float())
        rows = obj["token_rows"].long()
        model.token_embedding.weight[rows] = obj["token_values"].float()
    model.float().eval()
    return model, obj.get("meta", {})


def build_toy_clip(path="", **_):
    """Builder registered as ``toy-clip``: the shipped weights, or the file at ``path``."""
    model, meta = load_toy_clip_file(path or TOY_WEIGHTS)
    model.toy_meta = meta
    return model
