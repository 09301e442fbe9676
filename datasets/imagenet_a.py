"""ImageNet-A (natural adversarial examples), test only: 7,500 images of 200 ImageNet classes.

Layout: ``imagenet-adversarial/imagenet-a/<wnid>/`` (``README.txt`` is skipped). Labels are 0..199
in sorted-wnid order, with the ImageNet (CLIP) names of those 200 wnids.
"""
from vlprompt.data.catalog import IMAGENET_VARIANT_IGNORED
from vlprompt.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant

TO_BE_IGNORED = list(IMAGENET_VARIANT_IGNORED)


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    dataset_dir = "imagenet-adversarial"
    catalog_name = "ImageNetA"
    ignored = IMAGENET_VARIANT_IGNORED
