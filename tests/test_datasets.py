"""The 15 benchmark datasets on fabricated miniatures in their exact layouts (tests/dataset_fixtures.py).

Covers: class names and label order after each dataset's rules, split sizes, the generated split
JSON and its round trip, base/new halves, few-shot sampling (determinism by seed, JSON cache round
trip), official split files read verbatim, and the config yamls.
"""
import glob
import json
import math
import os
import os.path as osp

import pytest
import yaml

from dataset_fixtures import MINIS, SPLIT_DATASETS, TEST_ONLY, build_dataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ALL = list(MINIS)


def _triples(items):
    return [(it.impath, it.label, it.classname) for it in items]


def _per_class(items):
    counts = {}
    for it in items:
        counts[it.label] = counts.get(it.label, 0) + 1
    return counts


@pytest.mark.parametrize("name", ALL)
def test_classnames_labels_and_sizes(tmp_path, name):
    mini = MINIS[name](str(tmp_path))
    ds = build_dataset(tmp_path, name)
    assert ds.classnames == mini.classnames
    assert ds.num_classes == len(mini.classnames)
    val = ds.val if ds.val is not None else []
    assert (len(ds.train_x), len(val), len(ds.test)) == mini.sizes
    for split in (ds.train_x, val, ds.test):
        for it in split:
            assert osp.isfile(it.impath)
            assert ds.lab2cname[it.label] == it.classname
    # every class is present in every split
    assert sorted(_per_class(ds.train_x)) == list(range(len(mini.classnames)))
    assert sorted(_per_class(ds.test)) == list(range(len(mini.classnames)))
    if name in TEST_ONLY:
        assert ds.val is None
        assert _triples(ds.train_x) == _triples(ds.test)
    if name == "ImageNet":
        assert ds.val is ds.test
    # no temp files left behind by the atomic writers
    assert not glob.glob(osp.join(mini.dataset_dir, "**", "*.tmp"), recursive=True)


@pytest.mark.parametrize("name", [n for n in SPLIT_DATASETS if n != "FGVCAircraft"])
def test_generated_split_is_saved_and_read_back(tmp_path, name, capsys):
    mini = MINIS[name](str(tmp_path))
    first = build_dataset(tmp_path, name)
    assert osp.isfile(mini.split_file)
    with open(mini.split_file) as f:
        split = json.load(f)
    assert sorted(split) == ["test", "train", "val"]
    for key, n in zip(("train", "val", "test"), mini.sizes):
        assert len(split[key]) == n
        for rel, label, cname in split[key]:
            assert not osp.isabs(rel) and isinstance(label, int) and cname in mini.classnames
    capsys.readouterr()
    second = build_dataset(tmp_path, name, seed=7)  # a different seed must not matter any more
    assert "Reading split from" in capsys.readouterr().out
    for a, b in ((first.train_x, second.train_x), (first.val, second.val), (first.test, second.test)):
        assert _triples(a) == _triples(b)


def test_fgvc_uses_the_official_lists_and_writes_no_split(tmp_path):
    mini = MINIS["FGVCAircraft"](str(tmp_path))
    ds = build_dataset(tmp_path, "FGVCAircraft")
    assert not glob.glob(osp.join(mini.dataset_dir, "split_zhou_*.json"))
    with open(osp.join(mini.dataset_dir, "images_variant_val.txt")) as f:
        first_val = f.readline().split(" ", 1)
    assert ds.val[0].impath.endswith(first_val[0] + ".jpg") and ds.val[0].classname == first_val[1].strip()


