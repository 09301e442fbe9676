"""Miniature copies of the 15 benchmark datasets, in their exact on-disk layouts.

Each ``make_<dataset>(root)`` writes a few tiny JPEGs per class plus the raw annotation files the
real archive has (txt lists, .mat files via scipy, folders) under ``root/<dataset_dir>`` and returns
a :class:`Mini` with what the dataset class must produce: class names in label order and the
(train, val, test) sizes. ``MINIS`` maps registry names to the builders.
"""
import io
import json
import os
import os.path as osp
import random
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from PIL import Image

from vlprompt.config import get_cfg_default


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg_bytes()


def write_image(path):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(JPEG)


def write_text(path, lines):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


@dataclass
class Mini:
    name: str  # registry name
    dataset_dir: str  # absolute path of the dataset folder
    classnames: List[str]  # expected, in label order
    sizes: Tuple[int, int, int]  # expected (train, val, test); ImageNet: val == test
    split_file: str = ""  # absolute path of the split JSON the class writes ("" if none)


def make_cfg(root, name, num_shots=-1, subsample="all", seed=1):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


def build_dataset(root, name, num_shots=-1, subsample="all", seed=1):
    """Instantiate a registered dataset the way the engine does (stdlib random seeded first)."""
    import datasets  # noqa: F401  (registers the dataset classes)
    from vlprompt.data.datasets import DATASET_REGISTRY

    cfg = make_cfg(root, name, num_shots, subsample, seed)
    random.seed(seed)
    return DATASET_REGISTRY.get(name)(cfg)


def _folder_tree(image_dir, classes, n, stem="img"):
    for c in classes:
        for i in range(n):
            write_image(osp.join(image_dir, c, f"{stem}_{c}_{i:04d}.jpg"))


# --------------------------------------------------------------------------------------------
def make_oxford_pets(root):
    d = osp.join(root, "oxford_pets")
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("american_pit_bull_terrier", 3, 2),
              ("basset_hound", 4, 2)]
    trainval, test = [], []
    for breed, cid, species in breeds:
        for i in range(1, 9):
            imname = f"{breed}_{i}"
            write_image(osp.join(d, "images", imname + ".jpg"))
            (trainval if i <= 5 else test).append(f"{imname} {cid} {species} {i}")
    write_text(osp.join(d, "annotations", "trainval.txt"), trainval)
    write_text(osp.join(d, "annotations", "test.txt"), test)
    write_text(osp.join(d, "annotations", "list.txt"), ["#Image CLASS-ID SPECIES BREED ID"] + trainval + test)
    names = ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound"]
    return Mini("OxfordPets", d, names, (16, 4, 12), osp.join(d, "split_zhou_OxfordPets.json"))


