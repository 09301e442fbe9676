"""``Datum`` and ``DatasetBase`` (Dassl's base_dataset) plus the CoOp split helpers.

The split helpers (``read_split``/``save_split``/``split_trainval``/``read_and_split_data``/
``subsample_classes``) are what CoOp's dataset files implement as static methods; here they live
once and every dataset class uses them. Few-shot subsets are cached as JSON, not pickle.
"""
import math
import os.path as osp
import random
from collections import defaultdict

from vlprompt.utils import DataNotFoundError, listdir_nohidden, mkdir_if_missing, read_json, write_json
from vlprompt.errors import InvalidValueError

__all__ = [
    "Datum",
    "external_fewshot",
    "DatasetBase",
    "read_split",
    "save_split",
    "split_trainval",
    "read_and_split_data",
    "subsample_classes",
    "load_or_make_fewshot",
    "dataset_missing_error",
]


class Datum:
    """One labelled image. The file must exist (Dassl asserts it; we name the file)."""

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(f"impath must be a str, got {type(impath).__name__}")
        if not osp.isfile(impath):
            raise DataNotFoundError(f'No image file found at "{impath}"')
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return f"Datum(impath={self._impath!r}, label={self._label}, classname={self._classname!r})"


class DatasetBase:
    """A dataset = train_x (+ train_u) + val + test lists of :class:`Datum`.

    ``classnames``/``lab2cname``/``num_classes`` are derived from ``train_x`` (labels must be
    contiguous from 0).
    """

    dataset_dir = ""  # the directory under DATASET.ROOT
    domains = []
    #: the training items of every class before DATASET.SUBSAMPLE_CLASSES took a half (set by the split-based
    #: datasets and ImageNet; None: not kept); a transductive method (PromptKD) trains on them without labels
    train_all_classes = None

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        label_set = set(item.label for item in data_source)
        return max(label_set) + 1

    @staticmethod
    def get_lab2cname(data_source):
        container = set((item.label, item.classname) for item in data_source)
        mapping = {label: classname for label, classname in container}
        labels = sorted(mapping.keys())
        classnames = [mapping[label] for label in labels]
        return mapping, classnames

    def check_input_domains(self, source_domains, target_domains):
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains):
        for domain in input_domains:
            if domain not in self.domains:
                raise InvalidValueError(
                    f"Input domain must belong to {self.domains}, but got [{domain}]"
                )

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Sample ``num_shots`` items per class with the stdlib ``random`` (Dassl-identical)."""
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return data_sources
        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            short = {}
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                elif repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
                    short[items[0].classname or label] = len(items)
                dataset.extend(sampled_items)
            if short:  # said, not hidden: results.json records the real numbers (shots_used)
                shown = ", ".join(f"{k} ({v})" for k, v in list(short.items())[:5])
                more = f" and {len(short) - 5} more" if len(short) > 5 else ""
                print(f"Warning: {num_shots} shots per class requested, but {len(short)} of {len(tracker)} classes "
                      f"have fewer images, all of which are used: {shown}{more}")
            output.append(dataset)
        if len(output) == 1:
            return output[0]
        return output

    @staticmethod
    def split_dataset_by_label(data_source):
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source):
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    def init_from_splits(self, cfg, train, val, test, prefix):
        """The CoOp tail every split-based dataset shares: few-shot subset (``DATASET.NUM_SHOTS >= 1``;
        JSON cache under ``self.split_fewshot_dir``, paths relative to ``prefix``), then the base/new
        half (``DATASET.SUBSAMPLE_CLASSES``), then ``DatasetBase.__init__``."""
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1 and external_fewshot(cfg):
            from vlprompt.data.fewshot_splits import load_external_fewshot

            own_val = val
            train, val = load_external_fewshot(self.split_fewshot_dir, num_shots, cfg.SEED, train, val, prefix, test)
            if val is None and own_val is not None:  # no val file: vlprompt's own validation draw
                val = self.generate_fewshot_dataset(own_val, num_shots=min(num_shots, 4))
        elif num_shots >= 1:
            train, val = load_or_make_fewshot(
                self, self.split_fewshot_dir, num_shots, cfg.SEED, train, val, prefix=prefix
            )
        # the training items of every class (after the few-shot subset, before the base/new half): what a
        # transductive method (PromptKD) trains on, without labels, whatever half the run is evaluated on
        train_all_classes = train
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        DatasetBase.__init__(self, train_x=train, val=val, test=test)
        self.train_all_classes = train_all_classes

    # CoOp dataset files call these as static methods of their classes.
    @staticmethod
    def subsample_classes(*args, subsample="all"):
        return subsample_classes(*args, subsample=subsample)

    @staticmethod
    def read_split(filepath, path_prefix):
        return read_split(filepath, path_prefix)

    @staticmethod
    def save_split(train, val, test, filepath, path_prefix):
        return save_split(train, val, test, filepath, path_prefix)


def external_fewshot(cfg):
    """True when ``DATASET.FEWSHOT_SPLITS`` names external few-shot files (``jsonl``); a user error for
    another value."""
    value = str(cfg.DATASET.get("FEWSHOT_SPLITS", "") or "")
    if value not in ("", "jsonl"):
        raise InvalidValueError(f"DATASET.FEWSHOT_SPLITS must be '' (vlprompt's draw) or 'jsonl' (split_fewshot/"
                                f"shot_<S>-seed_<N>_<train|val>.jsonl files), got '{value}'")
    return value == "jsonl"


def dataset_missing_error(name, path, what="dataset folder"):
    """A :class:`DataNotFoundError` (a FileNotFoundError) naming the dataset, the expected path and
    the helper commands."""
    return DataNotFoundError(
        f"{name}: {what} not found at \"{path}\".\n"
        f"  Check --root / DATASET.ROOT, or see docs/DATASETS.md.\n"
        f"  Diagnose:  python -m vlprompt.data.doctor --root <DATA> --dataset {name}\n"
        f"  Download:  python -m vlprompt.data.download {name} --root <DATA>"
    )


def read_split(filepath, path_prefix):
    """Read a ``split_zhou_*.json`` file: ``{"train"|"val"|"test": [[relpath, label, classname]]}``.

    Errors name the file and the offending entry; a missing image names the image.
    """
    split = read_json(filepath)

    def _convert(key):
        if key not in split:
            raise InvalidValueError(f'Split file {filepath} has no "{key}" list')
        out = []
        for i, item in enumerate(split[key]):
            if not (isinstance(item, (list, tuple)) and len(item) == 3):
                raise InvalidValueError(
                    f'Split file {filepath}: entry {i} of "{key}" should be '
                    f"[relative_path, label, classname], got {item!r}"
                )
            impath, label, classname = item
            impath = osp.join(path_prefix, impath)
            if not osp.isfile(impath):
                raise DataNotFoundError(
                    f'Image "{impath}" listed in {filepath} ("{key}" entry {i}) does not exist. '
                    "Restore the file, or delete the split file to rebuild it from the images present "
                    "(python -m vlprompt.data.doctor --root <DATA> lists every missing file)."
                )
            out.append(Datum(impath=impath, label=int(label), classname=classname))
        return out

    print(f"Reading split from {filepath}")
    return _convert("train"), _convert("val"), _convert("test")


def save_split(train, val, test, filepath, path_prefix):
    """Write a split JSON with paths relative to ``path_prefix`` (atomically)."""

    def _extract(items):
        out = []
        for item in items:
            impath = item.impath.replace(path_prefix, "")
            if impath.startswith("/"):
                impath = impath[1:]
            out.append((impath, item.label, item.classname))
        return out

    split = {"train": _extract(train), "val": _extract(val), "test": _extract(test)}
    write_json(split, filepath)
    print(f"Saved split to {filepath}")


def split_trainval(trainval, p_val=0.2):
    """Per-class random 80/20 (default) split of a trainval list (CoOp's OxfordPets.split_trainval)."""
    p_trn = 1 - p_val
    print(f"Splitting trainval into {p_trn:.0%} train and {p_val:.0%} val")
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise InvalidValueError(f"Class {label} has too few images ({len(idxs)}) to hold out a val split")
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            item = trainval[idx]
            if n < n_val:
                val.append(item)
            else:
                train.append(item)
    return train, val


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None, keep=None):
    """Folder-per-class tree -> per-class 50/20/30 split (CoOp's DTD.read_and_split_data).

    Classes are the case-sensitively sorted non-hidden subfolders minus ``ignored``; the label is
    the index in that order, and ``new_cnames`` renames a class after its label is assigned.
    ``keep(path)``, when given, selects the entries of a class folder that are images (the others are
    left out before the shuffle; CoOp's datasets pass none, so their splits are CoOp's).
    """
    categories = listdir_nohidden(image_dir)
    categories = [c for c in categories if c not in ignored and osp.isdir(osp.join(image_dir, c))]
    categories.sort()
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    def _collate(ims, y, c):
        return [Datum(impath=im, label=y, classname=c) for im in ims]

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = listdir_nohidden(category_dir)
        images = [osp.join(category_dir, im) for im in images]
        if keep is not None:
            images = [im for im in images if keep(im)]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if not (n_train > 0 and n_val > 0 and n_test > 0):
            raise InvalidValueError(
                f'Class folder "{category_dir}" has {n_total} images: too few for a '
                f"{p_trn:.0%}/{p_val:.0%}/{p_tst:.0%} split (each part needs at least one)"
            )
        if new_cnames is not None and category in new_cnames:
            category = new_cnames[category]
        train.extend(_collate(images[:n_train], label, category))
        val.extend(_collate(images[n_train:n_train + n_val], label, category))
        test.extend(_collate(images[n_train + n_val:], label, category))
    return train, val, test


