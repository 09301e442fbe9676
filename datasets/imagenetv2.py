"""ImageNetV2 (matched-frequency), test only: 10,000 images of the 1000 ImageNet classes.

Layout: ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/``; the folder number is the
ImageNet label and the name is that of the label-th wnid in sorted order (CoOp takes the label-th
line of classnames.txt, which is the same for the standard sorted file).
"""
from vlprompt.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant
from vlprompt.errors import InvalidValueError


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    dataset_dir = "imagenetv2"
    catalog_name = "ImageNetV2"

    def folder_labels(self, folders, classnames, classnames_file):
        numbered = {}
        for entry in folders:
            if not entry.name.isdigit():
                raise InvalidValueError(
                    f'ImageNetV2: unexpected folder "{entry.name}" in {self.image_dir}; class folders '
                    "are named 0 ... 999"
                )
            numbered[int(entry.name)] = entry
        missing = sorted(set(range(len(numbered))) - set(numbered))
        if missing:
            raise InvalidValueError(
                f"ImageNetV2: class folders must be numbered 0 ... {len(numbered) - 1} without gaps; "
                f"missing {missing[:10]} in {self.image_dir}"
            )
        wnids = sorted(classnames)
        if len(numbered) > len(wnids):
            raise InvalidValueError(
                f"ImageNetV2: {len(numbered)} class folders but only {len(wnids)} classes in {classnames_file}"
            )
        return [(numbered[label], label, classnames[wnids[label]]) for label in range(len(numbered))]
