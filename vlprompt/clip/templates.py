"""Hand-crafted prompt templates keyed by ``DATASET.NAME`` (docs/METHODS.md, docs/DATASETS.md)."""

from vlprompt.errors import InvalidValueError

# CoOp's zero-shot templates (ZeroshotCLIP, and the CoOp family's zero-shot baseline).
CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

# APLe's own teacher templates (they differ from CoOp's for several datasets).
APLE_TEMPLATES = {
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a type of food, a photo of {}.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

# The 7 ImageNet templates CLIP selected for prompt ensembling (ZeroshotCLIP2).
IMAGENET_TEMPLATES_SELECT = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]

DEFAULT_TEMPLATE = "a photo of a {}."


_EXTRA_TEMPLATES = {}


def register_templates(table):
    """Add ``{dataset name: template}`` entries contributed by another module (the toy world registers
    its datasets' templates when :mod:`vlprompt.toy.templates` is imported)."""
    for name, template in table.items():
        if "{}" not in template:
            raise InvalidValueError(f'template for {name} must contain "{{}}", got "{template}"')
        _EXTRA_TEMPLATES[name] = template


def get_template(dataset_name, family="coop"):
    """The single template for ``dataset_name``; ``family`` is "coop" or "aple".

    Unknown datasets (e.g. a user's ImageFolder) get ``"a photo of a {}."``.
    """
    table = APLE_TEMPLATES if family == "aple" else CUSTOM_TEMPLATES
    if dataset_name in table:
        return table[dataset_name]
    return _EXTRA_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


def clean_classname(name):
    """Class names and init phrases use ``_`` for spaces in some datasets: ``"sea_lion" -> "sea lion"``."""
    return name.replace("_", " ").strip()


def format_classnames(classnames):
    """Class names as used in prompts (:func:`clean_classname` of each)."""
    return [clean_classname(c) for c in classnames]


def classnames_tensor(classnames):
    """The class names as a uint8 tensor (UTF-8 JSON bytes): a checkpoint can record the class list of its
    class-specific rows (plain tensors only, ``weights_only`` loading)."""
    import json

    import torch

    return torch.tensor(list(json.dumps(list(classnames)).encode("utf-8")), dtype=torch.uint8)


def classnames_from_tensor(t):
    """The class names :func:`classnames_tensor` encoded."""
    import json

    return json.loads(bytes(t.tolist()).decode("utf-8"))


def reindex_by_classname(target, source, target_names, source_names, dim=0):
    """Copy into ``target`` (in place) the slices of ``source`` along ``dim`` whose class name is in both lists
    (matched by :func:`clean_classname`); returns how many classes were copied."""
    index = {clean_classname(n): i for i, n in enumerate(source_names)}
    hit = 0
    for i, n in enumerate(target_names):
        j = index.get(clean_classname(n))
        if j is not None:
            target.select(dim, i).copy_(source.select(dim, j))
            hit += 1
    return hit
