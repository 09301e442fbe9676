"""Stanford Cars: 196 car models.

Split: ``split_zhou_StanfordCars.json`` (paths relative to the dataset folder, e.g.
``cars_train/00001.jpg``); otherwise ``devkit/cars_train_annos.mat`` is split 80/20 per class into
train/val and ``cars_test_annos_withlabels.mat`` is the test set. Names come from
``devkit/cars_meta.mat["class_names"]`` with the year moved to the front:
"AM General Hummer SUV 2000" -> "2000 AM General Hummer SUV".
"""
import os.path as osp

from vlprompt.data.datasets import DATASET_REGISTRY, split_trainval

from .common import SplitDataset, make_datum
from vlprompt.errors import InvalidValueError


def year_first(name):
    """Move the trailing year to the front ("Acura RL Sedan 2012" -> "2012 Acura RL Sedan")."""
    words = name.split(" ")
    year = words.pop(-1)
    return " ".join([year] + words)


@DATASET_REGISTRY.register()
class StanfordCars(SplitDataset):
    dataset_dir = "stanford_cars"
    catalog_name = "StanfordCars"

    def build_split(self):
        trainval_file = osp.join(self.dataset_dir, "devkit", "cars_train_annos.mat")
        test_file = osp.join(self.dataset_dir, "cars_test_annos_withlabels.mat")
        meta_file = osp.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_data("cars_train", trainval_file, meta_file)
        test = self.read_data("cars_test", test_file, meta_file)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, image_dir, anno_file, meta_file):
        from scipy.io import loadmat

        try:
            annos = loadmat(anno_file)["annotations"][0]
        except Exception as e:
            raise InvalidValueError(f'Cannot read the "annotations" struct array from {anno_file}: {e}') from e
        try:
            class_names = loadmat(meta_file)["class_names"][0]
        except Exception as e:
            raise InvalidValueError(f'Cannot read the "class_names" array from {meta_file}: {e}') from e

        items = []
        for i in range(len(annos)):
            try:
                imname = str(annos[i]["fname"][0])
                label = int(annos[i]["class"][0, 0]) - 1
            except Exception as e:
                raise InvalidValueError(
                    f'{anno_file}: annotation {i} lacks a usable "fname"/"class" field ({e})'
                ) from e
            if not 0 <= label < len(class_names):
                raise InvalidValueError(
                    f"{anno_file}: annotation {i} has class {label + 1}, but {meta_file} "
                    f"lists {len(class_names)} class names"
                )
            classname = year_first(str(class_names[label][0]))
            impath = osp.join(self.dataset_dir, image_dir, imname)
            items.append(make_datum(impath, label, classname, f"{anno_file}, annotation {i}"))
        return items
