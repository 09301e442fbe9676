"""Toy datasets: their definitions and their materialisation as JPEG files in the CoOp layout.

Each dataset is a label space (colour x shape classes), a style and per-class split sizes. On first
use it is written under ``<root>/<dirname>/``::

    <dirname>/
        images/<colour>_<shape>/<split>_<index>.jpg
        split_zhou_<Name>.json            {"train"|"val"|"test": [[relpath, label, classname], ...]}
        .vlprompt_toy_complete.json       completion marker: spec hash + sha256 of every file

Materialisation is atomic: the dataset is built in a hidden temporary folder beside the target and
renamed into place once complete; a lock file serialises concurrent builders. A folder without a
valid marker (an interrupted first run, a partial copy, a modified file, an older generator) is set
aside and rebuilt, so training never sees a partial set. Few-shot caches (``split_fewshot/``) that the
dataset classes write later are not part of the marker.

Class order is colour-major: the first half of the labels (the "base" classes of base-to-novel) holds
the first colours with every shape, the second half ("novel") the other colours with the same shapes.
Both halves keep the world's hard confusions (circle/square, triangle/star, cross/star), and the novel
classes combine a colour never trained on with shapes that were.
"""
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import os.path as osp
import shutil
import sys
import time

from .world import COLOURS, SHAPES, classname, render, sample_scene, scene_rng
from vlprompt.errors import UserError

__all__ = [
    "ToySpec",
    "TOY_DATASETS",
    "JPEG_QUALITY",
    "MARKER",
    "GENERATOR_VERSION",
    "ToyDataError",
    "class_list",
    "dataset_scenes",
    "ensure_toy_dataset",
    "verify_toy_dataset",
    "split_file_name",
]

GENERATOR_VERSION = 2
JPEG_QUALITY = 92
MARKER = ".vlprompt_toy_complete.json"
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class ToyDataError(UserError, RuntimeError):
    """A toy dataset cannot be materialised (e.g. the root is not writable)."""


@dataclasses.dataclass(frozen=True)
class ToySpec:
    name: str
    dirname: str
    colours: tuple
    shapes: tuple
    style: str
    n_train: int
    n_val: int
    n_test: int
    seed: int
    image_size: int = 32

    @property
    def num_classes(self):
        return len(self.colours) * len(self.shapes)

    def digest(self):
        """Hash of everything that determines the dataset's content."""
        blob = json.dumps({"spec": dataclasses.asdict(self), "generator": GENERATOR_VERSION,
                           "jpeg_quality": JPEG_QUALITY}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


_SHAPES_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
_SHAPES_SHAPES = ("circle", "square", "triangle", "star", "cross")


def _shifted(style, seed):
    return ToySpec(f"ToyShapes{style.capitalize()}", f"toy_shapes_{style}", _SHAPES_COLOURS, _SHAPES_SHAPES, style,
                   n_train=16, n_val=4, n_test=30, seed=seed)


TOY_DATASETS = {
    # The base dataset: 30 classes, clean photos.
    "ToyShapes": ToySpec("ToyShapes", "toy_shapes", _SHAPES_COLOURS, _SHAPES_SHAPES, "photo",
                         n_train=32, n_val=8, n_test=30, seed=1001),
    # Domain generalisation: the same 30 classes in other styles.
    "ToyShapesSketch": _shifted("sketch", 1002),
    "ToyShapesCartoon": _shifted("cartoon", 1003),
    "ToyShapesNight": _shifted("night", 1004),
    "ToyShapesBlurry": _shifted("blurry", 1005),
    "ToyShapesNoisy": _shifted("noisy", 1006),
    # Cross-dataset transfer: a different label space (other shapes, partly other colours).
    "ToySymbols": ToySpec("ToySymbols", "toy_symbols", ("pink", "cyan", "red", "blue"),
                          ("heart", "diamond", "ring", "moon", "arrow"), "photo",
                          n_train=32, n_val=8, n_test=30, seed=1010),
}


def split_file_name(name):
    return f"split_zhou_{name}.json"


def class_list(spec):
    """``[(colour, shape), ...]`` in label order: colour-major (all shapes of the first colour, ...).

    Base-to-novel therefore splits the colours: ToyShapes' base classes are the red, orange and
    yellow objects of all five shapes, its novel classes the green, blue and purple ones.
    """
    return [(c, s) for c in spec.colours for s in spec.shapes]


def dataset_scenes(spec, split):
    """``[(label, scene, relpath)]`` of one split, deterministic in the spec."""
    n = {"train": spec.n_train, "val": spec.n_val, "test": spec.n_test}[split]
    code = _SPLIT_CODES[split]
    out = []
    colour_ids = {c: i for i, c in enumerate(COLOURS)}
    shape_ids = {s: i for i, s in enumerate(SHAPES)}
    for label, (colour, shape) in enumerate(class_list(spec)):
        folder = f"{colour}_{shape}"
        for i in range(n):
            rng = scene_rng(spec.seed, colour_ids[colour], shape_ids[shape], code, i)
            scene = sample_scene(rng, colour=colour, shape=shape, style=spec.style)
            out.append((label, scene, f"{folder}/{split}_{i:04d}.jpg"))
    return out


def _jpeg_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _render_jpeg(job):
    """One image's JPEG bytes (a worker's task: ``job`` = (scene, size); rendering is deterministic)."""
    scene, size = job
    return _jpeg_bytes(render(scene, size))


#: below this many images a dataset is rendered in this process (a worker pool costs ~0.5 s to start)
PARALLEL_RENDER_MIN = 400


def _render_all(scenes, size):
    """The JPEG bytes of ``scenes`` in order: over the CPUs this process may use (each image depends only on
    its scene, so the bytes are those of a sequential render); sequentially for small datasets, on 1 CPU,
    and in a process that has loaded torch."""
    jobs = [(scene, size) for scene in scenes]
    try:
        n_cpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n_cpu = os.cpu_count() or 1
    workers = min(n_cpu, 8)
    # fork (POSIX) copies this process without re-running its main module (spawn would re-import a user's
    # script or fail on stdin); not after torch is loaded, whose thread pools do not survive a fork
    fork = hasattr(os, "fork") and "torch" not in sys.modules
    if not fork or workers < 2 or len(jobs) < PARALLEL_RENDER_MIN:
        yield from map(_render_jpeg, jobs)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_render_jpeg, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers))))


