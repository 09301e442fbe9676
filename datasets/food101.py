"""Food-101: 101 dishes, folder names with underscores ("apple_pie").

Split: ``split_zhou_Food101.json``; otherwise CoOp's own per-class 50/20/30 split of
``images/<class>/`` (the official ``meta/`` train/test lists are not used).
"""
from vlprompt.data.datasets import DATASET_REGISTRY, read_and_split_data

from .common import SplitDataset


@DATASET_REGISTRY.register()
class Food101(SplitDataset):
    dataset_dir = "food-101"
    catalog_name = "Food101"

    def build_split(self):
        return read_and_split_data(self.image_dir)
