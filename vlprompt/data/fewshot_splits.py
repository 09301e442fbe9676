"""Exact few-shot splits of other codebases: run on the very images another paper used (docs/DATASETS.md).

**Format** (the one 2SFS publishes, FarinaMatteo/rethinking_fewshot_vlms ``datasets/utils.py``): per dataset,
``<dataset folder>/split_fewshot/shot_<S>-seed_<seed>_train.jsonl`` and ``..._val.jsonl``, one JSON object per
line with Dassl ``Datum`` fields ``_impath``, ``_label``, ``_domain``, ``_classname``. 2SFS's ``_impath`` is
relative to its data root for train (``os.path.join(root_path, impath)``) and as written on the authors'
machine for val; here every entry is matched to an image of the dataset's own split by the longest trailing
part of its path that names an image of that split (relative to the split's image folder), so absolute
paths from another machine match too.

**Selection**: ``DATASET.FEWSHOT_SPLITS jsonl`` replaces vlprompt's own few-shot draw (the JSON cache of
:func:`vlprompt.data.datasets.base_dataset.load_or_make_fewshot`) by these files for ``DATASET.NUM_SHOTS``
and ``SEED``; ``""`` (default) keeps vlprompt's draw. A train entry must be an image of the train split, a
val entry one of the val split, with the same label and class name; every class has ``S`` train shots.
A missing train file is an error naming the file and how to get it; a missing val file keeps vlprompt's own
validation draw (said in one line).

**CoOp's pickles** (``split_fewshot/shot_<S>-seed_<seed>.pkl``, ``{"train": [Datum], "val": [Datum]}``) are
converted once, by an explicit command, into the same ``.jsonl`` files::

    python -m vlprompt.data.fewshot_splits coop PATH/shot_16-seed_1.pkl [--out DIR]

The pickle is read by a restricted unpickler that builds nothing but plain containers and ``Datum``
records (any other class or callable in the file is refused), so a converted file never runs code; run
time reads only JSON. ``python -m vlprompt.data.fewshot_splits check --root DATA --dataset NAME`` (or the
doctor's ``--fewshot-splits``) checks the files of a dataset.
"""
import argparse
import io
import json
import os
import os.path as osp
import pickle
import re
import sys
from collections import Counter

from vlprompt.errors import UserError

__all__ = ["train_file", "val_file", "read_jsonl", "match_entries", "SplitFileError", "check_files",
           "load_external_fewshot", "read_coop_pickle", "convert_coop_pickle", "FILE_RE", "main"]

FILE_RE = re.compile(r"^shot_(\d+)-seed_(\d+)_(train|val)\.jsonl$")
KEYS = ("_impath", "_label", "_domain", "_classname")
GET_2SFS = ("2SFS's files: DATA_PATH=<--root> bash scripts/download_splits.sh in FarinaMatteo/rethinking_fewshot_vlms "
            "(a Google Drive folder; extract under --root); CoOp's pickles: python -m vlprompt.data.fewshot_splits "
            "coop <shot_S-seed_N.pkl>")


class SplitFileError(UserError):
    """A few-shot split file that is missing or does not fit the dataset (one line, names the file)."""


def train_file(split_fewshot_dir, shots, seed):
    return osp.join(split_fewshot_dir, f"shot_{int(shots)}-seed_{int(seed)}_train.jsonl")


def val_file(split_fewshot_dir, shots, seed):
    return osp.join(split_fewshot_dir, f"shot_{int(shots)}-seed_{int(seed)}_val.jsonl")


def read_jsonl(path):
    """The entries of a ``.jsonl`` split file as dicts with the four ``Datum`` keys (checked)."""
    out = []
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise SplitFileError(f"{path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(item, dict) or any(k not in item for k in ("_impath", "_label")):
                raise SplitFileError(f"{path} line {n}: expected an object with keys {list(KEYS)}, got {line.strip()[:80]!r}")
            try:
                item["_label"] = int(item["_label"])
            except (TypeError, ValueError):
                raise SplitFileError(f"{path} line {n}: _label {item['_label']!r} is not an integer") from None
            out.append(item)
    return out


def _parts(path):
    return [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".")]


class _Index:
    """Images of one split by their path relative to the split's prefix (all trailing sub-paths)."""

    def __init__(self, entries):
        self.by_rel = {}
        for e in entries:  # (relpath, label, classname, payload)
            self.by_rel["/".join(_parts(e[0]))] = e

    def find(self, impath):
        parts = _parts(impath)
        for k in range(len(parts)):
            hit = self.by_rel.get("/".join(parts[k:]))
            if hit is not None:
                return hit
        return None


