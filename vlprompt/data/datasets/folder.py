"""A generic folder dataset for bring-your-own data.

Layout: ``<DATASET.ROOT>/<DATASET.FOLDER>/<class name>/<images>`` (``DATASET.FOLDER`` may be empty,
then the root itself holds the class folders). On first use a per-class 50/20/30 train/val/test
split is made with the seeded stdlib ``random`` and saved as ``split_vlprompt_ImageFolder.json``
beside the class folders; later runs read it, so the split never changes under you. Class names
are the folder names with ``_`` kept (trainers replace it with a space).
"""
import os.path as osp

from .base_dataset import (
    DatasetBase,
    dataset_missing_error,
    read_and_split_data,
    read_split,
    save_split,
)
from .build import DATASET_REGISTRY

SPLIT_FILE = "split_vlprompt_ImageFolder.json"
IGNORED = ("split_fewshot",)


@DATASET_REGISTRY.register()
class ImageFolder(DatasetBase):
    dataset_dir = ""

    def __init__(self, cfg):
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = osp.join(root, cfg.DATASET.FOLDER) if cfg.DATASET.FOLDER else root
        self.image_dir = self.dataset_dir
        if not osp.isdir(self.dataset_dir):
            raise dataset_missing_error("ImageFolder", self.dataset_dir, "image folder")
        self.split_path = osp.join(self.dataset_dir, SPLIT_FILE)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

        if osp.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            train, val, test = read_and_split_data(self.image_dir, ignored=IGNORED)
            save_split(train, val, test, self.split_path, self.image_dir)

        self.init_from_splits(cfg, train, val, test, prefix=self.image_dir)
