"""The dataset registry and ``build_dataset``."""
from vlprompt.utils import Registry, check_availability
from vlprompt.errors import InvalidValueError

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    avai_datasets = DATASET_REGISTRY.registered_names()
    if not cfg.DATASET.NAME:
        raise InvalidValueError(
            "DATASET.NAME is empty: pass --dataset-config-file configs/datasets/<name>.yaml "
            f"(registered datasets: {sorted(avai_datasets)})"
        )
    check_availability(cfg.DATASET.NAME, avai_datasets)
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