def test_official_split_names_are_used_verbatim(tmp_path):
    """Renaming rules apply only when a split is generated; a JSON's names are taken as they are."""
    mini = MINIS["EuroSAT"](str(tmp_path))
    image_dir = osp.join(mini.dataset_dir, "2750")
    split = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(["AnnualCrop", "Forest"]):
        files = sorted(os.listdir(osp.join(image_dir, folder)))
        split["train"] += [[f"{folder}/{x}", label, folder] for x in files[:3]]
        split["val"] += [[f"{folder}/{x}", label, folder] for x in files[3:4]]
        split["test"] += [[f"{folder}/{x}", label, folder] for x in files[4:6]]
    with open(mini.split_file, "w") as f:
        json.dump(split, f)
    ds = build_dataset(tmp_path, "EuroSAT")
    assert ds.classnames == ["AnnualCrop", "Forest"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (6, 2, 4)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("half", ["base", "new"])
def test_base_new_halves(tmp_path, name, half):
    mini = MINIS[name](str(tmp_path))
    ds = build_dataset(tmp_path, name, subsample=half)
    n = len(mini.classnames)
    m = math.ceil(n / 2)
    expected = mini.classnames[:m] if half == "base" else mini.classnames[m:]
    assert ds.classnames == expected
    assert ds.num_classes == len(expected)
    for split in [s for s in (ds.train_x, ds.val, ds.test) if s is not None]:
        assert split and sorted(_per_class(split)) == list(range(len(expected)))
        for it in split:
            assert it.classname == expected[it.label]


@pytest.mark.parametrize("name", [n for n in ALL if n not in TEST_ONLY])
def test_fewshot_sampling_and_json_cache(tmp_path, name, capsys):
    mini = MINIS[name](str(tmp_path))
    full = build_dataset(tmp_path, name)
    ds = build_dataset(tmp_path, name, num_shots=2, seed=1)
    cache = osp.join(mini.dataset_dir, "split_fewshot", "shot_2-seed_1.json")
    assert osp.isfile(cache)
    with open(cache) as f:
        data = json.load(f)
    full_train = {it.impath for it in full.train_x}
    assert all(c == 2 for c in _per_class(ds.train_x).values())
    assert {it.impath for it in ds.train_x} <= full_train
    if name == "ImageNet":
        assert sorted(data) == ["source", "train"]  # source: the split it was drawn from
        assert _triples(ds.test) == _triples(full.test) and ds.val is ds.test
    else:
        assert sorted(data) == ["source", "train", "val"]
        full_val = _per_class(full.val)
        assert _per_class(ds.val) == {k: min(v, 2) for k, v in full_val.items()}
        assert _triples(ds.test) == _triples(full.test)
    for rel, _, _ in data["train"]:
        assert not osp.isabs(rel)

    # the cache is read back as is ...
    capsys.readouterr()
    again = build_dataset(tmp_path, name, num_shots=2, seed=1)
    assert "Loading preprocessed few-shot data from" in capsys.readouterr().out
    assert _triples(again.train_x) == _triples(ds.train_x)
    # ... and resampling with the same seed reproduces it exactly
    os.remove(cache)
    resampled = build_dataset(tmp_path, name, num_shots=2, seed=1)
    assert _triples(resampled.train_x) == _triples(ds.train_x)
    if name != "ImageNet":
        assert _triples(resampled.val) == _triples(ds.val)


def test_fewshot_depends_on_the_seed(tmp_path):
    MINIS["DescribableTextures"](str(tmp_path))
    a = build_dataset(tmp_path, "DescribableTextures", num_shots=2, seed=1)
    b = build_dataset(tmp_path, "DescribableTextures", num_shots=2, seed=2)
    assert _triples(a.train_x) != _triples(b.train_x)


def test_fewshot_then_base_new(tmp_path):
    """The base2new protocol: few-shot first, then the class half (labels relabelled from 0)."""
    MINIS["Caltech101"](str(tmp_path))
    ds = build_dataset(tmp_path, "Caltech101", num_shots=2, subsample="new")
    assert ds.classnames == ["accordion", "airplane"]
    assert _per_class(ds.train_x) == {0: 2, 1: 2}
    assert _per_class(ds.val) == {0: 2, 1: 2}
    assert _per_class(ds.test) == {0: 3, 1: 3}


@pytest.mark.parametrize("name", TEST_ONLY)
def test_test_only_datasets_ignore_num_shots(tmp_path, name, capsys):
    mini = MINIS[name](str(tmp_path))
    ds = build_dataset(tmp_path, name, num_shots=1)
    assert "test-only" in capsys.readouterr().out
    assert len(ds.test) == mini.sizes[2] and len(ds.train_x) == mini.sizes[2]
    assert not osp.exists(osp.join(mini.dataset_dir, "split_fewshot"))


def test_config_yamls_name_registered_datasets():
    import datasets  # noqa: F401
    from vlprompt.data.catalog import DATASETS
    from vlprompt.data.datasets import DATASET_REGISTRY

    expected = {
        "caltech101": "Caltech101", "dtd": "DescribableTextures", "eurosat": "EuroSAT",
        "fgvc_aircraft": "FGVCAircraft", "food101": "Food101", "imagenet": "ImageNet",
        "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR", "imagenet_sketch": "ImageNetSketch",
        "imagenetv2": "ImageNetV2", "oxford_flowers": "OxfordFlowers", "oxford_pets": "OxfordPets",
        "stanford_cars": "StanfordCars", "sun397": "SUN397", "ucf101": "UCF101",
    }
    for stem, reg in expected.items():
        path = osp.join(ROOT, "configs", "datasets", f"{stem}.yaml")
        with open(path) as f:
            assert yaml.safe_load(f) == {"DATASET": {"NAME": reg}}
        assert reg in DATASET_REGISTRY.registered_names()
        assert DATASETS[reg].yaml == stem
    assert sorted(expected.values()) == sorted(DATASETS)


def test_yaml_merges_into_the_default_config():
    from vlprompt.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.merge_from_file(osp.join(ROOT, "configs", "datasets", "fgvc_aircraft.yaml"))
    assert cfg.DATASET.NAME == "FGVCAircraft"


def test_coop_static_helpers_stay_reachable():
    """Third-party CoOp dataset files call OxfordPets.read_split/split_trainval, DTD.read_and_split_data."""
    from datasets.dtd import DescribableTextures
    from datasets.imagenet import ImageNet
    from datasets.oxford_pets import OxfordPets

    for fn in ("read_split", "save_split", "split_trainval", "subsample_classes"):
        assert callable(getattr(OxfordPets, fn))
    assert callable(DescribableTextures.read_and_split_data)
    assert callable(ImageNet.read_classnames)
