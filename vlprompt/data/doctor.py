"""Dataset doctor: check that the benchmark datasets under ``--root`` are laid out as expected.

    python -m vlprompt.data.doctor --root DATA [--dataset NAME ...] [--quick] [--strict] [--json]
                                   [--verify] [--decode]
    python -m vlprompt.data.doctor --root DATA --dataset descriptions   (class-description files)

For every dataset (or the ones named with ``--dataset``; registry or yaml names) it checks the
folder layout, that the split file exists, parses and points at existing images, and compares class
and image counts with the expected sizes (``vlprompt.data.catalog``). It prints one table row per
dataset with a verdict:

* ``ok``       everything as expected;
* ``warn``     usable, but not the official setup (e.g. no official split file yet, so one would be
               generated; sizes differ from the published ones);
* ``problem``  loading it would fail (missing folders or images, malformed files);
* ``missing``  the dataset folder does not exist.

Two optional, slower checks:

* ``--verify`` compares the folder with its install manifest (``.vlprompt_manifest.json``, written
  by the download helper: size and CRC-32 of every installed file, and the archive it came from with
  its checksum): a missing or modified file is a ``problem``, named; a folder without a manifest
  (installed by hand) is a ``warn`` ("nothing to verify against").
* ``--decode`` decodes every image file under the image folder with PIL (a full ``load()``, with
  ``LOAD_TRUNCATED_IMAGES`` off); a truncated or corrupt image is a ``problem``, reported by file
  name (``--json`` lists them all under ``bad_files``).

Exit status: 1 if a checked dataset has a problem, or a dataset named with ``--dataset`` is missing
(with ``--strict`` also for warnings); 0 otherwise. ``--quick`` skips the per-image checks.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import List

from vlprompt.data.integrity import IntegrityError, decode_images, verify_manifest
from vlprompt.data.catalog import (
    CALTECH101_IGNORED,
    DATASETS,
    IMAGENET_VARIANT_IGNORED,
    get_info,
    imagenet_a_wnids,
    imagenet_classnames,
    imagenet_r_wnids,
)

__all__ = ["Verdict", "check_dataset", "check_all", "format_table", "main"]

OK, WARN, PROBLEM, MISSING = "ok", "warn", "problem", "missing"
_RANK = {OK: 0, WARN: 1, MISSING: 2, PROBLEM: 3}
_MAX_EXAMPLES = 5


@dataclass
class Verdict:
    name: str
    status: str = OK
    found: str = ""
    todo: str = ""
    details: List[str] = field(default_factory=list)
    bad_files: List[str] = field(default_factory=list)  # --decode / --verify: every file at fault

    def worsen(self, status, message, todo=None):
        """Record a finding; the status only gets worse, the advice is that of the worst finding."""
        if todo and (_RANK[status] > _RANK[self.status] or not self.todo):
            self.todo = todo
        if _RANK[status] > _RANK[self.status]:
            self.status = status
        self.details.append(f"[{status}] {message}")


def _n(x):
    return f"{x:,}"


def _get_cmd(info, root, split_only=False):
    extra = " --split-only" if split_only else ""
    return f"python -m vlprompt.data.download {info.yaml} --root {root}{extra}"


def _fetch_hint(info, root):
    from vlprompt.data.catalog import DATASETS
    from vlprompt.data.hub import load_catalog, sources_with_data

    if sources_with_data(info, load_catalog(known_datasets=set(DATASETS))):
        return f"run: {_get_cmd(info, root)}"
    return f"manual download; steps: {_get_cmd(info, root)} (or docs/DATASETS.md)"


def _sizes_text(sizes):
    return "/".join(_n(s) for s in sizes) + " train/val/test"


def _nested_hint(path):
    """Spot 'cars_train/cars_train/' style nesting (some mirrors do this); '' if none."""
    try:
        entries = [e for e in os.listdir(path) if not e.startswith(".")]
    except OSError:
        return ""
    if len(entries) == 1 and entries[0] == osp.basename(path) and osp.isdir(osp.join(path, entries[0])):
        return f'"{path}" holds a single folder "{entries[0]}": move its contents up one level'
    return ""


def _count_files(folder):
    n = 0
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.startswith(".") and not e.is_dir():
                n += 1
    return n


def _class_dirs(folder, ignored=()):
    with os.scandir(folder) as it:
        dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith(".") and e.name not in ignored)
    return dirs


# ------------------------------------------------------------------------------------------------
def _check_split_json(v, info, root, quick):
    path = info.split_path(root)
    prefix = info.split_prefix_path(root)
    try:
        with open(path, "r") as f:
            split = json.load(f)
    except json.JSONDecodeError as e:
        v.worsen(PROBLEM, f"{path} is malformed JSON (line {e.lineno} column {e.colno}: {e.msg})",
                 f"re-download it: {_get_cmd(info, root, True)}")
        return None
    except OSError as e:
        v.worsen(PROBLEM, f"cannot read {path}: {e}")
        return None
    if not isinstance(split, dict):
        v.worsen(PROBLEM, f"{path}: expected an object with train/val/test lists",
                 f"re-download it: {_get_cmd(info, root, True)}")
        return None

    sizes, labels, missing, bad = [], {}, [], []
    n_listed = 0
    for key in ("train", "val", "test"):
        items = split.get(key)
        if not isinstance(items, list):
            v.worsen(PROBLEM, f'{path} has no "{key}" list', f"re-download it: {_get_cmd(info, root, True)}")
            return None
        sizes.append(len(items))
        for i, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
                bad.append(f'"{key}" entry {i}: {item!r}')
                continue
            try:
                label = int(item[1])
            except (TypeError, ValueError):
                bad.append(f'"{key}" entry {i}: label {item[1]!r} is not an integer')
                continue
            labels.setdefault(label, item[2])
            n_listed += 1
            if not quick and not osp.isfile(osp.join(prefix, item[0])):
                missing.append(f'{osp.join(prefix, item[0])} ("{key}" entry {i})')
    if bad:
        v.worsen(PROBLEM, f"{path}: {len(bad)} malformed entries, e.g. {bad[0]}",
                 f"re-download it: {_get_cmd(info, root, True)}")
    if missing:
        v.worsen(
            PROBLEM,
            f"{len(missing)} of {_n(n_listed)} images listed in {info.split_file} are missing",
            f"re-extract the images ({_fetch_hint(info, root)}); the split expects them under {prefix}",
        )
        for m in missing[:_MAX_EXAMPLES]:
            v.details.append(f"  missing image: {m}")
    n_classes = len(labels)
    if labels and sorted(labels) != list(range(n_classes)):
        v.worsen(PROBLEM, f"{path}: labels are not 0..{n_classes - 1}")
    if n_classes != info.num_classes:
        v.worsen(WARN, f"{info.split_file} has {n_classes} classes, expected {info.num_classes}")
    if tuple(sizes) != tuple(info.sizes):
        v.worsen(WARN, f"{info.split_file} has {_sizes_text(sizes)}, expected {_sizes_text(info.sizes)} "
                       "(published numbers use the official split)")
    return n_classes, sizes


def _check_split_dataset(v, info, root, quick):
    image_dir = info.image_path(root)
    split_path = info.split_path(root)
    if info.image_dir and not osp.isdir(image_dir):
        v.worsen(PROBLEM, f"image folder {image_dir} is missing", _fetch_hint(info, root))
    for rel in info.raw_files:  # mirrors sometimes nest folders (cars_train/cars_train/)
        folder = osp.join(info.dataset_path(root), rel)
        hint = _nested_hint(folder) if osp.isdir(folder) else ""
        if hint:
            v.worsen(PROBLEM, hint, f"flatten {folder}")
    if osp.isfile(split_path):
        res = _check_split_json(v, info, root, quick)
        if res is not None:
            n_classes, sizes = res
            v.found = f"{n_classes} classes, {_sizes_text(sizes)} ({info.split_file})"
        return
    # No official split: can one be generated from the raw files?
    missing = [rel for rel in info.raw_files if not osp.exists(osp.join(info.dataset_path(root), rel))]
    if missing:
        v.worsen(PROBLEM, f"no {info.split_file}, and the raw files to build one are missing: "
                          + ", ".join(missing), _fetch_hint(info, root))
        v.found = f"no {info.split_file}"
        return
    v.worsen(WARN, f"no {info.split_file}: a split will be generated from the raw files on first use; "
                   "it is not the official split, so numbers are not comparable with published ones",
             f"get the official split: {_get_cmd(info, root, True)}")
    found = f"raw files only (no {info.split_file})"
    if info.name in ("Caltech101", "DescribableTextures", "EuroSAT", "Food101") and osp.isdir(image_dir):
        ignored = CALTECH101_IGNORED if info.name == "Caltech101" else ()
        classes = _class_dirs(image_dir, ignored)
        found = f"{len(classes)} class folders, no {info.split_file}"
        if len(classes) != info.num_classes:
            v.worsen(WARN, f"{image_dir} has {len(classes)} class folders, expected {info.num_classes}")
    v.found = found


def _check_fgvc(v, info, root, quick):
    ddir = info.dataset_path(root)
    image_dir = info.image_path(root)
    missing = [rel for rel in info.raw_files if not osp.exists(osp.join(ddir, rel))]
    if missing:
        v.worsen(PROBLEM, "missing: " + ", ".join(missing) + " (the folder must be the archive's data/ folder)",
                 _fetch_hint(info, root))
        v.found = "incomplete"
        return
    with open(osp.join(ddir, "variants.txt")) as f:
        variants = [ln.strip() for ln in f if ln.strip()]
    known = set(variants)
    sizes, absent = [], []
    for split in ("train", "val", "test"):
        fname = osp.join(ddir, f"images_variant_{split}.txt")
        n = 0
        with open(fname) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split(" ", 1)
                if len(parts) != 2 or parts[1].strip() not in known:
                    v.worsen(PROBLEM, f"{fname}, line {lineno}: expected \"<image id> <variant>\", got {line!r}",
                             f"re-extract the archive: {_fetch_hint(info, root)}")
                    break
                n += 1
                if not quick and not osp.isfile(osp.join(image_dir, parts[0] + ".jpg")):
                    absent.append(f"{osp.join(image_dir, parts[0] + '.jpg')} ({osp.basename(fname)}, line {lineno})")
        sizes.append(n)
    if absent:
        v.worsen(PROBLEM, f"{len(absent)} listed images are missing", f"re-extract the archive: {_fetch_hint(info, root)}")
        for m in absent[:_MAX_EXAMPLES]:
            v.details.append(f"  missing image: {m}")
    if len(variants) != info.num_classes:
        v.worsen(WARN, f"variants.txt lists {len(variants)} variants, expected {info.num_classes}")
    if tuple(sizes) != tuple(info.sizes):
        v.worsen(WARN, f"the official lists hold {_sizes_text(sizes)}, expected {_sizes_text(info.sizes)}")
    v.found = f"{len(variants)} classes, {_sizes_text(sizes)} (official lists)"


def _classnames_or_problem(v, info, ddir):
    try:
        return imagenet_classnames(ddir)
    except (ValueError, OSError) as e:
        v.worsen(PROBLEM, f"classnames.txt: {e}", f"fix or delete {osp.join(ddir, 'classnames.txt')} "
                                                  "(the bundled CLIP names are used without it)")
        return None, None


def _check_imagenet(v, info, root, quick):
    ddir = info.dataset_path(root)
    image_dir = info.image_path(root)
    classnames, cn_file = _classnames_or_problem(v, info, ddir)
    counts, wnids = {}, {}
    for split in ("train", "val"):
        sdir = osp.join(image_dir, split)
        if not osp.isdir(sdir):
            v.worsen(PROBLEM, f"{sdir} is missing", _fetch_hint(info, root))
            continue
        dirs = _class_dirs(sdir)
        if not dirs:
            loose = _count_files(sdir)
            v.worsen(PROBLEM, f"{sdir} has {loose} files but no wnid class folders",
                     "sort the val images into wnid folders (docs/DATASETS.md, ImageNet)")
            continue
        wnids[split] = dirs
        if len(dirs) != info.num_classes:
            v.worsen(WARN, f"{sdir} has {len(dirs)} class folders, expected {info.num_classes}")
        if not quick:
            counts[split] = sum(_count_files(osp.join(sdir, d)) for d in dirs)
    if classnames is not None and "train" in wnids:
        unnamed = [w for w in wnids["train"] if w not in classnames]
        if unnamed:
            v.worsen(PROBLEM, f"{len(unnamed)} class folders have no name in {cn_file}, e.g. {unnamed[:3]}",
                     "fix classnames.txt or the folder names")
    if "train" in wnids and "val" in wnids:
        extra = sorted(set(wnids["val"]) - set(wnids["train"]))
        if extra:
            v.worsen(PROBLEM, f"images/val has folders missing from images/train, e.g. {extra[:3]}")
    expected = {"train": info.sizes[0], "val": info.sizes[2]}
    for split, n in counts.items():
        if n != expected[split]:
            v.worsen(WARN, f"images/{split} holds {_n(n)} images, expected {_n(expected[split])}")
    parts = []
    if "train" in wnids:
        parts.append(f"{len(wnids['train'])} classes")
    if counts:
        parts.append("/".join(_n(counts.get(s, 0)) for s in ("train", "val")) + " train/val(=test) images")
    if osp.exists(osp.join(ddir, "preprocessed.json")):
        parts.append("file index cached")
    if cn_file is not None:
        parts.append("classnames.txt" if osp.dirname(cn_file) == ddir else "bundled CLIP names")
    v.found = ", ".join(parts)


def _check_variant(v, info, root, quick):
    ddir = info.dataset_path(root)
    image_dir = info.image_path(root)
    if not osp.isdir(image_dir):
        v.worsen(PROBLEM, f"image folder {image_dir} is missing", _fetch_hint(info, root))
        return
    classnames, cn_file = _classnames_or_problem(v, info, ddir)
    dirs = _class_dirs(image_dir, IMAGENET_VARIANT_IGNORED)
    if info.name == "ImageNetV2":
        numeric = sorted(int(d) for d in dirs if d.isdigit())
        if len(numeric) != len(dirs) or numeric != list(range(len(numeric))):
            v.worsen(PROBLEM, f"{image_dir}: class folders must be named 0 ... {info.num_classes - 1}")
    elif classnames is not None:
        unnamed = [d for d in dirs if d not in classnames]
        if unnamed:
            v.worsen(PROBLEM, f"{len(unnamed)} class folders have no ImageNet name in {cn_file}, e.g. {unnamed[:3]}")
        reference = {"ImageNetA": imagenet_a_wnids, "ImageNetR": imagenet_r_wnids}.get(info.name)
        if reference is not None and dirs and set(dirs) != set(reference()):
            v.worsen(WARN, f"the class folders are not the {info.num_classes} {info.name} synsets")
    if len(dirs) != info.num_classes:
        v.worsen(WARN, f"{image_dir} has {len(dirs)} class folders, expected {info.num_classes}")
    found = f"{len(dirs)} classes"
    if not quick:
        n = sum(_count_files(osp.join(image_dir, d)) for d in dirs)
        found += f", {_n(n)} test images"
        if n != info.sizes[2]:
            v.worsen(WARN, f"{_n(n)} images, expected {_n(info.sizes[2])}")
    v.found = found


_CHECKS = {
    "split": _check_split_dataset,
    "fgvc": _check_fgvc,
    "imagenet": _check_imagenet,
    "imagenet_variant": _check_variant,
}


def _verify(v, info, root):
    ddir = info.dataset_path(root)
    try:
        record, n, missing, changed = verify_manifest(ddir, progress=_progress(f"{info.name}: verifying"))
    except IntegrityError as e:
        v.worsen(PROBLEM, str(e))
        return
    if record is None:
        v.worsen(WARN, f"--verify: {ddir} has no install manifest (.vlprompt_manifest.json): it was not installed "
                       "by the download helper, so there is nothing to verify it against")
        return
    src = record.get("source", {})
    origin = (f"{src.get('repo_id')}/{src.get('filename')}@{str(src.get('revision'))[:12]}" if src.get("source") == "hub"
              else ", ".join(a.get("filename", "?") for a in src.get("archives", [])) or "?")
    if missing or changed:
        v.worsen(PROBLEM, f"--verify: {len(missing)} missing and {len(changed)} modified of the {_n(n)} files "
                          f"installed from {origin}", f"re-install it: remove {ddir} and run {_get_cmd(info, root)}")
        for m in missing[:_MAX_EXAMPLES]:
            v.details.append(f"  missing since installation: {m}")
        for c in changed[:_MAX_EXAMPLES]:
            v.details.append(f"  modified since installation: {c}")
        v.bad_files.extend(missing + changed)
    else:
        v.details.append(f"[ok] --verify: all {_n(n)} installed files match the manifest ({origin})")
        v.found = (v.found + "; " if v.found else "") + f"{_n(n)} files verified"


_PROGRESS = {"on": False, "last": 0.0}


def _progress(label):
    """A progress callback printing to stderr every few seconds (CLI only; silent in the API)."""
    if not _PROGRESS["on"]:
        return None

    def report(n):
        now = time.time()
        if now - _PROGRESS["last"] > 5.0:
            _PROGRESS["last"] = now
            print(f"  {label}: {n:,} files", file=sys.stderr, flush=True)

    return report


def _decode(v, info, root):
    image_dir = info.image_path(root)
    if not osp.isdir(image_dir):
        return  # already reported by the layout checks
    n, bad = decode_images(image_dir, progress=_progress(f"{info.name}: decoding"))
    if bad:
        v.worsen(PROBLEM, f"--decode: {len(bad)} of {_n(n)} images under {image_dir} cannot be decoded",
                 "replace the broken images (re-extract the archive, or re-download the dataset)")
        for path, reason in bad[: 4 * _MAX_EXAMPLES]:
            v.details.append(f"  cannot decode: {path} ({reason})")
        if len(bad) > 4 * _MAX_EXAMPLES:
            v.details.append(f"  ... and {len(bad) - 4 * _MAX_EXAMPLES} more (--json lists them all)")
        v.bad_files.extend(p for p, _ in bad)
    else:
        v.details.append(f"[ok] --decode: all {_n(n)} images decode")
        v.found = (v.found + "; " if v.found else "") + f"{_n(n)} images decoded"


def check_dataset(info, root, quick=False, verify=False, decode=False, fewshot_splits=False):
    """Return the :class:`Verdict` for one dataset (``info`` from the catalog).

    ``verify``: compare with the install manifest; ``decode``: decode every image (both slow);
    ``fewshot_splits``: check the exact few-shot files of other codebases (:mod:`vlprompt.data.fewshot_splits`).
    """
    v = Verdict(info.name)
    ddir = info.dataset_path(root)
    if not osp.isdir(ddir):
        v.status = MISSING
        v.found = f"no folder {ddir}"
        v.todo = _fetch_hint(info, root)
        return v
    try:
        _CHECKS[info.kind](v, info, root, quick)
        if verify:
            _verify(v, info, root)
        if decode:
            _decode(v, info, root)
        if fewshot_splits:
            _fewshot_splits(v, info, root)
    except OSError as e:  # unreadable files, permissions: report, do not crash the whole table
        v.worsen(PROBLEM, f"cannot read: {e}")
    if v.status == OK:
        v.todo = "-"
    return v


def _fewshot_splits(v, info, root):
    """``split_fewshot/shot_<S>-seed_<N>_<train|val>.jsonl``: every image in its split, labels and class
    names as the split's, the shot counts; no such file is a warning (they are optional)."""
    from vlprompt.data.fewshot_splits import GET_2SFS, doctor_findings

    if not info.split_file:
        v.details.append("[ok] few-shot split files: not checked (no split file)")
        return
    for status, message in doctor_findings(root, info.name):
        if status == "ok":
            v.details.append(f"[ok] {message}")
        elif status == "missing":
            v.worsen(WARN, f"few-shot split files: {message}", f"for exact few-shot splits get {GET_2SFS}")
        else:
            v.worsen(PROBLEM if status == "problem" else WARN, message,
                     "replace the file (it does not fit this dataset's split), or run without DATASET.FEWSHOT_SPLITS")


