"""The weights digest of a frozen image tower loaded from a file, computed once per file and remembered.

Every feature-store key holds a digest of the frozen image tower's tensors
(:func:`vlprompt.features.keys.module_digest`: about 0.3 s for ViT-B/16 on one CPU core). A sweep runs
one process per run, so an in-process memo does not help; this module remembers the digest *per
weights file* in the store folder (``<store>/weights/<sha256 of the memo key>.json``), so that only the
first run that loads a given file pays for it.

A remembered digest is used only when all of this holds (otherwise the digest is computed, as before):

* the tower was loaded from a **weights file** that the config names unambiguously:
  ``MODEL.BACKBONE.PATH`` set, ``RANDOM_INIT`` off, not a built-in test backbone (the backbone loader
  reads exactly that file or fails), or the tower's ``visual`` module records the file it was loaded
  from (``visual.vlprompt_weights = {"file": path}``, set by a loader that knows it). Random-init
  weights, open_clip pretrained tags and the cache-folder search always compute the digest;
* the file has not changed since this process started: its status-change time (``ctime``, which no
  user call can set back) and its modification time are at least :data:`MARGIN_S` seconds older than
  the process start (so the tensors this process loaded are the file's current content, with room for
  file systems with coarse time stamps), and the memo key holds the file's device, inode, size,
  ``mtime_ns`` and ``ctime_ns``: any rewrite, copy or replacement of the file gives another key;
* the memo key also holds everything else the tower's tensors depend on: the whole
  ``MODEL.BACKBONE`` config node, the tower class, the name, dtype, shape and device type of every
  tensor (so another precision or device is another key), the torch and open_clip versions, and a
  digest of the backbone loader's source file (a changed loader recomputes);
* every parameter of the tower is frozen (``requires_grad`` off): trainers that declare
  ``FROZEN_IMAGE_FEATURES`` never change the pretrained image tower (checkpoints and
  ``MODEL.INIT_WEIGHTS`` load into the learnable module only).

A memo file is JSON (no pickle), written atomically (temporary file + ``os.replace``) and verified on
read: its stored key must equal the requested key exactly and the digest must be a 40-digit hex
string; anything else is ignored (reported once) and recomputed. ``python -m vlprompt.features
clear`` removes the memos with the entries.
"""
import hashlib
import json
import os
import os.path as osp
import re
import uuid

import torch

from .keys import canonical_json, key_digest, module_digest

__all__ = ["MEMO_VERSION", "MARGIN_S", "MEMO_DIR", "process_start_time", "weights_file", "memo_key",
           "WeightsMemo", "tower_weights_digest"]

MEMO_VERSION = 1
MARGIN_S = 2.0
MEMO_DIR = "weights"
_DIGEST_RE = re.compile(r"^[0-9a-f]{40}$")
_START = None
_LOADER_DIGEST = None


def process_start_time():
    """This process's start time (seconds since the epoch, rounded down to the boot time's second), or
    ``None`` where ``/proc`` does not tell it (then no digest is remembered)."""
    global _START
    if _START is None:
        try:
            with open("/proc/self/stat") as f:
                stat = f.read()
            start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
            with open("/proc/stat") as f:
                btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
            _START = btime + start_ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, StopIteration, AttributeError):
            _START = False
    return _START or None


def _loader_digest():
    """SHA-1 of the backbone loader's source (a changed loader never reuses a remembered digest)."""
    global _LOADER_DIGEST
    if _LOADER_DIGEST is None:
        from vlprompt.clip import backbone

        with open(backbone.__file__, "rb") as f:
            _LOADER_DIGEST = hashlib.sha1(f.read()).hexdigest()
    return _LOADER_DIGEST