def make_oxford_flowers(root):
    from scipy.io import savemat

    d = osp.join(root, "oxford_flowers")
    labels = [3, 1, 4, 2] * 10  # 1-based labels of image_00001.jpg, image_00002.jpg, ...
    for i in range(len(labels)):
        write_image(osp.join(d, "jpg", f"image_{i + 1:05d}.jpg"))
    savemat(osp.join(d, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    names = {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "canterbury bells", "4": "sweet pea"}
    with open(osp.join(d, "cat_to_name.json"), "w") as f:
        json.dump(names, f)
    return Mini("OxfordFlowers", d, [names[str(i)] for i in range(1, 5)], (20, 8, 12),
                osp.join(d, "split_zhou_OxfordFlowers.json"))


def make_fgvc_aircraft(root):
    d = osp.join(root, "fgvc_aircraft")
    variants = ["707-320", "A300B4", "BAE 146-200", "F-16A/B"]
    write_text(osp.join(d, "variants.txt"), variants)
    counter = 1000000
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        lines = []
        for v in variants:
            for _ in range(n):
                counter += 1
                image_id = f"{counter:07d}"
                write_image(osp.join(d, "images", image_id + ".jpg"))
                lines.append(f"{image_id} {v}")
        write_text(osp.join(d, f"images_variant_{split}.txt"), lines)
    write_text(osp.join(d, "families.txt"), ["Boeing 707"])
    return Mini("FGVCAircraft", d, variants, (12, 8, 8))


def make_dtd(root):
    d = osp.join(root, "dtd")
    classes = ["banded", "blotchy", "braided", "bubbly"]
    _folder_tree(osp.join(d, "images"), classes, 10)
    write_text(osp.join(d, "labels", "train1.txt"), ["banded/banded_0001.jpg"])
    os.makedirs(osp.join(d, "imdb"), exist_ok=True)
    return Mini("DescribableTextures", d, classes, (20, 8, 12), osp.join(d, "split_zhou_DescribableTextures.json"))


def make_eurosat(root):
    d = osp.join(root, "eurosat")
    folders = ["SeaLake", "AnnualCrop", "HerbaceousVegetation", "Forest"]
    _folder_tree(osp.join(d, "2750"), folders, 10)
    names = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Sea or Lake"]
    return Mini("EuroSAT", d, names, (20, 8, 12), osp.join(d, "split_zhou_EuroSAT.json"))


def make_stanford_cars(root):
    from scipy.io import savemat

    d = osp.join(root, "stanford_cars")
    raw = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Acura TL Type-S 2008"]
    meta = np.empty((1, len(raw)), dtype=object)
    for i, n in enumerate(raw):
        meta[0, i] = n
    os.makedirs(osp.join(d, "devkit"), exist_ok=True)
    savemat(osp.join(d, "devkit", "cars_meta.mat"), {"class_names": meta})

    def _annos(folder, per_class, fname):
        dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"),
                 ("fname", "O")]
        recs = np.zeros((1, per_class * len(raw)), dtype=dtype)
        k = 0
        for c in range(len(raw)):
            for _ in range(per_class):
                name = f"{k + 1:05d}.jpg"
                write_image(osp.join(d, folder, name))
                recs[0, k] = (np.array([[1]]), np.array([[1]]), np.array([[7]]), np.array([[7]]),
                              np.array([[c + 1]], dtype=np.uint8), name)
                k += 1
        savemat(fname, {"annotations": recs})

    _annos("cars_train", 5, osp.join(d, "devkit", "cars_train_annos.mat"))
    _annos("cars_test", 3, osp.join(d, "cars_test_annos_withlabels.mat"))
    names = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan", "2008 Acura TL Type-S"]
    return Mini("StanfordCars", d, names, (16, 4, 12), osp.join(d, "split_zhou_StanfordCars.json"))


def make_food101(root):
    d = osp.join(root, "food-101")
    classes = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio"]
    _folder_tree(osp.join(d, "images"), classes, 10)
    write_text(osp.join(d, "meta", "classes.txt"), classes)
    write_text(osp.join(d, "README.txt"), ["Food-101"])
    return Mini("Food101", d, classes, (20, 8, 12), osp.join(d, "split_zhou_Food101.json"))


def make_sun397(root):
    d = osp.join(root, "sun397")
    keys = ["a/abbey", "a/airplane_cabin", "b/bistro/indoor", "b/boathouse"]
    write_text(osp.join(d, "ClassName.txt"), ["/" + k for k in keys])
    train, test = [], []
    for ci, k in enumerate(keys):
        for i in range(8):
            rel = f"{k}/sun_{ci:02d}{i:04d}.jpg"
            write_image(osp.join(d, "SUN397", rel))
            (train if i < 5 else test).append("/" + rel)
    write_text(osp.join(d, "Training_01.txt"), train)
    write_text(osp.join(d, "Testing_01.txt"), test)
    write_text(osp.join(d, "Training_02.txt"), train)
    names = ["abbey", "airplane_cabin", "indoor bistro", "boathouse"]
    return Mini("SUN397", d, names, (16, 4, 12), osp.join(d, "split_zhou_SUN397.json"))


def make_caltech101(root):
    d = osp.join(root, "caltech-101")
    image_dir = osp.join(d, "101_ObjectCategories")
    _folder_tree(image_dir, ["Faces", "Faces_easy", "Leopards", "accordion", "airplanes"], 10)
    _folder_tree(image_dir, ["BACKGROUND_Google"], 4)
    names = ["face", "leopard", "accordion", "airplane"]
    return Mini("Caltech101", d, names, (20, 8, 12), osp.join(d, "split_zhou_Caltech101.json"))


def make_ucf101(root):
    d = osp.join(root, "ucf101")
    actions = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "YoYo"]
    renamed = ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Yo_Yo"]
    write_text(osp.join(d, "ucfTrainTestlist", "classInd.txt"), [f"{i + 1} {a}" for i, a in enumerate(actions)])
    train, test = [], []
    for i, (a, r) in enumerate(zip(actions, renamed)):
        for g in range(1, 9):
            video = f"v_{a}_g{g:02d}_c01"
            write_image(osp.join(d, "UCF-101-midframes", r, video + ".jpg"))
            if g <= 5:
                train.append(f"{a}/{video}.avi {i + 1}")
            else:
                test.append(f"{a}/{video}.avi")
    write_text(osp.join(d, "ucfTrainTestlist", "trainlist01.txt"), train)
    write_text(osp.join(d, "ucfTrainTestlist", "testlist01.txt"), test)
    return Mini("UCF101", d, renamed, (16, 4, 12), osp.join(d, "split_zhou_UCF101.json"))


