"""EuroSAT (RGB): 10 land-cover classes.

Split: ``split_zhou_EuroSAT.json``; otherwise a per-class 50/20/30 split of ``2750/<class>/``, with
the folder names renamed after the labels are assigned (AnnualCrop -> "Annual Crop Land", ...; see
``vlprompt.data.catalog.EUROSAT_NEW_CNAMES``).
"""
from vlprompt.data.catalog import EUROSAT_NEW_CNAMES
from vlprompt.data.datasets import DATASET_REGISTRY, read_and_split_data

from .common import SplitDataset

NEW_CNAMES = EUROSAT_NEW_CNAMES


@DATASET_REGISTRY.register()
class EuroSAT(SplitDataset):
    dataset_dir = "eurosat"
    catalog_name = "EuroSAT"

    def build_split(self):
        return read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
