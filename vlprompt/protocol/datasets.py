"""Dataset facts of the evaluation protocols (torch-free): names, table order, targets, shots, seeds.

Dataset names are the yaml base names of ``configs/datasets/``. The lists follow the papers' tables
(CoOp, CoCoOp, MaPLe): 11 datasets for base-to-novel and few-shot, ImageNet as the source of
cross-dataset transfer and domain generalisation, the 10 other datasets as cross-dataset targets and
the four ImageNet variants as domain-generalisation targets. The protocols themselves (which of these
lists each uses, its steps and folders) are the registered objects of :mod:`vlprompt.protocol.protocols`;
:data:`PROTOCOLS` names the four shipped ones (``protocol_names()`` gives every registered one).
"""
import os.path as osp

__all__ = [
    "PROTOCOLS",
    "DATASETS_11",
    "DG_TARGETS",
    "XD_SOURCE",
    "XD_TARGETS",
    "KNOWN_DATASETS",
    "DEFAULT_SEEDS",
    "FEW_SHOT_SHOTS",
    "B2N_SHOTS",
    "XD_SHOTS",
    "DATASET_CLASS_TO_KEY",
    "DISPLAY_NAMES",
    "dataset_key",
    "target_protocol",
    "default_datasets",
]

PROTOCOLS = ("base2new", "cross_dataset", "domain_generalization", "few_shot")

# The 11 datasets in the order of the papers' tables.
DATASETS_11 = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
XD_SOURCE = "imagenet"
XD_TARGETS = tuple(d for d in DATASETS_11 if d != XD_SOURCE)
KNOWN_DATASETS = frozenset(DATASETS_11) | frozenset(DG_TARGETS)
DEFAULT_SEEDS = (1, 2, 3)
FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
B2N_SHOTS = 16  # base-to-novel trains with 16 shots per base class
XD_SHOTS = 16  # the ImageNet source model of the transfer protocols: 16 shots, all classes

# DATASET.NAME (the dataset class name, as results.json records it) -> yaml base name
DATASET_CLASS_TO_KEY = {
    "ImageNet": "imagenet",
    "Caltech101": "caltech101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
}

# yaml base name -> column name of the papers' tables
DISPLAY_NAMES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}


def dataset_key(name):
    """The yaml base name for a yaml base name, a dataset class name or a config path (None stays None)."""
    if name is None:
        return None
    base = osp.basename(str(name))
    if base.endswith(".yaml"):
        base = base[:-5]
    return DATASET_CLASS_TO_KEY.get(base, base)


def target_protocol(dataset):
    """The protocol an evaluation of the source model on ``dataset`` belongs to."""
    return "domain_generalization" if dataset in DG_TARGETS else "cross_dataset"


def default_datasets(protocol, source=XD_SOURCE):
    """The standard datasets (base2new, few_shot) or targets (cross_dataset, domain_generalization)."""
    if protocol == "cross_dataset":
        return [d for d in DATASETS_11 if d != source]
    if protocol == "domain_generalization":
        return list(DG_TARGETS)
    if protocol in ("base2new", "few_shot"):
        return list(DATASETS_11)
    raise ValueError(f"Unknown protocol '{protocol}'. Valid protocols: {', '.join(PROTOCOLS)}")
