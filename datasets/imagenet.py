"""ImageNet (ILSVRC-2012), 1000 classes, and the shared base of the test-only ImageNet variants.

Layout: ``imagenet/images/{train,val}/<wnid>/<image>`` (the val images sorted into wnid folders).
As in CoOp the val set is the test set (and the val set): the dataset is built with
``train_x=train, val=test, test=test``; only train is few-shot sampled (cache
``split_fewshot/shot_<K>-seed_<S>.json`` holding ``{"train"}``).

Labels are the index of the wnid in the sorted list of ``images/train`` folders; val images are
labelled through the same map (a val folder unknown to train is an error, where CoOp would silently
shift labels). Class names: ``imagenet/classnames.txt`` (CoOp's ``<wnid> <name>`` file) if present,
otherwise the CLIP names bundled with vlprompt.

File index cache: listing 1.28M files on every run is slow, so the listing is cached in
``imagenet/preprocessed.json`` (JSON, written atomically; CoOp's ``preprocessed.pkl`` is never
loaded). Each class folder is stored with its modification time; a folder whose mtime changed (files
added, removed or renamed) is listed again, vanished folders are dropped and new ones added, and the
index is rewritten. Delete the file to force a full rescan. Paths are stored relative to
``images/``, so the dataset folder may move. Image names are sorted within each class, so the
few-shot subset for a seed does not depend on the file system's listing order (CoOp uses the raw
listing order, which differs between machines).
"""
import json
import os
import os.path as osp

from vlprompt.data.catalog import get_info, imagenet_classnames
from vlprompt.data.datasets import (
    DATASET_REGISTRY,
    DatasetBase,
    Datum,
    dataset_missing_error,
    external_fewshot,
    load_or_make_fewshot,
    subsample_classes,
)
from vlprompt.utils import atomic_write, listdir_nohidden

from .common import dataset_root, require_path
from vlprompt.errors import InvalidValueError

INDEX_FILE = "preprocessed.json"
INDEX_FORMAT = "vlprompt-imagenet-file-index"
INDEX_VERSION = 1


def unchecked_datum(impath, label, classname):
    """A Datum built without the per-file existence check (as unpickling a Dassl cache does).

    Used only for paths that come from a fresh directory listing or from the index validated by
    folder mtimes; a file that vanished since is reported by name when the image is read.
    """
    item = Datum.__new__(Datum)
    item._impath = impath
    item._label = label
    item._domain = 0
    item._classname = classname
    return item


def list_class_folders(split_dir, ignored=()):
    """Sorted non-hidden sub-folders of ``split_dir`` (as ``os.DirEntry``), minus ``ignored``.

    A folder that holds images but no class folders (e.g. an unsorted ImageNet val set) is an error.
    """
    folders, loose = [], 0
    with os.scandir(split_dir) as it:
        for entry in it:
            if entry.name.startswith(".") or entry.name in ignored:
                continue
            if entry.is_dir():
                folders.append(entry)
            else:
                loose += 1
    if not folders and loose:
        raise InvalidValueError(
            f'"{split_dir}" holds {loose} files but no class folders. The images must be sorted into '
            "one folder per class (<wnid>/); for the ImageNet val set see docs/DATASETS.md."
        )
    if loose:
        print(f"Note: ignoring {loose} file(s) that are not class folders in {split_dir}")
    folders.sort(key=lambda e: e.name)
    return folders


