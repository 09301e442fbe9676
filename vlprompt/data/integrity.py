"""Integrity records shared by the download helper and the dataset doctor.

* :func:`file_digest` / :func:`check_file`: sizes and checksums (sha256 or md5) of downloaded files.
* The install manifest ``<dataset folder>/.vlprompt_manifest.json``, written by the download helper
  once a dataset is in place: where it came from (source, archive, its size and checksum) and, for
  every file it installed, its size and CRC-32. ``python -m vlprompt.data.doctor --verify`` checks
  the folder against it (:func:`verify_manifest`): a file that is missing, or whose size or CRC-32
  changed since installation, is reported by name. Files added later (split_fewshot caches, the
  ImageNet file index) are not part of the record and are ignored.
* :func:`decode_images`: decode every image under a folder (what ``--decode`` does); truncated or
  corrupt files are reported by name.
"""
import hashlib
import json
import os
import os.path as osp
import time
import zlib
from vlprompt.errors import UserError

__all__ = [
    "IntegrityError",
    "MANIFEST_NAME",
    "IMAGE_EXTENSIONS",
    "file_digest",
    "crc32_file",
    "check_file",
    "write_manifest",
    "read_manifest",
    "verify_manifest",
    "iter_images",
    "decode_images",
]

MANIFEST_NAME = ".vlprompt_manifest.json"
MANIFEST_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_CHUNK = 1 << 20
# Paths the engine or the user adds to a dataset folder after installation: never recorded.
_NOT_RECORDED = ("split_fewshot", "preprocessed.json", MANIFEST_NAME)


class IntegrityError(UserError, RuntimeError):
    pass


def file_digest(path, algo="sha256", chunk=_CHUNK):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def crc32_file(path, chunk=_CHUNK):
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def check_file(path, size=None, sha256=None, md5=None, what=None):
    """Raise :class:`IntegrityError` (naming the file and both values) unless ``path`` matches."""
    what = what or path
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        raise IntegrityError(f"{what}: size {actual:,} bytes, expected {size:,}")
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            got = file_digest(path, algo)
            if got != expected.lower():
                raise IntegrityError(f"{what}: {algo} {got}, expected {expected.lower()}")


# ------------------------------------------------------------------------------------------------
# Install manifest
# ------------------------------------------------------------------------------------------------
def _recorded_files(ddir):
    for dirpath, dirnames, filenames in os.walk(ddir):
        rel_dir = osp.relpath(dirpath, ddir)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in _NOT_RECORDED]
        dirnames.sort()
        for fn in sorted(filenames):
            rel = fn if rel_dir == "." else osp.join(rel_dir, fn)
            if rel in _NOT_RECORDED or fn.endswith((".part", ".tmp")):
                continue
            yield rel.replace(os.sep, "/")


def write_manifest(ddir, source, paths=None):
    """Record size and CRC-32 of the installed files under ``ddir`` (all of them, or ``paths``).

    ``source`` is a JSON-able dict saying where the data came from. Written atomically.
    """
    rels = sorted(paths) if paths is not None else list(_recorded_files(ddir))
    files = {}
    for rel in rels:
        full = osp.join(ddir, rel)
        files[rel] = [os.path.getsize(full), crc32_file(full)]
    record = {"version": MANIFEST_VERSION, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "source": source, "files": files}
    path = osp.join(ddir, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def read_manifest(ddir):
    """The manifest of ``ddir`` as a dict, ``None`` if there is none; ``IntegrityError`` if unreadable."""
    path = osp.join(ddir, MANIFEST_NAME)
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record.get("files"), dict):
            raise ValueError('no "files" object')
    except (ValueError, OSError) as e:
        raise IntegrityError(f"{path} is unreadable ({e}); delete it (the folder then has no record to verify)")
    return record


def verify_manifest(ddir, progress=None):
    """Check ``ddir`` against its manifest; returns ``(record, n_checked, missing, changed)``.

    ``missing`` / ``changed`` list relative paths (``changed`` with the reason). ``record`` is
    ``None`` (and nothing is checked) when the folder has no manifest.
    """
    record = read_manifest(ddir)
    if record is None:
        return None, 0, [], []
    missing, changed = [], []
    for i, (rel, (size, crc)) in enumerate(sorted(record["files"].items())):
        full = osp.join(ddir, rel)
        if progress is not None:
            progress(i)
        if not osp.isfile(full):
            missing.append(rel)
            continue
        actual = os.path.getsize(full)
        if actual != size:
            changed.append(f"{rel} (size {actual:,} bytes, recorded {size:,})")
        elif crc32_file(full) != crc:
            changed.append(f"{rel} (CRC-32 differs from the one recorded at installation)")
    return record, len(record["files"]), missing, changed


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------
def iter_images(folder):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "split_fewshot")
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
                yield osp.join(dirpath, fn)


def decode_one(path):
    """Fully decode one image; ``None`` if fine, else the reason (e.g. 'image file is truncated')."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decodes every byte; a truncated JPEG raises here (verify() would not see it)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        return f"{type(e).__name__}: {e}"
    return None


def decode_images(folder, progress=None):
    """Decode every image file under ``folder``; returns ``(n_decoded, [(path, reason), ...])``.

    Honours no global PIL setting: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced off while decoding,
    so a truncated file is reported instead of silently padded.
    """
    from PIL import ImageFile

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    bad, n = [], 0
    try:
        for path in iter_images(folder):
            reason = decode_one(path)
            n += 1
            if reason is not None:
                bad.append((path, reason))
            if progress is not None:
                progress(n)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return n, bad
