"""FGVC-Aircraft (2013b): 100 aircraft variants, with the official train/val/test lists.

No JSON split is involved: ``variants.txt`` gives the label order (one variant per line) and
``images_variant_{train,val,test}.txt`` lines are ``<image id> <variant with spaces>``; the image is
``images/<image id>.jpg`` and the class name is the variant string ("707-320", "A300B4").
"""
import os.path as osp

from vlprompt.data.datasets import DATASET_REGISTRY

from .common import AnnotationError, SplitDataset, make_datum, read_lines


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitDataset):
    dataset_dir = "fgvc_aircraft"
    catalog_name = "FGVCAircraft"

    def build_split(self):
        variants_file = osp.join(self.dataset_dir, "variants.txt")
        classnames = [line for _, line in read_lines(variants_file)]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train = self.read_data(cname2lab, "images_variant_train.txt")
        val = self.read_data(cname2lab, "images_variant_val.txt")
        test = self.read_data(cname2lab, "images_variant_test.txt")
        return train, val, test

    def read_data(self, cname2lab, split_file):
        filepath = osp.join(self.dataset_dir, split_file)
        items = []
        for lineno, line in read_lines(filepath):
            parts = line.split(" ", 1)
            if len(parts) != 2 or parts[1].strip() not in cname2lab:
                raise AnnotationError(filepath, lineno, '"<image id> <variant listed in variants.txt>"', line)
            imname, classname = parts[0] + ".jpg", parts[1].strip()
            impath = osp.join(self.image_dir, imname)
            items.append(make_datum(impath, cname2lab[classname], classname, filepath, lineno))
        return items