IMAGENET_MINI_WNIDS = ["n01440764", "n01443537", "n02012849", "n03126707"]
IMAGENET_MINI_NAMES = ["tench", "goldfish", "crane bird", "construction crane"]


def make_imagenet(root, n_train=4, n_val=2):
    d = osp.join(root, "imagenet")
    for w in IMAGENET_MINI_WNIDS:
        for i in range(n_train):
            write_image(osp.join(d, "images", "train", w, f"{w}_{i + 1}.JPEG"))
        for i in range(n_val):
            write_image(osp.join(d, "images", "val", w, f"ILSVRC2012_val_{w[1:]}{i:02d}.JPEG"))
    n = len(IMAGENET_MINI_WNIDS)
    return Mini("ImageNet", d, list(IMAGENET_MINI_NAMES), (n * n_train, n * n_val, n * n_val))


def make_imagenetv2(root):
    d = osp.join(root, "imagenetv2")
    for label in range(4):
        for i in range(2):
            write_image(osp.join(d, "imagenetv2-matched-frequency-format-val", str(label), f"{label}_{i}.jpeg"))
    return Mini("ImageNetV2", d, ["tench", "goldfish", "great white shark", "tiger shark"], (8, 0, 8))


def _variant(root, dataset_dir, image_dir, wnids, names, name, readme=False):
    d = osp.join(root, dataset_dir)
    for w in wnids:
        for i in range(2):
            write_image(osp.join(d, image_dir, w, f"{i}.jpg"))
    if readme:
        write_text(osp.join(d, image_dir, "README.txt"), ["class folders are wnids"])
    return Mini(name, d, names, (2 * len(wnids), 0, 2 * len(wnids)))


def make_imagenet_sketch(root):
    return _variant(root, "imagenet-sketch", "images", ["n01443537", "n01440764", "n02012849"],
                    ["tench", "goldfish", "crane bird"], "ImageNetSketch")


def make_imagenet_a(root):
    # first three wnids of ImageNet-A: stingray, goldfinch, junco (CLIP names)
    return _variant(root, "imagenet-adversarial", "imagenet-a", ["n01534433", "n01498041", "n01531178"],
                    ["stingray", "goldfinch", "junco"], "ImageNetA", readme=True)


def make_imagenet_r(root):
    return _variant(root, "imagenet-rendition", "imagenet-r", ["n01443537", "n01484850", "n01494475"],
                    ["goldfish", "great white shark", "hammerhead shark"], "ImageNetR", readme=True)


MINIS = {
    "OxfordPets": make_oxford_pets,
    "OxfordFlowers": make_oxford_flowers,
    "FGVCAircraft": make_fgvc_aircraft,
    "DescribableTextures": make_dtd,
    "EuroSAT": make_eurosat,
    "StanfordCars": make_stanford_cars,
    "Food101": make_food101,
    "SUN397": make_sun397,
    "Caltech101": make_caltech101,
    "UCF101": make_ucf101,
    "ImageNet": make_imagenet,
    "ImageNetV2": make_imagenetv2,
    "ImageNetSketch": make_imagenet_sketch,
    "ImageNetA": make_imagenet_a,
    "ImageNetR": make_imagenet_r,
}
SPLIT_DATASETS = [n for n in MINIS if n not in ("ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")]
TEST_ONLY = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
