"""Caltech-101: 100 object classes (BACKGROUND_Google and Faces_easy are dropped).

Split: ``split_zhou_Caltech101.json``; otherwise a per-class 50/20/30 split of
``101_ObjectCategories/<class>/``. Classes are sorted case-sensitively (so Faces, Leopards,
Motorbikes come first) and then renamed: airplanes -> airplane, Faces -> face, Leopards -> leopard,
Motorbikes -> motorbike.
"""
from vlprompt.data.catalog import CALTECH101_IGNORED, CALTECH101_NEW_CNAMES
from vlprompt.data.datasets import DATASET_REGISTRY, read_and_split_data

from .common import SplitDataset

IGNORED = list(CALTECH101_IGNORED)
NEW_CNAMES = CALTECH101_NEW_CNAMES


@DATASET_REGISTRY.register()
class Caltech101(SplitDataset):
    dataset_dir = "caltech-101"
    catalog_name = "Caltech101"

    def build_split(self):
        return read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