def _write_dataset(spec, target, log):
    """Render every image of ``spec`` into ``target`` (a fresh folder) and write split + marker."""
    image_dir = osp.join(target, "images")
    files = {}
    split = {"train": [], "val": [], "test": []}
    t0 = time.time()
    items = [(part, label, scene, rel) for part in ("train", "val", "test")
             for label, scene, rel in dataset_scenes(spec, part)]
    total = len(items)
    done = 0
    for (part, label, scene, rel), data in zip(items, _render_all([it[2] for it in items], spec.image_size)):
        fpath = osp.join(image_dir, rel)
        os.makedirs(osp.dirname(fpath), exist_ok=True)
        with open(fpath, "wb") as f:
            f.write(data)
        files["images/" + rel] = _sha256_bytes(data)
        split[part].append([rel, label, classname(scene.colour, scene.shape)])
        done += 1
        if log and (done % 1000 == 0 or done == total):
            log(f"  {spec.name}: {done}/{total} images ({time.time() - t0:.1f}s)")
    split_name = split_file_name(spec.name)
    data = json.dumps(split, indent=4, separators=(",", ": ")).encode()
    with open(osp.join(target, split_name), "wb") as f:
        f.write(data)
    files[split_name] = _sha256_bytes(data)
    marker = {
        "name": spec.name,
        "spec_digest": spec.digest(),
        "content_sha256": _content_digest(files),
        "num_files": len(files),
        "files": files,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with open(osp.join(target, MARKER), "w") as f:
        json.dump(marker, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _content_digest(files):
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode() + b"\n")
    return h.hexdigest()


def verify_toy_dataset(spec, dataset_dir, check_content=True):
    """Return ``(ok, reason)``: is ``dataset_dir`` a complete, unmodified build of ``spec``?"""
    if not osp.isdir(dataset_dir):
        return False, "missing"
    mpath = osp.join(dataset_dir, MARKER)
    if not osp.isfile(mpath):
        return False, f"no completion marker {MARKER} (interrupted or partial build)"
    try:
        with open(mpath) as f:
            marker = json.load(f)
        files = marker["files"]
        if marker.get("spec_digest") != spec.digest():
            return False, "built by another generator version or spec"
        if _content_digest(files) != marker.get("content_sha256"):
            return False, "completion marker is inconsistent"
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return False, f"unreadable completion marker ({type(e).__name__}: {e})"
    if not check_content:
        for rel in files:
            if not osp.isfile(osp.join(dataset_dir, rel)):
                return False, f"file {rel} is missing"
        return True, "ok"
    for rel, digest in files.items():
        fpath = osp.join(dataset_dir, rel)
        try:
            with open(fpath, "rb") as f:
                actual = _sha256_bytes(f.read())
        except OSError:
            return False, f"file {rel} is missing or unreadable"
        if actual != digest:
            return False, f"file {rel} differs from the build (truncated or modified)"
    return True, "ok"


@contextlib.contextmanager
def _build_lock(lock_path):
    """An exclusive advisory lock (fcntl) on ``lock_path``; a no-op where fcntl is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check_writable(root, name):
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise ToyDataError(
            f'{name}: cannot create the data root "{root}" ({e.strerror or e}). '
            f"Pass a writable --root (DATASET.ROOT), e.g. --root ./data"
        ) from e
    if not os.access(root, os.W_OK | os.X_OK):
        raise ToyDataError(
            f'{name}: the data root "{root}" is not writable, so the toy dataset cannot be built there '
            f"(it is generated on first use). Pass a writable --root (DATASET.ROOT), e.g. --root ./data"
        )


def ensure_toy_dataset(name, root, log=print, check_content=True):
    """Materialise toy dataset ``name`` under ``root`` if needed; return its dataset folder.

    A complete, verified build is reused. Anything else under the dataset folder (no marker, bad hash,
    other generator version) is moved aside and rebuilt from scratch in a temporary folder that is
    renamed into place only when complete.
    """
    if name not in TOY_DATASETS:
        raise KeyError(f"Unknown toy dataset {name!r}; known: {sorted(TOY_DATASETS)}")
    spec = TOY_DATASETS[name]
    root = osp.abspath(osp.expanduser(root))
    dataset_dir = osp.join(root, spec.dirname)
    ok, reason = verify_toy_dataset(spec, dataset_dir, check_content=check_content)
    if ok:
        return dataset_dir
    _check_writable(root, name)
    lock_path = osp.join(root, f".{spec.dirname}.lock")
    try:
        with _build_lock(lock_path):
            return _build_locked(spec, root, dataset_dir, log, check_content)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ToyDataError(f'{name}: cannot write under "{root}" ({e}); pass a writable --root') from e
        if e.errno == errno.ENOSPC:
            raise ToyDataError(f'{name}: no space left under "{root}" while building the toy dataset') from e
        raise


def _build_locked(spec, root, dataset_dir, log, check_content):
    name = spec.name
    # Another process may have finished the build while we waited for the lock.
    ok, reason = verify_toy_dataset(spec, dataset_dir, check_content=check_content)
    if ok:
        return dataset_dir
    # Anything temporary left over is from an interrupted builder (we hold the lock).
    for entry in os.listdir(root):
        if entry.startswith(f".{spec.dirname}.tmp-") or entry.startswith(f".{spec.dirname}.stale-"):
            shutil.rmtree(osp.join(root, entry), ignore_errors=True)
    if osp.exists(dataset_dir):
        if log:
            log(f'{name}: "{dataset_dir}" is not a complete build ({reason}); rebuilding it')
        stale = osp.join(root, f".{spec.dirname}.stale-{os.getpid()}")
        os.replace(dataset_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    elif log:
        log(f'{name}: building the toy dataset under "{dataset_dir}" (first use; '
            f"{spec.num_classes} classes, {spec.style} style)")
    tmp = osp.join(root, f".{spec.dirname}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_dataset(spec, tmp, log)
        os.replace(tmp, dataset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ok, reason = verify_toy_dataset(spec, dataset_dir, check_content=check_content)
    if not ok:  # pragma: no cover - would be a bug in the writer
        raise ToyDataError(f"{name}: the fresh build at {dataset_dir} does not verify ({reason})")
    return dataset_dir