def check_all(root, names=None, quick=False, verify=False, decode=False, fewshot_splits=False):
    infos = [get_info(n) for n in names] if names else list(DATASETS.values())
    return [check_dataset(info, root, quick, verify=verify, decode=decode, fewshot_splits=fewshot_splits)
            for info in infos]


def format_table(verdicts, root):
    rows = [(v.name, v.status, v.found or "-", v.todo or "-") for v in verdicts]
    w0 = max([len("DATASET")] + [len(r[0]) for r in rows])
    w1 = max([len("STATUS")] + [len(r[1]) for r in rows])
    w2 = min(72, max([len("FOUND")] + [len(r[2]) for r in rows]))
    lines = [f"Dataset root: {osp.abspath(osp.expanduser(root))}", ""]
    lines.append(f"{'DATASET':<{w0}}  {'STATUS':<{w1}}  {'FOUND':<{w2}}  WHAT TO DO")
    lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * w2}  {'-' * 10}")
    for r in rows:
        lines.append(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:<{w2}}  {r[3]}")
    detailed = [v for v in verdicts if v.details and v.status != OK]
    if detailed:
        lines.append("")
        lines.append("Details:")
        for v in detailed:
            for d in v.details:
                lines.append(f"  {v.name}: {d}")
    return "\n".join(lines)