def read_classnames_file(text_file):
    """CoOp's ``ImageNet.read_classnames``: ordered dict wnid -> name."""
    from vlprompt.data.catalog import read_classnames

    return read_classnames(text_file)


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    dataset_dir = "imagenet"

    def __init__(self, cfg):
        info = get_info("ImageNet")
        root = dataset_root(cfg)
        self.dataset_dir = osp.join(root, info.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, info.image_dir)
        self.preprocessed = osp.join(self.dataset_dir, INDEX_FILE)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

        if not osp.isdir(self.dataset_dir):
            raise dataset_missing_error(info.name, self.dataset_dir)
        require_path(info.name, osp.join(self.image_dir, "train"), "training image folder images/train")
        require_path(info.name, osp.join(self.image_dir, "val"), "validation image folder images/val")

        classnames, classnames_file = imagenet_classnames(self.dataset_dir)
        index = self.load_index()
        train, test = self.build_items(index, classnames, classnames_file)

        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1 and external_fewshot(cfg):  # another codebase's exact few-shot files
            from vlprompt.data.fewshot_splits import load_external_fewshot

            train, _ = load_external_fewshot(self.split_fewshot_dir, num_shots, cfg.SEED, train, None,
                                             self.image_dir, test)
        elif num_shots >= 1:
            train, _ = load_or_make_fewshot(
                self, self.split_fewshot_dir, num_shots, cfg.SEED, train, None, prefix=self.image_dir
            )

        train_all_classes = train  # every class, before the base/new half (transductive methods: PromptKD)
        train, test = subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=test, test=test)
        self.train_all_classes = train_all_classes

    # CoOp's dataset files call ImageNet.read_classnames(path); keep it reachable.
    read_classnames = staticmethod(read_classnames_file)

    # -- file index -------------------------------------------------------------------------
    def _read_cached_index(self):
        if not osp.exists(self.preprocessed):
            return None
        try:
            with open(self.preprocessed, "r") as f:
                data = json.load(f)
            if data.get("format") != INDEX_FORMAT or data.get("version") != INDEX_VERSION:
                raise ValueError("unknown format or version")
            cached = {}
            for split in ("train", "val"):
                cached[split] = {wnid: (int(mtime), list(files)) for wnid, mtime, files in data["splits"][split]}
            return cached
        except Exception as e:  # a cache: report and rebuild, never fail the run on it
            print(f"Ignoring the unreadable ImageNet file index {self.preprocessed} ({e}); rebuilding it")
            return None

    def load_index(self):
        """Return ``{"train"|"val": [(wnid, [file names])]}``, using and refreshing the JSON cache."""
        cached = self._read_cached_index()
        if cached is None:
            print(f"Scanning ImageNet images under {self.image_dir} (done once; cached in {INDEX_FILE})")
        index, stored, changed = {}, {}, cached is None
        for split in ("train", "val"):
            split_dir = osp.join(self.image_dir, split)
            old = cached[split] if cached is not None else {}
            entries, rescanned = [], 0
            for entry in list_class_folders(split_dir):
                mtime = entry.stat().st_mtime_ns
                hit = old.get(entry.name)
                if hit is not None and hit[0] == mtime:
                    files = hit[1]
                else:
                    files = sorted(listdir_nohidden(entry.path))
                    rescanned += 1
                entries.append((entry.name, mtime, files))
            if rescanned or set(old) != set(e[0] for e in entries):
                changed = True
                if cached is not None:
                    print(f"ImageNet {split}: {rescanned} class folder(s) changed since the index was made; updated")
            index[split] = [(wnid, files) for wnid, _, files in entries]
            stored[split] = [[wnid, mtime, files] for wnid, mtime, files in entries]

        if changed:
            payload = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "splits": stored}
            try:
                with atomic_write(self.preprocessed, "w") as f:
                    json.dump(payload, f, separators=(",", ":"))
                print(f"Saved the ImageNet file index to {self.preprocessed}")
            except OSError as e:
                print(f"Warning: could not save the ImageNet file index to {self.preprocessed} ({e}); "
                      "the next run will scan the images again")
        else:
            print(f"Loaded the ImageNet file index from {self.preprocessed}")
        return index

    def build_items(self, index, classnames, classnames_file):
        train_dir = osp.join(self.image_dir, "train")
        val_dir = osp.join(self.image_dir, "val")
        wnid2label = {}
        for label, (wnid, _) in enumerate(index["train"]):
            if wnid not in classnames:
                raise InvalidValueError(
                    f'ImageNet: class folder "{wnid}" in {train_dir} has no name in {classnames_file}'
                )
            wnid2label[wnid] = label
        unknown = [wnid for wnid, _ in index["val"] if wnid not in wnid2label]
        if unknown:
            raise InvalidValueError(
                f"ImageNet: {len(unknown)} class folder(s) in {val_dir} are not in {train_dir} "
                f"(e.g. {unknown[:3]}); train and val must hold the same wnid folders"
            )

        def _items(split_dir, entries):
            out = []
            for wnid, files in entries:
                label, cname = wnid2label[wnid], classnames[wnid]
                folder = osp.join(split_dir, wnid)
                out.extend(unchecked_datum(osp.join(folder, f), label, cname) for f in files)
            return out

        return _items(train_dir, index["train"]), _items(val_dir, index["val"])


class ImageNetVariant(DatasetBase):
    """Test-only ImageNet variant: ``<image_dir>/<class folder>/<images>``; train_x = test = all.

    Folders are sorted and labelled by their index (ImageNet-A and -R therefore have 200 classes,
    labels 0..199); names come from ``classnames.txt`` in the dataset folder or the bundled CLIP
    names, looked up by wnid. ``DATASET.NUM_SHOTS`` is ignored (as in CoOp);
    ``DATASET.SUBSAMPLE_CLASSES`` is honoured.
    """

    catalog_name = None
    ignored = ()

    def __init__(self, cfg):
        info = get_info(self.catalog_name)
        self.info = info
        root = dataset_root(cfg)
        self.dataset_dir = osp.join(root, info.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, info.image_dir)
        if not osp.isdir(self.dataset_dir):
            raise dataset_missing_error(info.name, self.dataset_dir)
        require_path(info.name, self.image_dir, f"image folder {info.image_dir}")

        classnames, classnames_file = imagenet_classnames(self.dataset_dir)
        data = self.read_data(classnames, classnames_file)
        if cfg.DATASET.NUM_SHOTS >= 1:
            print(f"{info.name} is a test-only dataset: DATASET.NUM_SHOTS is ignored")
        (data,) = subsample_classes(data, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=data, test=data)

    def folder_labels(self, folders, classnames, classnames_file):
        """``[(folder entry, label, class name)]`` for the class folders found."""
        out = []
        for label, entry in enumerate(folders):
            if entry.name not in classnames:
                raise InvalidValueError(
                    f'{self.info.name}: class folder "{entry.name}" in {self.image_dir} has no name in '
                    f"{classnames_file}"
                )
            out.append((entry, label, classnames[entry.name]))
        return out

    def read_data(self, classnames, classnames_file):
        folders = list_class_folders(self.image_dir, ignored=self.ignored)
        items = []
        for entry, label, cname in self.folder_labels(folders, classnames, classnames_file):
            for imname in sorted(listdir_nohidden(entry.path)):
                items.append(unchecked_datum(osp.join(entry.path, imname), label, cname))
        return items
