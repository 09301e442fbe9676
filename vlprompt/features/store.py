"""The frozen-feature store: image features of a frozen image tower, computed once and reused.

One entry = one safetensors file ``<DIR>/<key digest>.safetensors`` holding the tensor ``features``
(N, d) and, in the safetensors header, the full key (canonical JSON), the SHA-256 of the tensor's
bytes and a few descriptive fields for the size report. No pickle anywhere.

Safety:

* **atomic writes**: an entry is written to a temporary file with a unique name in the same folder,
  flushed and fsync'ed, then ``os.replace``'d onto its final name. Readers never see a partial entry;
  two processes writing the same entry each complete their own temporary file and the last rename
  wins (both contents are valid and equal).
* **verified reads**: the header must parse, the stored key must equal the requested key exactly
  (otherwise the entry is never used) and the tensor's SHA-256 must match. A truncated or corrupt
  entry is reported once per process and treated as missing (recomputed and rewritten).
* **full disk**: a failed write removes its temporary file and raises :class:`FeatureStoreError`
  naming the folder, the size needed and what to do; no partial entry is left.

Location: ``FEATURES.DIR`` if set, else ``$VLPROMPT_FEATURE_CACHE``, else ``~/.cache/vlprompt/features``
(:func:`default_store_dir`), so every run of a sweep shares it without any wiring.
"""
import errno
import hashlib
import json
import os
import os.path as osp
import time
import uuid

import torch

from vlprompt.utils.errors import UserError

from .keys import canonical_json, key_digest
from .weights import MEMO_DIR

__all__ = ["FeatureStore", "FeatureStoreError", "default_store_dir", "ENV_VAR", "SUFFIX"]

ENV_VAR = "VLPROMPT_FEATURE_CACHE"
SUFFIX = ".safetensors"
TMP_MARK = ".tmp-"
_CHUNK = 1 << 22

_REPORTED = set()  # (path, reason): each problem entry is reported once per process


class FeatureStoreError(UserError, RuntimeError):
    """The store cannot be written (full disk, read-only folder); the message says what to do."""


def default_store_dir(configured=""):
    """``configured`` (``FEATURES.DIR``) if given, else ``$VLPROMPT_FEATURE_CACHE``, else
    ``~/.cache/vlprompt/features``."""
    if configured:
        return osp.abspath(osp.expanduser(str(configured)))
    env = os.environ.get(ENV_VAR, "")
    if env:
        return osp.abspath(osp.expanduser(env))
    return osp.join(osp.expanduser("~"), ".cache", "vlprompt", "features")


def _tensor_sha256(t):
    from .keys import _tensor_bytes

    return hashlib.sha256(_tensor_bytes(t)).hexdigest()


