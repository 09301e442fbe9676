"""Small file, seeding and environment helpers (Dassl's ``dassl.utils.tools``)."""
import contextlib
import errno
import json
import os
import os.path as osp
import random
import re
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import torch
from PIL import Image

from .errors import DataNotFoundError, ImageReadError
from vlprompt.errors import InvalidValueError


def mkdir_if_missing(dirname):
    """Create ``dirname`` (and parents) if it does not exist."""
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def check_isfile(fpath):
    """Return True if ``fpath`` is a file; warn and return False otherwise."""
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


_UMASK_LOCK = threading.Lock()


def current_umask():
    """The process umask (read from /proc on Linux, else set-and-restore under a lock)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode():
    """The mode ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_write(fpath, mode="w", **kwargs):
    """Write to a temporary file next to ``fpath`` and rename it into place on success.

    Readers never see a half-written file; an exception leaves the old file untouched. The file
    gets the mode a plain ``open(fpath, "w")`` would give it (0o666 minus the umask), not the
    0o600 of ``tempfile.mkstemp``. The temporary file is ``.<name>.<8 chars>.tmp`` beside the
    target; one left behind by a killed process is removed by :func:`clean_stale_tmp`.
    """
    fpath = osp.abspath(fpath)
    dirname = osp.dirname(fpath)
    mkdir_if_missing(dirname)
    fd, tmp = tempfile.mkstemp(prefix="." + osp.basename(fpath) + ".", suffix=".tmp", dir=dirname)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ``tempfile.mkstemp`` names: 8 characters from this alphabet (CPython's _RandomNameSequence).
_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
PROCESS_START = time.time()


def clean_stale_tmp(directory, older_than=None):
    """Remove partial writes (``.<name>.<8 chars>.tmp`` from :func:`atomic_write`) in ``directory``.

    Only files last modified before ``older_than`` (default: when this process imported vlprompt)
    are removed, so a write in progress in this process is never touched; with the output-folder
    lock held no other live process writes there. Not recursive. Returns the removed paths.
    """
    if older_than is None:
        older_than = PROCESS_START
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not _TMP_RE.match(name):
            continue
        path = osp.join(directory, name)
        try:
            if not osp.isfile(path) or os.stat(path).st_mtime >= older_than:
                continue
            os.remove(path)
        except OSError:
            continue
        removed.append(path)
    if removed:
        print(f"Removed {len(removed)} partial file(s) left by an interrupted write in {directory}")
    return removed


def read_json(fpath):
    """Read a JSON file; a malformed file raises ``ValueError`` naming the file and line."""
    with open(fpath, "r") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InvalidValueError(f"Malformed JSON in {fpath}, line {e.lineno} column {e.colno}: {e.msg}") from e


def write_json(obj, fpath):
    """Write ``obj`` as JSON (indent 4, Dassl's separators) atomically."""
    with atomic_write(fpath, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


def listdir_nohidden(path, sort=False):
    """List non-hidden entries of a directory."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def read_image(path):
    """Read an image as RGB PIL image, decoding all of it.

    A missing file raises :class:`DataNotFoundError`; a truncated or undecodable one raises
    :class:`ImageReadError`; both name the file and say what to do.
    """
    if not osp.exists(path):
        raise DataNotFoundError(
            f'Image file not found: "{path}". Check the dataset folder, or run '
            "python -m vlprompt.data.doctor --root <DATA> to list every problem."
        )
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError)
        raise ImageReadError(
            f'Cannot read image "{path}" ({e}). Replace or re-download the file; '
            "python -m vlprompt.data.doctor --root <DATA> lists every such file."
        ) from e


def set_random_seed(seed):
    """Seed python ``random``, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


_ENV_INFO = []


def collect_env_info():
    """torch's pretty env info plus the Pillow version, computed once per process (the environment of a
    process does not change between the runs it makes: the demo's four runs, a test session's in-process
    runs). Its package list is read from the installed distributions' metadata rather than from ``pip list``
    in a subprocess, which took 1.3 s of the collector's 1.4 s on every run."""
    if not _ENV_INFO:
        _ENV_INFO.append(_collect_env_info())
    return _ENV_INFO[0]


def installed_packages(patterns):
    """``name==version`` lines (``pip list --format=freeze``'s format, sorted like it) of the installed
    distributions whose line contains one of ``patterns``, read from their metadata in this process."""
    from importlib import metadata

    lines = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            line = f"{name}=={dist.version}"
            if any(p in line for p in patterns):
                lines.add(line)
    return "\n".join(sorted(lines, key=str.lower))


def _collect_env_info():
    try:
        import torch.utils.collect_env as collect_env

        slow = getattr(collect_env, "get_pip_packages", None)

        def pip_packages(run_lambda, patterns=None):
            # torch's collector runs ``python -m pip list`` (~1.3 s of the ~1.4 s it takes); the same filtered
            # list comes from the installed distributions' metadata in milliseconds
            try:
                if patterns is None:
                    patterns = (collect_env.PIP_PATTERNS + collect_env.COMMON_PATTERNS
                                + getattr(collect_env, "NVIDIA_PATTERNS", []) + getattr(collect_env, "ONEAPI_PATTERNS", []))
                return "pip3", installed_packages(patterns)
            except Exception:  # another torch's collector: its own way
                return slow(run_lambda, patterns)

        if slow is not None:
            collect_env.get_pip_packages = pip_packages
        try:
            env_str = collect_env.get_pretty_env_info()
        finally:
            if slow is not None:
                collect_env.get_pip_packages = slow
    except Exception as e:  # collect_env shells out; never let it kill a run
        env_str = f"(torch env info unavailable: {e})"
    import PIL
    env_str += f"\n        Pillow ({PIL.__version__})"
    return env_str


def package_versions():
    """Versions of the packages that determine numerical results."""
    out = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
    from vlprompt import __version__
    out["vlprompt"] = __version__
    for mod in ("open_clip", "torchvision", "PIL", "yacs"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception:
            out[mod] = None
    return out


def tolist_if_not(x):
    """Wrap a non-list into a list."""
    if not isinstance(x, list):
        x = [x]
    return x


def import_submodules(package_name, package_path, kind="module"):
    """Import every non-underscore module of a package folder, in name order (plugin registration).

    Used by the repo-root ``trainers/`` and ``datasets/`` packages so that a new file registers
    without editing ``__init__.py``. A module that fails to import raises with its file name.
    Returns the imported module names.
    """
    import importlib
    import pkgutil

    names = []
    for info in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package_name}.{info.name}")
        except ImportError as e:
            folder = package_name.replace(".", "/")
            raise ImportError(f"Cannot import {kind} {folder}/{info.name}.py: {e}") from e
        names.append(info.name)
    return names
