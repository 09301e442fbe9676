"""The toy datasets (vlprompt/toy): procedurally rendered colour x shape classes, no download.

Registered names (configs/datasets/toy_*.yaml):

* ``ToyShapes``: 30 classes, clean photos; train/val/test = 32/8/30 images per class.
* ``ToyShapesSketch``, ``ToyShapesCartoon``, ``ToyShapesNight``, ``ToyShapesBlurry``,
  ``ToyShapesNoisy``: the same 30 classes in another style (domain generalisation targets);
  16/4/30 per class.
* ``ToySymbols``: 20 other classes (other shapes, partly other colours) for cross-dataset transfer.

Each is written on first use under ``DATASET.ROOT`` (``--root``) as real JPEG files with a
``split_zhou_<Name>.json``, atomically, and then read like every CoOp dataset (split JSON, few-shot
cache, base/new subsampling). Labels are colour-major, so base/new splits the colours (ToyShapes: base =
red, orange, yellow objects; new = green, blue, purple objects; every shape in both).
"""
import os.path as osp

from vlprompt.data.datasets import (
    DATASET_REGISTRY,
    DatasetBase,
    read_split,
)
from vlprompt.toy import templates as _toy_templates  # noqa: F401  (registers the toy templates)
from vlprompt.toy import descriptions as _toy_descriptions  # noqa: F401  (registers the toy class descriptions)
from vlprompt.toy.data import TOY_DATASETS, ensure_toy_dataset, split_file_name
from vlprompt.errors import InvalidValueError


class _ToyDataset(DatasetBase):
    """Shared flow; subclasses only name their toy spec."""

    toy_name = ""

    def __init__(self, cfg):
        spec = TOY_DATASETS[self.toy_name]
        if not cfg.DATASET.ROOT:
            raise InvalidValueError(
                f"{self.toy_name}: DATASET.ROOT (--root) is empty; the toy dataset is generated on first use "
                f"under that folder, so pass one, e.g. --root ./data"
            )
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = ensure_toy_dataset(self.toy_name, root)
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.split_path = osp.join(self.dataset_dir, split_file_name(self.toy_name))
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        self.style = spec.style

        train, val, test = read_split(self.split_path, self.image_dir)
        self.init_from_splits(cfg, train, val, test, prefix=self.image_dir)


def _make(name):
    cls = type(name, (_ToyDataset,), {"toy_name": name, "dataset_dir": TOY_DATASETS[name].dirname,
                                      "__doc__": f"Toy dataset {name} ({TOY_DATASETS[name].style} style)."})
    cls.__module__ = __name__
    return cls


ToyShapes = DATASET_REGISTRY.register(_make("ToyShapes"))
ToyShapesSketch = DATASET_REGISTRY.register(_make("ToyShapesSketch"))
ToyShapesCartoon = DATASET_REGISTRY.register(_make("ToyShapesCartoon"))
ToyShapesNight = DATASET_REGISTRY.register(_make("ToyShapesNight"))
ToyShapesBlurry = DATASET_REGISTRY.register(_make("ToyShapesBlurry"))
ToyShapesNoisy = DATASET_REGISTRY.register(_make("ToyShapesNoisy"))
ToySymbols = DATASET_REGISTRY.register(_make("ToySymbols"))

assert sorted(n for n in TOY_DATASETS) == sorted(
    c.__name__ for c in (ToyShapes, ToyShapesSketch, ToyShapesCartoon, ToyShapesNight, ToyShapesBlurry,
                         ToyShapesNoisy, ToySymbols)
), "every toy spec needs a registered dataset class"
