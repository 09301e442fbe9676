"""SUN397: 397 scene categories.

Split: ``split_zhou_SUN397.json``; otherwise ``Training_01.txt`` is split 80/20 per class into
train/val and ``Testing_01.txt`` is the test set. ``ClassName.txt`` lines (``/a/abbey``) give the
label order; list lines are ``/a/abbey/sun_....jpg`` and the image is ``SUN397/a/abbey/sun_....jpg``.
The readable name drops the first (letter) component and reverses the rest:
"a/abbey" -> "abbey", "b/bistro/indoor" -> "indoor bistro".
"""
import os.path as osp

from vlprompt.data.datasets import DATASET_REGISTRY, split_trainval

from .common import AnnotationError, SplitDataset, make_datum, read_lines


def readable_name(class_key):
    """'b/bistro/indoor' -> 'indoor bistro' (drop the letter folder, reverse the rest)."""
    return " ".join(class_key.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(SplitDataset):
    dataset_dir = "sun397"
    catalog_name = "SUN397"

    def build_split(self):
        classname_file = osp.join(self.dataset_dir, "ClassName.txt")
        classnames = []
        for lineno, line in read_lines(classname_file):
            key = line.lstrip("/")
            if "/" not in key:
                raise AnnotationError(classname_file, lineno, '"/<letter>/<class>[/<subclass>]"', line)
            classnames.append(key)
        cname2lab = {c: i for i, c in enumerate(classnames)}
        trainval = self.read_data(cname2lab, "Training_01.txt")
        test = self.read_data(cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, text_file):
        text_file = osp.join(self.dataset_dir, text_file)
        items = []
        for lineno, line in read_lines(text_file):
            imname = line.lstrip("/")
            class_key = osp.dirname(imname)
            if class_key not in cname2lab:
                raise AnnotationError(
                    text_file, lineno, "an image under a class listed in ClassName.txt", line
                )
            impath = osp.join(self.image_dir, imname)
            items.append(make_datum(impath, cname2lab[class_key], readable_name(class_key), text_file, lineno))
        return items
