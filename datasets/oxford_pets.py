"""Oxford-IIIT Pets (CoOp's OxfordPets): 37 breeds.

Split: ``split_zhou_OxfordPets.json``; otherwise ``annotations/trainval.txt`` is split 80/20 per class
into train/val and ``annotations/test.txt`` is the test set. Annotation lines are
``<image name> <class id 1..37> <species> <breed id>``; the class name is the image name without its
trailing ``_<number>``, lower-cased ("Abyssinian_12" -> "abyssinian", "american_bulldog_3" ->
"american_bulldog").
"""
import os.path as osp

from vlprompt.data.datasets import DATASET_REGISTRY, split_trainval

from .common import AnnotationError, SplitDataset, make_datum, read_lines


@DATASET_REGISTRY.register()
class OxfordPets(SplitDataset):
    dataset_dir = "oxford_pets"
    catalog_name = "OxfordPets"

    def build_split(self):
        self.anno_dir = osp.join(self.dataset_dir, "annotations")
        trainval = self.read_data("trainval.txt")
        test = self.read_data("test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, split_file):
        filepath = osp.join(self.anno_dir, split_file)
        items = []
        for lineno, line in read_lines(filepath):
            if line.startswith("#"):  # list.txt-style header comments
                continue
            parts = line.split()
            if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1 or "_" not in parts[0]:
                raise AnnotationError(
                    filepath, lineno, '"<image name> <class id from 1> <species> <breed id>"', line
                )
            imname, label = parts[0], int(parts[1]) - 1
            breed = "_".join(imname.split("_")[:-1]).lower()
            impath = osp.join(self.image_dir, imname + ".jpg")
            items.append(make_datum(impath, label, breed, filepath, lineno))
        return items

    # CoOp's dataset files call these as OxfordPets.<helper>; keep them reachable.
    split_trainval = staticmethod(split_trainval)