def exit_code(verdicts, requested, strict=False):
    for v in verdicts:
        if v.status == PROBLEM:
            return 1
        if v.status == MISSING and requested:
            return 1
        if v.status == WARN and strict:
            return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m vlprompt.data.doctor",
        description="Check the layout, split files and sizes of the benchmark datasets under --root.",
    )
    parser.add_argument("--root", required=True, help="the dataset root (DATASET.ROOT / train.py --root)")
    parser.add_argument("--dataset", action="append", default=[],
                        help="dataset to check (registry or yaml name; repeatable or comma-separated); default: all")
    parser.add_argument("--quick", action="store_true", help="skip the per-image existence checks and counts")
    parser.add_argument("--strict", action="store_true", help="also exit non-zero on warnings")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--verify", action="store_true",
                        help="check every installed file against the install manifest (size + CRC-32)")
    parser.add_argument("--decode", action="store_true",
                        help="decode every image; report truncated/corrupt ones by name (slow)")
    parser.add_argument("--fewshot-splits", action="store_true",
                        help="also check the exact few-shot split files of other codebases "
                             "(split_fewshot/shot_<S>-seed_<N>_<train|val>.jsonl, DATASET.FEWSHOT_SPLITS jsonl)")
    args = parser.parse_args(argv)

    names = [n for item in args.dataset for n in item.split(",") if n.strip()]
    if any(n.strip().lower() == "descriptions" for n in names):  # the class-description files
        if len(names) > 1:
            print("Error: check the class descriptions in a command of their own (--dataset descriptions)",
                  file=sys.stderr)
            return 2
        return _descriptions_main(args)
    _PROGRESS["on"] = args.verify or args.decode
    try:
        try:
            verdicts = check_all(args.root, names or None, quick=args.quick, verify=args.verify, decode=args.decode,
                                 fewshot_splits=args.fewshot_splits)
        finally:
            _PROGRESS["on"] = False
    except KeyError as e:
        print(f"Error: {e.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(v) for v in verdicts], indent=2))
    else:
        print(format_table(verdicts, args.root))
        if not names and any(v.status == MISSING for v in verdicts):
            print("\n(datasets that are not installed do not count as failures unless named with --dataset)")
    return exit_code(verdicts, requested=bool(names), strict=args.strict)


def _descriptions_main(args):
    """``--dataset descriptions``: every class-description file (vlprompt.data.descriptions)."""
    from vlprompt.data.descriptions import check_descriptions

    rows = check_descriptions(args.root)
    if args.json:
        print(json.dumps([{"file": f, "status": s, "found": m} for s, f, m in rows], indent=2))
    else:
        w = max(len(f) for _, f, _ in rows)
        print(f"Class descriptions under {osp.join(osp.abspath(osp.expanduser(args.root)), 'descriptions')}\n")
        print(f"{'FILE':<{w}}  {'STATUS':<7}  FOUND")
        for s, f, m in rows:
            print(f"{f:<{w}}  {s:<7}  {m}")
    statuses = {s for s, _, _ in rows}
    if PROBLEM in statuses or (MISSING in statuses and all(s == MISSING for s in statuses)):
        return 1
    return 1 if args.strict and statuses - {OK} else 0


if __name__ == "__main__":
    from vlprompt.errors import run_cli

    sys.exit(run_cli(main))