def subsample_classes(*args, subsample="all"):
    """Keep the base (first ceil(n/2) labels) or new (rest) classes and relabel from 0.

    Labels are taken from the first dataset passed (train, after few-shot sampling).
    """
    if subsample not in ("all", "base", "new"):
        raise InvalidValueError(f'DATASET.SUBSAMPLE_CLASSES must be "all", "base" or "new", got "{subsample}"')
    if subsample == "all":
        return args
    dataset = args[0]
    labels = sorted(set(item.label for item in dataset))
    n = len(labels)
    m = math.ceil(n / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    output = []
    for dataset in args:
        dataset_new = []
        for item in dataset:
            if item.label not in selected:
                continue
            dataset_new.append(
                Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
            )
        output.append(dataset_new)
    return output


def _datums_to_json(items, prefix):
    out = []
    for item in items:
        rel = osp.relpath(item.impath, prefix)
        out.append([rel, item.label, item.classname])
    return out


def _datums_from_json(items, prefix, fpath):
    out = []
    for i, entry in enumerate(items):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise InvalidValueError(f"Few-shot cache {fpath}: malformed entry {i}: {entry!r}")
        rel, label, classname = entry
        impath = osp.join(prefix, rel)
        if not osp.isfile(impath):
            raise DataNotFoundError(
                f'Image "{impath}" listed in the few-shot cache {fpath} (entry {i}) does not exist. '
                "Restore the file, or delete the cache to resample the few-shot subset."
            )
        out.append(Datum(impath=impath, label=int(label), classname=classname))
    return out


def split_identity(items, prefix):
    """An order-free sha256 (16 hex digits) of a split's ``[relpath, label, classname]`` entries: the
    identity of the split a few-shot subset is drawn from (stored in the cache, ``source``)."""
    import hashlib
    import json

    entries = sorted(json.dumps(e) for e in _datums_to_json(items, prefix))
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def _stale_reason(data, train, val, prefix):
    """Why a few-shot cache does not belong to the current split (``None`` when it does).

    A cache that records its split's identity (``source``) is compared by digest; an older cache
    without one is checked item by item: every cached item must still be in the current split.
    """
    source = data.get("source")
    if isinstance(source, dict):
        if source.get("train") != split_identity(train, prefix):
            return (f"it was drawn from another train split ({source.get('num_train', '?')} items, identity "
                    f"{source.get('train')}; the split now has {len(train)} items, identity "
                    f"{split_identity(train, prefix)})")
        if val is not None and "val" in source and source.get("val") != split_identity(val, prefix):
            return (f"it was drawn from another val split (identity {source.get('val')}; now "
                    f"{split_identity(val, prefix)})")
        return None
    for name, items in (("train", train), ("val", val)):
        if items is None:
            continue
        current = {tuple(e) for e in _datums_to_json(items, prefix)}
        missing = [e for e in data.get(name, []) if not (isinstance(e, (list, tuple)) and tuple(e) in current)]
        if missing:
            return (f"it records no split identity (written by an older vlprompt) and {len(missing)} of its "
                    f"{name} items are not in the current {name} split (e.g. {missing[0]!r})")
    return None


def load_or_make_fewshot(dataset, split_fewshot_dir, num_shots, seed, train, val=None, prefix=None):
    """Load the few-shot subset cache, or sample and save it.

    The cache is ``split_fewshot/shot_<K>-seed_<S>.json`` holding ``{"train": [...], "val": [...],
    "source": {...}}`` (``val`` omitted when ``val`` is None, as for ImageNet), entries
    ``[relpath, label, classname]`` relative to ``prefix`` (default: the cache's parent directory).
    ``train`` is sampled first, then ``val`` with ``min(num_shots, 4)``, exactly as CoOp does, so the
    same seed gives the same subset. ``source`` is the identity of the split the subset was drawn from
    (:func:`split_identity` of train and val, and their sizes): when the split changes (a rebuilt
    ImageFolder split, an edited split file), the cached subset could hold images that are now test
    images, so it is drawn again from the current split, with a message, and the cache is replaced.
    A cache without ``source`` (older vlprompt) is kept when every cached item is still in the current
    split, and drawn again otherwise. Returns ``(train, val)``.
    """
    mkdir_if_missing(split_fewshot_dir)
    prefix = prefix or osp.dirname(osp.abspath(split_fewshot_dir))
    fpath = osp.join(split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.json")
    if osp.exists(fpath):
        data = read_json(fpath)
        if not isinstance(data, dict) or "train" not in data:
            raise InvalidValueError(f'Few-shot cache {fpath} has no "train" list; delete it to resample')
        stale = _stale_reason(data, train, val, prefix)
        if stale is None:
            print(f"Loading preprocessed few-shot data from {fpath}")
            cached_train = _datums_from_json(data["train"], prefix, fpath)
            if val is not None:
                val = _datums_from_json(data.get("val", []), prefix, fpath)
            return cached_train, val
        print(f"Few-shot cache {fpath} does not belong to the current split: {stale}. Drawing the "
              f"{num_shots}-shot subset again from the current split (seed {seed}) and replacing the cache.")
    source = {"train": split_identity(train, prefix), "num_train": len(train)}
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    data = {"train": _datums_to_json(train, prefix)}
    if val is not None:
        source.update(val=split_identity(val, prefix), num_val=len(val))
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        data["val"] = _datums_to_json(val, prefix)
    data["source"] = source
    print(f"Saving preprocessed few-shot data to {fpath}")
    write_json(data, fpath)
    return train, val
