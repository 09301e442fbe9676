from .build import DATASET_REGISTRY, build_dataset
from .base_dataset import (
    Datum,
    DatasetBase,
    dataset_missing_error,
    external_fewshot,
    load_or_make_fewshot,
    read_and_split_data,
    read_split,
    save_split,
    split_trainval,
    subsample_classes,
)
from . import folder  # noqa: F401  (registers the generic ImageFolder dataset)
