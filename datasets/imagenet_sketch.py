"""ImageNet-Sketch, test only: about 50,000 sketches of the 1000 ImageNet classes.

Layout: ``imagenet-sketch/images/<wnid>/`` (the archive's ``sketch/`` folder renamed to ``images/``).
"""
from vlprompt.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    dataset_dir = "imagenet-sketch"
    catalog_name = "ImageNetSketch"
