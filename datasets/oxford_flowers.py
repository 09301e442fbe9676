"""Oxford Flowers-102: 102 flower species.

Split: ``split_zhou_OxfordFlowers.json``; otherwise ``imagelabels.mat`` (1-based label of image
``jpg/image_<i:05d>.jpg``) is split 50/20/30 per class (classes in order of first appearance), and
names come from ``cat_to_name.json`` (``{"<label>": "<name>"}``).
"""
import os.path as osp
import random
from collections import OrderedDict

from vlprompt.data.datasets import DATASET_REGISTRY
from vlprompt.utils import read_json

from .common import SplitDataset, make_datum
from vlprompt.errors import InvalidValueError


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitDataset):
    dataset_dir = "oxford_flowers"
    catalog_name = "OxfordFlowers"

    def build_split(self):
        from scipy.io import loadmat

        label_file = osp.join(self.dataset_dir, "imagelabels.mat")
        lab2cname_file = osp.join(self.dataset_dir, "cat_to_name.json")
        try:
            labels = loadmat(label_file)["labels"][0]
        except Exception as e:
            raise InvalidValueError(f'Cannot read the "labels" array from {label_file}: {e}') from e
        lab2cname = read_json(lab2cname_file)

        tracker = OrderedDict()
        for i, label in enumerate(labels):
            impath = osp.join(self.image_dir, f"image_{i + 1:05d}.jpg")
            tracker.setdefault(int(label), []).append(impath)

        print("Splitting data into 50% train, 20% val, and 30% test")
        train, val, test = [], [], []
        for label, impaths in tracker.items():
            if str(label) not in lab2cname:
                raise InvalidValueError(f'{lab2cname_file} has no name for label "{label}" (used in {label_file})')
            cname = lab2cname[str(label)]
            random.shuffle(impaths)
            n_total = len(impaths)
            n_train = round(n_total * 0.5)
            n_val = round(n_total * 0.2)
            n_test = n_total - n_train - n_val
            if not (n_train > 0 and n_val > 0 and n_test > 0):
                raise InvalidValueError(
                    f"{label_file}: label {label} has {n_total} images, too few for a 50/20/30 split"
                )

            def _collate(ims):
                return [make_datum(im, label - 1, cname, label_file) for im in ims]

            train.extend(_collate(impaths[:n_train]))
            val.extend(_collate(impaths[n_train:n_train + n_val]))
            test.extend(_collate(impaths[n_train + n_val:]))
        return train, val, test