def match_entries(items, split_entries, path, role, other_splits=()):
    """Match ``items`` (from :func:`read_jsonl`) to ``split_entries`` ``[(relpath, label, classname, payload)]``;
    returns the payloads in file order. ``SplitFileError`` naming the file and entry for an image that is not
    in the split (and, where found, the split it belongs to) or whose label / class name differ."""
    index = _Index(split_entries)
    others = [(name, _Index(entries)) for name, entries in other_splits]
    out = []
    for n, item in enumerate(items, 1):
        hit = index.find(item["_impath"])
        if hit is None:
            where = next((name for name, idx in others if idx.find(item["_impath"]) is not None), None)
            tail = f": it is a {where} image" if where else " (is DATASET.ROOT the dataset root the file was made for?)"
            raise SplitFileError(f"{path} entry {n}: {item['_impath']} is not an image of the {role} split{tail}")
        rel, label, classname, payload = hit
        if item["_label"] != int(label):
            raise SplitFileError(f"{path} entry {n}: {item['_impath']} has label {item['_label']}, the {role} split "
                                 f"says {label} ({classname})")
        if "_classname" in item and str(item["_classname"]) != str(classname):
            raise SplitFileError(f"{path} entry {n}: class name {item['_classname']!r} differs from the dataset's "
                                 f"{classname!r} (label {label})")
        out.append(payload)
    return out


def _shot_problem(items, shots, n_classes, path):
    counts = Counter(int(it["_label"]) for it in items)
    wrong = {c: k for c, k in counts.items() if k != shots}
    if wrong:
        c, k = sorted(wrong.items())[0]
        return f"{path}: class {c} has {k} images, expected {shots} ({len(wrong)} classes differ)"
    if n_classes is not None and len(counts) != n_classes:
        return f"{path}: {len(counts)} classes have images, the dataset has {n_classes}"
    return None


def check_files(split_fewshot_dir, train_entries, val_entries, n_classes, other_splits=()):
    """Doctor findings ``[(status, message)]`` (status ``ok``/``problem``/``warn``) for every ``.jsonl`` file
    in ``split_fewshot_dir`` (entries as :func:`match_entries`)."""
    if not osp.isdir(split_fewshot_dir):
        return [("missing", f"no folder {split_fewshot_dir}")]
    names = sorted(n for n in os.listdir(split_fewshot_dir) if FILE_RE.match(n))
    if not names:
        return [("missing", f"no shot_<S>-seed_<N>_<train|val>.jsonl files in {split_fewshot_dir}")]
    findings = []
    for name in names:
        shots, _, role = FILE_RE.match(name).groups()
        path = osp.join(split_fewshot_dir, name)
        entries = train_entries if role == "train" else val_entries
        if entries is None:
            findings.append(("warn", f"{path}: the dataset has no {role} split to check it against"))
            continue
        try:
            items = read_jsonl(path)
            others = [(r, e) for r, e in (("train", train_entries), ("val", val_entries)) if r != role and e] + list(other_splits)
            match_entries(items, entries, path, role, others)
        except (SplitFileError, OSError) as e:
            findings.append(("problem", str(e)))
            continue
        expected = int(shots) if role == "train" else min(int(shots), 4)
        problem = _shot_problem(items, expected, n_classes, path)
        findings.append(("warn", problem) if problem else ("ok", f"{path}: {len(items)} images, {expected} per class"))
    return findings


def _entries(items, prefix):
    return [(osp.relpath(it.impath, prefix), int(it.label), it.classname, it) for it in items]


def load_external_fewshot(split_fewshot_dir, num_shots, seed, train, val, prefix, test=None):
    """``(train, val)`` Datums of the dataset's own splits named by the ``.jsonl`` files (module docstring)."""
    tpath = train_file(split_fewshot_dir, num_shots, seed)
    if not osp.isfile(tpath):
        raise SplitFileError(f"few-shot split file {tpath} is missing (DATASET.FEWSHOT_SPLITS jsonl). Get {GET_2SFS}")
    others = [("val", _entries(val, prefix))] if val else []
    others += [("test", _entries(test, prefix))] if test else []
    items = read_jsonl(tpath)
    new_train = match_entries(items, _entries(train, prefix), tpath, "train", others)
    problem = _shot_problem(items, int(num_shots), None, tpath)
    if problem:
        raise SplitFileError(problem + " (DATASET.NUM_SHOTS must be the file's shots)")
    print(f"Few-shot split: {len(new_train)} training images from {tpath}")
    if val is None:
        return new_train, None
    vpath = val_file(split_fewshot_dir, num_shots, seed)
    if not osp.isfile(vpath):
        print(f"Few-shot split: no {vpath}; the validation images are vlprompt's own draw")
        return new_train, None
    others = [("train", _entries(train, prefix))] + ([("test", _entries(test, prefix))] if test else [])
    new_val = match_entries(read_jsonl(vpath), _entries(val, prefix), vpath, "val", others)
    print(f"Few-shot split: {len(new_val)} validation images from {vpath}")
    return new_train, new_val


