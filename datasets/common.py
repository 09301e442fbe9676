"""Shared flow of the CoOp dataset classes (docs/DATASETS.md) and small strict parsers.

Every split-based dataset does the same thing:

1. ``dataset_dir = ROOT/<dir>`` must exist (else an error naming the dataset, the path and the
   doctor/download commands);
2. read ``split_zhou_<Name>.json`` if present, otherwise build train/val/test from the raw files with
   the dataset's own rules and save the split (atomically) so later runs read it;
3. with ``DATASET.NUM_SHOTS >= 1``: load or sample the few-shot subset (JSON cache
   ``split_fewshot/shot_<K>-seed_<S>.json``; train first, then val with ``min(K, 4)``);
4. keep the base or new half of the classes (``DATASET.SUBSAMPLE_CLASSES``).

Subclasses set ``catalog_name`` and implement :meth:`build_split`. Facts (folders, file names,
sizes) come from :mod:`vlprompt.data.catalog`.
"""
import os.path as osp

from vlprompt.data.catalog import get_info
from vlprompt.data.datasets import (
    DatasetBase,
    Datum,
    dataset_missing_error,
    read_split,
    save_split,
)
from vlprompt.errors import UserError
from vlprompt.utils.errors import DataNotFoundError

__all__ = ["SplitDataset", "AnnotationError", "read_lines", "make_datum", "require_path", "dataset_root"]


class AnnotationError(UserError, ValueError):
    """A malformed line in an annotation file (the message names the file and the line)."""

    def __init__(self, path, lineno, expected, line):
        super().__init__(f'{path}, line {lineno}: expected {expected}, got {line!r}')
        self.path = path
        self.lineno = lineno


def read_lines(path):
    """Yield ``(line number, stripped line)`` for the non-blank lines of a text file."""
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield lineno, line


def make_datum(impath, label, classname, source=None, lineno=None):
    """A :class:`Datum` whose missing image is reported together with the list that named it."""
    if not osp.isfile(impath):
        where = ""
        if source is not None:
            where = f" (listed in {source}" + (f", line {lineno}" if lineno is not None else "") + ")"
        raise DataNotFoundError(f'Image "{impath}" does not exist{where}')
    return Datum(impath=impath, label=label, classname=classname)


def require_path(name, path, what):
    """Raise the standard missing-data error unless ``path`` exists."""
    if not osp.exists(path):
        raise dataset_missing_error(name, path, what)


def dataset_root(cfg):
    return osp.abspath(osp.expanduser(cfg.DATASET.ROOT))


class SplitDataset(DatasetBase):
    """Base of the CoOp datasets that keep a train/val/test split (all but the ImageNet family)."""

    catalog_name = None  # the registry name, looked up in vlprompt.data.catalog

    def __init__(self, cfg):
        info = get_info(self.catalog_name)
        self.info = info
        root = dataset_root(cfg)
        self.dataset_dir = osp.join(root, info.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, info.image_dir) if info.image_dir else self.dataset_dir
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        self.split_path = osp.join(self.dataset_dir, info.split_file) if info.split_file else None
        prefix = self.dataset_dir if info.split_prefix == "dataset_dir" else self.image_dir

        if not osp.isdir(self.dataset_dir):
            raise dataset_missing_error(info.name, self.dataset_dir)

        if self.split_path is not None and osp.exists(self.split_path):
            train, val, test = read_split(self.split_path, prefix)
        else:
            # Check the raw files first so the error names what is missing, not a stack trace.
            for rel in info.raw_files:
                what = "folder" if "." not in osp.basename(rel) else "file"
                why = f" (needed because {info.split_file} is absent)" if info.split_file else ""
                require_path(info.name, osp.join(self.dataset_dir, rel), f"{what} {rel}{why}")
            train, val, test = self.build_split()
            if self.split_path is not None:
                save_split(train, val, test, self.split_path, prefix)

        self.init_from_splits(cfg, train, val, test, prefix=prefix)

    def build_split(self):
        """Build ``(train, val, test)`` lists of Datum from the raw files (dataset rules)."""
        raise NotImplementedError
