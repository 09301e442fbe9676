"""Describable Textures (DTD): 47 texture classes, folder names used as-is ("banded", ...).

Split: ``split_zhou_DescribableTextures.json``; otherwise a per-class 50/20/30 split of
``images/<class>/`` (classes in case-sensitive sorted order).
"""
from vlprompt.data.datasets import DATASET_REGISTRY, read_and_split_data

from .common import SplitDataset


@DATASET_REGISTRY.register()
class DescribableTextures(SplitDataset):
    dataset_dir = "dtd"
    catalog_name = "DescribableTextures"

    def build_split(self):
        return read_and_split_data(self.image_dir)

    # CoOp's dataset files call DTD.read_and_split_data(...); keep it reachable.
    read_and_split_data = staticmethod(read_and_split_data)