# ------------------------------------------------------------------------------------ CoOp's pickles
class _Datum:
    """What a pickled Dassl ``Datum`` becomes: its attributes, nothing else."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a Datum's state must be a dict of its fields")
        self.__dict__.update(state)


_DATUM_CLASSES = {("dassl.data.datasets.base_dataset", "Datum"), ("dassl.data.datasets", "Datum"),
                  ("vlprompt.data.datasets.base_dataset", "Datum"), ("datasets.utils", "Datum")}


class _RestrictedUnpickler(pickle.Unpickler):
    """Only ``Datum`` (as a plain record) and ``copyreg._reconstructor``/``object`` for old protocols."""

    def find_class(self, module, name):
        if (module, name) in _DATUM_CLASSES:
            return _Datum
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstruct
        if (module, name) == ("builtins", "object"):
            return object
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a few-shot split pickle holds only Datum records")


def _reconstruct(cls, base, state):
    if cls is not _Datum or base is not object or state is not None:
        raise pickle.UnpicklingError("refusing a reconstructor call that does not build a Datum")
    return object.__new__(_Datum)


def read_coop_pickle(path):
    """``{"train": [dict], "val": [dict]}`` of a CoOp ``split_fewshot`` pickle, read without running code."""
    with open(path, "rb") as f:
        try:
            data = _RestrictedUnpickler(io.BytesIO(f.read())).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
            raise SplitFileError(f"{path}: not a CoOp few-shot split pickle ({e})") from None
    if not isinstance(data, dict) or "train" not in data:
        raise SplitFileError(f'{path}: expected a dict with a "train" list of Datum records')
    out = {}
    for role in ("train", "val"):
        items = data.get(role)
        if items is None:
            continue
        rows = []
        for d in items:
            if not isinstance(d, _Datum) or not hasattr(d, "_impath") or not hasattr(d, "_label"):
                raise SplitFileError(f"{path}: {role} holds something that is not a Datum: {type(d).__name__}")
            rows.append({"_impath": str(d._impath), "_label": int(d._label), "_domain": int(getattr(d, "_domain", 0)),
                         "_classname": str(getattr(d, "_classname", ""))})
        out[role] = rows
    return out


def _write_jsonl(rows, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def convert_coop_pickle(path, out_dir=None):
    """Write ``shot_<S>-seed_<N>_{train,val}.jsonl`` beside ``path`` (or in ``out_dir``); returns the paths."""
    m = re.match(r"^shot_(\d+)-seed_(\d+)\.pkl$", osp.basename(path))
    if not m:
        raise SplitFileError(f"{path}: expected CoOp's file name shot_<S>-seed_<N>.pkl")
    data = read_coop_pickle(path)
    out_dir = out_dir or osp.dirname(osp.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for role, rows in data.items():
        dst = osp.join(out_dir, f"shot_{m.group(1)}-seed_{m.group(2)}_{role}.jsonl")
        _write_jsonl(rows, dst)
        written.append(dst)
    return written


def _dataset_entries(root, name):
    """``(split_fewshot_dir, train, val, test entries, n_classes)`` of a catalogued dataset's split file."""
    from vlprompt.data.catalog import get_info

    info = get_info(name)
    if not info.split_file:
        raise SplitFileError(f"{info.name} has no split file to check few-shot files against")
    prefix = info.split_prefix_path(root)
    with open(info.split_path(root), "r") as f:
        split = json.load(f)
    rows = {k: [(e[0], int(e[1]), e[2], None) for e in split.get(k, [])] for k in ("train", "val", "test")}
    n_classes = len({r[1] for r in rows["train"]})
    missing = [r[0] for k in ("train", "val") for r in rows[k] if not osp.isfile(osp.join(prefix, r[0]))]
    return osp.join(info.dataset_path(root), "split_fewshot"), rows, n_classes, missing


def doctor_findings(root, name):
    """Findings for the doctor (``--fewshot-splits``)."""
    try:
        folder, rows, n_classes, missing = _dataset_entries(root, name)
    except (OSError, ValueError) as e:
        return [("problem", f"cannot read the split file: {e}")]
    findings = check_files(folder, rows["train"], rows["val"], n_classes, other_splits=[("test", rows["test"])])
    if missing:
        findings.append(("problem", f"{len(missing)} images of the train/val split are missing, e.g. {missing[0]}"))
    return findings


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vlprompt.data.fewshot_splits",
                                description="Import and check exact few-shot split files of other codebases.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("coop", help="convert CoOp split_fewshot pickles to .jsonl (restricted unpickler: Datum only)")
    c.add_argument("pickles", nargs="+", help="shot_<S>-seed_<N>.pkl files")
    c.add_argument("--out", default=None, help="output folder (default: beside each pickle)")
    k = sub.add_parser("check", help="check the .jsonl files of a dataset against its split")
    k.add_argument("--root", required=True)
    k.add_argument("--dataset", required=True)
    args = p.parse_args(argv)
    if args.cmd == "coop":
        print("Reading pickles with a restricted unpickler (only Datum records are built; anything else is refused).")
        for path in args.pickles:
            if not osp.isfile(path):
                raise SplitFileError(f"{path} does not exist")
            for dst in convert_coop_pickle(path, args.out):
                print(f"wrote {dst}")
        return 0
    findings = doctor_findings(args.root, args.dataset)
    for status, msg in findings:
        print(f"[{status}] {msg}")
    return 1 if any(s in ("problem", "missing") for s, _ in findings) else 0


if __name__ == "__main__":
    from vlprompt.errors import run_cli

    sys.exit(run_cli(main))