def _write_chunks(f, data):
    """Write ``data`` to ``f`` in chunks (a function of its own so that tests can simulate a full disk)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start:start + _CHUNK])


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GiB"


class FeatureStore:
    """A folder of verified feature entries (see the module docstring).

    ``log``: where reports go (default ``print``); each corrupt or mismatching entry is reported once
    per process.
    """

    def __init__(self, root=None, log=print):
        self.root = default_store_dir(root or "")
        self.log = log or (lambda *a, **k: None)
        self.hits = 0
        self.misses = 0

    # ---- paths -------------------------------------------------------------------------------

    def path(self, key):
        return osp.join(self.root, key_digest(key) + SUFFIX)

    def _report(self, path, reason, message):
        if (path, reason) in _REPORTED:
            return
        _REPORTED.add((path, reason))
        self.log(f"Feature store: {message}")

    # ---- read --------------------------------------------------------------------------------

    def _read(self, path):
        """``(tensor, metadata)`` of the file at ``path``; raises ValueError on any defect."""
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if "features" not in f.keys():
                    raise ValueError("no 'features' tensor")
                tensor = f.get_tensor("features")
        except ValueError:
            raise
        except Exception as e:  # safetensors raises its own error types on a bad header / short file
            raise ValueError(f"{type(e).__name__}: {e}") from None
        if "key" not in meta or "sha256" not in meta:
            raise ValueError("header lacks the key or the checksum")
        if _tensor_sha256(tensor) != meta["sha256"]:
            raise ValueError("checksum mismatch (the data is corrupt)")
        return tensor, meta

    def load(self, key):
        """The stored tensor for ``key``, or ``None`` (missing, corrupt or not for this key)."""
        path = self.path(key)
        if not osp.isfile(path):
            return None
        try:
            tensor, meta = self._read(path)
        except (ValueError, OSError) as e:
            self._report(path, "corrupt", f"entry {osp.basename(path)} is truncated or corrupt ({e}); recomputing it")
            return None
        if meta["key"] != canonical_json(key):
            self._report(path, "key", f"entry {osp.basename(path)} was computed for another key; not used, recomputing")
            return None
        return tensor

    # ---- write -------------------------------------------------------------------------------

    def save(self, key, tensor, info=None):
        """Write ``tensor`` under ``key`` atomically; returns the entry's path."""
        from safetensors.torch import save as st_save

        tensor = tensor.detach().contiguous().cpu()
        meta = {
            "key": canonical_json(key),
            "sha256": _tensor_sha256(tensor),
            "created": f"{time.time():.3f}",
            "info": json.dumps(info or {}, sort_keys=True, default=str),
        }
        data = st_save({"features": tensor}, metadata=meta)
        path = self.path(key)
        tmp = f"{path}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(self.root, exist_ok=True)
            with open(tmp, "wb") as f:
                _write_chunks(f, data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                if osp.exists(tmp):
                    os.remove(tmp)
            except OSError:
                pass
            if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                why = "no space left on the device"
            else:
                why = f"{e.strerror or e}"
            raise FeatureStoreError(
                f"Cannot write a feature-store entry ({_human(len(data))}) in {self.root}: {why}. No partial entry "
                f"was left. Free some space (python -m vlprompt.features clear --dir {self.root}), point "
                f"FEATURES.DIR or ${ENV_VAR} to another folder, or turn the store off (TEST.FEATURE_CACHE False)."
            ) from None
        return path

    def get_or_compute(self, key, compute, info=None):
        """``(tensor, hit)``: the stored tensor for ``key``, or ``compute()`` stored and returned."""
        tensor = self.load(key)
        if tensor is not None:
            self.hits += 1
            return tensor, True
        self.misses += 1
        tensor = compute()
        self.save(key, tensor, info=info)
        return tensor, False

    # ---- report / clear ----------------------------------------------------------------------

    def entries(self):
        """One dict per entry file: path, bytes, and (if readable) dataset, split, arch, shape."""
        out = []
        if not osp.isdir(self.root):
            return out
        from safetensors import safe_open

        for name in sorted(os.listdir(self.root)):
            if not name.endswith(SUFFIX):
                continue
            path = osp.join(self.root, name)
            row = {"path": path, "bytes": osp.getsize(path), "ok": True}
            try:
                with safe_open(path, framework="pt", device="cpu") as f:
                    meta = f.metadata() or {}
                    shape = list(f.get_slice("features").get_shape())
                key = json.loads(meta["key"])
                row.update(dataset=key.get("dataset"), split=key.get("split"), arch=key["backbone"]["arch"],
                           view=key.get("view"), shape=shape)
            except Exception:
                row["ok"] = False
            out.append(row)
        return out

    def temporaries(self):
        if not osp.isdir(self.root):
            return []
        return [osp.join(self.root, n) for n in os.listdir(self.root) if TMP_MARK in n]

    def weights_memos(self):
        """Files of the remembered weights digests (``<root>/weights``, :mod:`.weights`), temporaries included."""
        folder = osp.join(self.root, MEMO_DIR)
        if not osp.isdir(folder):
            return []
        return [osp.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".json") or TMP_MARK in n]

    def info(self):
        """Summary: folder, number of entries, total bytes, bytes per (dataset, split), unreadable count."""
        rows = self.entries()
        groups = {}
        for r in rows:
            g = (r.get("dataset") or "?", r.get("split") or "?")
            n, b = groups.get(g, (0, 0))
            groups[g] = (n + 1, b + r["bytes"])
        return {
            "dir": self.root,
            "entries": len(rows),
            "bytes": sum(r["bytes"] for r in rows),
            "unreadable": sum(1 for r in rows if not r["ok"]),
            "temporaries": len(self.temporaries()),
            "weights_memos": len(self.weights_memos()),
            "by_dataset_split": {f"{d}/{s}": {"entries": n, "bytes": b} for (d, s), (n, b) in sorted(groups.items())},
        }

    def format_info(self):
        i = self.info()
        lines = [f"Feature store: {i['dir']}", f"  {i['entries']} entries, {_human(i['bytes'])}"]
        for name, g in i["by_dataset_split"].items():
            lines.append(f"  {name}: {g['entries']} entries, {_human(g['bytes'])}")
        if i["unreadable"]:
            lines.append(f"  {i['unreadable']} unreadable entries (recomputed on next use; 'clear' removes them)")
        if i["weights_memos"]:
            lines.append(f"  {i['weights_memos']} remembered weights digests (weights/)")
        if i["temporaries"]:
            lines.append(f"  {i['temporaries']} temporary files of interrupted writes ('clear' removes them)")
        return "\n".join(lines)

    def clear(self):
        """Remove every entry, remembered weights digest and temporary file; returns ``(files removed,
        bytes freed)``."""
        n, freed = 0, 0
        if not osp.isdir(self.root):
            return 0, 0
        paths = [osp.join(self.root, name) for name in os.listdir(self.root) if name.endswith(SUFFIX) or TMP_MARK in name]
        for path in paths + self.weights_memos():
            try:
                size = osp.getsize(path)
                os.remove(path)
            except OSError:
                continue
            n += 1
            freed += size
        return n, freed