def weights_file(trainer, tower):
    """The weights file the tower was loaded from, when that is certain (module docstring), else ``None``."""
    recorded = getattr(getattr(tower, "visual", None), "vlprompt_weights", None)
    if isinstance(recorded, dict) and recorded.get("file"):
        return osp.abspath(str(recorded["file"]))
    bb = trainer.cfg.MODEL.BACKBONE
    if not bb.PATH or bb.RANDOM_INIT:
        return None
    from vlprompt.clip.backbone import BUILTIN_BACKBONES, LAZY_BACKBONES

    if bb.NAME in BUILTIN_BACKBONES or bb.NAME in LAZY_BACKBONES:
        return None
    return osp.abspath(osp.expanduser(str(bb.PATH)))


def _structure_digest(module):
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        if torch.is_tensor(t):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{t.device.type}\n".encode())
    return h.hexdigest()


def memo_key(trainer, tower, now_start=None):
    """The memo key of the tower's digest, or ``None`` when no digest may be remembered for it."""
    path = weights_file(trainer, tower)
    if path is None:
        return None
    start = process_start_time() if now_start is None else now_start
    if start is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    limit_ns = int((start - MARGIN_S) * 1e9)
    if st.st_ctime_ns > limit_ns or st.st_mtime_ns > limit_ns:
        return None  # changed (or touched) since this process started: what was loaded is not certain
    if any(p.requires_grad for p in tower.parameters()):
        return None
    import open_clip

    bb = trainer.cfg.MODEL.BACKBONE
    return {
        "version": MEMO_VERSION,
        "kind": "weights_digest",
        "file": path,
        "stat": {"dev": int(st.st_dev), "ino": int(st.st_ino), "size": int(st.st_size),
                 "mtime_ns": int(st.st_mtime_ns), "ctime_ns": int(st.st_ctime_ns)},
        "backbone": {k: str(bb[k]) for k in sorted(bb.keys())},
        "tower": f"{type(tower.visual).__module__}.{type(tower.visual).__qualname__}",
        "structure": _structure_digest(tower.visual),
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "loader": _loader_digest(),
        "digest_fn": "module_digest/sha1/1",
    }


class WeightsMemo:
    """``<root>/weights/*.json``: remembered tower digests (module docstring)."""

    def __init__(self, root, log=print):
        self.folder = osp.join(root, MEMO_DIR)
        self.log = log or (lambda *a, **k: None)
        self._reported = set()

    def path(self, key):
        return osp.join(self.folder, key_digest(key) + ".json")

    def load(self, key):
        path = self.path(key)
        if not osp.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
            ok = isinstance(rec, dict) and rec.get("key") == canonical_json(key) and \
                isinstance(rec.get("digest"), str) and _DIGEST_RE.match(rec["digest"])
        except (OSError, ValueError):
            ok = False
        if not ok:
            if path not in self._reported:
                self._reported.add(path)
                self.log(f"Feature store: weights memo {osp.basename(path)} is corrupt or for another key; "
                         "recomputing the weights digest")
            return None
        return rec["digest"]

    def save(self, key, digest):
        """Write the memo atomically; a failure to write only costs the next run a recomputation."""
        path = self.path(key)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(self.folder, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"key": canonical_json(key), "digest": digest, "file": key["file"]}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.remove(tmp)
            except OSError:
                pass
            self.log(f"Feature store: could not remember the weights digest in {self.folder} ({e.strerror or e}); "
                     "it is recomputed in the next run")
            return None
        return path


def tower_weights_digest(trainer, tower, root, log=print):
    """``(digest, how)`` of the tower's tensors: ``how`` is ``"remembered"`` (from the memo),
    ``"computed"`` (and remembered for the next run) or ``"computed (not rememberable)"``."""
    key = memo_key(trainer, tower)
    if key is None:
        return module_digest(tower.visual), "computed (not rememberable)"
    memo = WeightsMemo(root, log=log)
    digest = memo.load(key)
    if digest is not None:
        return digest, "remembered"
    digest = module_digest(tower.visual)
    memo.save(key, digest)
    return digest, "computed"
