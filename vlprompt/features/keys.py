"""What determines a stored feature tensor: the key of a feature-store entry.

A key is a plain JSON-able dict; its digest (SHA-256 of the canonical JSON) names the entry's file.
The full key is also written into the entry and compared on every read, so an entry is only ever
used for exactly the key it was computed for (a digest collision or a renamed file cannot slip
through). What goes into a key (:func:`feature_key`):

* ``backbone``: architecture name and a digest of the frozen image tower's tensors (names, dtypes,
  shapes, bytes: exact; other weights or another precision of the weights give another digest);
* ``precision``: the dtype of the tower's weights, the autocast dtype (or none) and the device type;
* ``dataset`` / ``split``, the exact ordered file list (path, size, mtime of every file; its digest),
  the transform's description (``repr`` of the torchvision pipeline and the dataset wrapper class);
* ``batch_size``: features are computed in the batches the uncached evaluation uses, so that cached
  and uncached logits are bit-identical; the loader's batch size enters as ``min(batch_size, N)``
  (:func:`vlprompt.features.extract.effective_batch_size`: every batch size >= N cuts the N images into
  the same single batch);
* ``view`` and ``seed`` for augmented training views (``None`` for the deterministic test view).
"""
import hashlib
import json
import os

import torch

KEY_VERSION = 1

__all__ = ["KEY_VERSION", "canonical_json", "key_digest", "tensor_digest", "module_digest", "file_list_digest",
           "transform_description", "feature_key"]


def canonical_json(obj):
    """Deterministic JSON text (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def key_digest(key):
    """SHA-256 hex digest of a key's canonical JSON (the entry's file name)."""
    return hashlib.sha256(canonical_json(key).encode("utf-8")).hexdigest()


def _tensor_bytes(t):
    """A zero-copy byte view of a (CPU, contiguous) tensor."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B") if t.numel() else b""


def tensor_digest(t):
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(_tensor_bytes(t))
    return h.hexdigest()


def module_digest(module):
    """Digest of every tensor in ``module.state_dict()`` (name, dtype, shape, bytes), in order.

    SHA-1 over zero-copy views (about 0.3 s for ViT-B/16's image tower on one CPU core, half of
    BLAKE2b's time): a content digest, as git uses it, not a security boundary."""
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        if not torch.is_tensor(t):
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def file_list_digest(paths):
    """Digest of an ordered file list: every path with its size and modification time (ns).

    A file that cannot be stat'ed contributes ``missing`` (the extraction itself will then fail on
    it with the data loader's own error).
    """
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def transform_description(transform, wrapper=None):
    """A text that determines what the image pipeline does: the transform's ``repr`` (torchvision
    pipelines print every parameter) and the dataset wrapper's class."""
    parts = [repr(transform)]
    if wrapper is not None:
        parts.append(wrapper if isinstance(wrapper, str) else f"{type(wrapper).__module__}.{type(wrapper).__qualname__}")
    return " | ".join(parts)


def feature_key(*, arch, weights, precision, dataset, split, files, n_files, transform, batch_size,
                view=None, seed=None, kind="image_features"):
    """The key dict of one entry (see the module docstring)."""
    return {
        "version": KEY_VERSION,
        "kind": kind,
        "backbone": {"arch": str(arch), "weights": str(weights)},
        "precision": str(precision),
        "dataset": str(dataset),
        "split": str(split),
        "files": str(files),
        "n_files": int(n_files),
        "transform": str(transform),
        "batch_size": int(batch_size),
        "view": None if view is None else int(view),
        "seed": None if seed is None else int(seed),
    }
