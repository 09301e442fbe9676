"""ImageNet-R (renditions), test only: 30,000 images of 200 ImageNet classes.

Layout: ``imagenet-rendition/imagenet-r/<wnid>/`` (``README.txt`` is skipped). Labels are 0..199
in sorted-wnid order, with the ImageNet (CLIP) names of those 200 wnids.
"""
from vlprompt.data.catalog import IMAGENET_VARIANT_IGNORED
from vlprompt.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant

TO_BE_IGNORED = list(IMAGENET_VARIANT_IGNORED)


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    dataset_dir = "imagenet-rendition"
    catalog_name = "ImageNetR"
    ignored = IMAGENET_VARIANT_IGNORED
