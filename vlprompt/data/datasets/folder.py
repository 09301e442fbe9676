"""A generic folder dataset for bring-your-own data.

Layout: ``<DATASET.ROOT>/<DATASET.FOLDER>/<class name>/<images>`` (``DATASET.FOLDER`` may be empty,
then the root itself holds the class folders). On first use a per-class 50/20/30 train/val/test
split is made with the seeded stdlib ``random`` and saved as ``split_vlprompt_ImageFolder.json``
beside the class folders; later runs read it, so the split never changes under you. Class names
are the folder names with ``_`` kept (trainers replace it with a space).

Only image files enter the split: entries of a class folder whose extension is not one of
:data:`IMAGE_EXTENSIONS` (torchvision's ImageFolder list, any case), and sub-folders, are left out with
one warning naming them. The dataset's name in results.json (``dataset``) is the folder's name, so two
ImageFolder datasets get two columns in the tables.
"""
import os
import os.path as osp

from .base_dataset import (
    DatasetBase,
    dataset_missing_error,
    read_and_split_data,
    read_split,
    save_split,
)
from .build import DATASET_REGISTRY

SPLIT_FILE = "split_vlprompt_ImageFolder.json"
IGNORED = ("split_fewshot",)
#: the file extensions read as images (torchvision.datasets.folder.IMG_EXTENSIONS), compared lower-case
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path):
    return osp.isfile(path) and osp.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _warn_skipped(image_dir, shown=8):
    """One warning line naming the entries of the class folders that are not image files."""
    skipped = []
    for category in sorted(os.listdir(image_dir)):
        cdir = osp.join(image_dir, category)
        if category.startswith(".") or category in IGNORED or not osp.isdir(cdir):
            continue
        skipped += [osp.join(category, f) for f in sorted(os.listdir(cdir))
                    if not f.startswith(".") and not is_image_file(osp.join(cdir, f))]
    if skipped:
        more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
        print(f"Warning: ImageFolder {image_dir}: {len(skipped)} entr{'y is' if len(skipped) == 1 else 'ies are'} "
              f"not image files ({', '.join(IMAGE_EXTENSIONS)}) and left out of the split: "
              f"{', '.join(skipped[:shown])}{more}")


@DATASET_REGISTRY.register()
class ImageFolder(DatasetBase):
    dataset_dir = ""

    def __init__(self, cfg):
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = osp.join(root, cfg.DATASET.FOLDER) if cfg.DATASET.FOLDER else root
        self.image_dir = self.dataset_dir
        if not osp.isdir(self.dataset_dir):
            raise dataset_missing_error("ImageFolder", self.dataset_dir, "image folder")
        self.split_path = osp.join(self.dataset_dir, SPLIT_FILE)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

        if osp.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            _warn_skipped(self.image_dir)
            train, val, test = read_and_split_data(self.image_dir, ignored=IGNORED, keep=is_image_file)
            save_split(train, val, test, self.split_path, self.image_dir)

        # results.json names the dataset by its folder (tables then keep two ImageFolder datasets apart)
        self.record_name = osp.basename(osp.normpath(self.dataset_dir))
        self.init_from_splits(cfg, train, val, test, prefix=self.image_dir)
