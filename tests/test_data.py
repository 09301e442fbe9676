"""Data machinery: Datum, splits, few-shot sampling and cache, base/new subsampling, loaders."""
import json
import os
import random

import pytest
import torch

from tests.helpers import make_cfg, make_image_folder
from vlprompt.data import DataManager
from vlprompt.data.datasets import (
    DATASET_REGISTRY,
    DatasetBase,
    Datum,
    load_or_make_fewshot,
    read_and_split_data,
    read_split,
    save_split,
    split_trainval,
    subsample_classes,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("f")
    make_image_folder(str(root), n_classes=5, n_per_class=10)
    return str(root)


def test_datum_requires_existing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        Datum(impath=str(tmp_path / "missing.jpg"))
    assert "missing.jpg" in str(e.value)


def test_read_and_split_data_rules(folder):
    random.seed(1)
    train, val, test = read_and_split_data(folder, ignored=("class_4",), new_cnames={"class_0": "zero"})
    labels = sorted({d.label for d in train})
    assert labels == [0, 1, 2, 3]
    assert {d.classname for d in train if d.label == 0} == {"zero"}
    assert len(train) == 4 * 5 and len(val) == 4 * 2 and len(test) == 4 * 3


def test_case_sensitive_class_order(tmp_path):
    for name in ["accordion", "Faces", "airplanes", "Leopards"]:
        d = tmp_path / name
        d.mkdir()
        for i in range(4):
            from PIL import Image
            Image.new("RGB", (4, 4)).save(d / f"{i}.jpg")
    train, _, _ = read_and_split_data(str(tmp_path), p_trn=0.5, p_val=0.25)
    order = {d.classname: d.label for d in train}
    assert order == {"Faces": 0, "Leopards": 1, "accordion": 2, "airplanes": 3}


def test_split_file_round_trip_and_errors(folder, tmp_path):
    random.seed(0)
    train, val, test = read_and_split_data(folder)
    path = str(tmp_path / "split.json")
    save_split(train, val, test, path, folder)
    raw = json.loads(open(path).read())
    assert raw["train"][0][0] == os.path.relpath(train[0].impath, folder)
    assert not raw["train"][0][0].startswith("/")
    tr2, va2, te2 = read_split(path, folder)
    assert [(d.impath, d.label, d.classname) for d in tr2] == [(d.impath, d.label, d.classname) for d in train]
    raw["test"][1][0] = "class_0/ghost.jpg"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(FileNotFoundError) as e:
        read_split(str(bad), folder)
    assert "ghost.jpg" in str(e.value) and "bad.json" in str(e.value)
    bad.write_text('{"train": [\n["a", 1]\n')
    with pytest.raises(ValueError) as e:
        read_split(str(bad), folder)
    assert "bad.json" in str(e.value) and "line" in str(e.value)


def test_fewshot_sampling_matches_dassl_algorithm(folder):
    random.seed(0)
    train, _, _ = read_and_split_data(folder)
    ds = DatasetBase(train_x=train)
    random.seed(7)
    got = ds.generate_fewshot_dataset(train, num_shots=2)
    # Dassl: per label in first-appearance order, random.sample(items, k)
    random.seed(7)
    by_label = {}
    for d in train:
        by_label.setdefault(d.label, []).append(d)
    expected = []
    for _, items in by_label.items():
        expected.extend(random.sample(items, 2))
    assert [d.impath for d in got] == [d.impath for d in expected]
    # fewer items than shots: all of them (no repeat), or sampled with replacement (repeat)
    assert len(ds.generate_fewshot_dataset(train, num_shots=50)) == len(train)
    assert len(ds.generate_fewshot_dataset(train, num_shots=8, repeat=True)) == 5 * 8


def test_fewshot_cache_json_round_trip(folder, tmp_path):
    random.seed(0)
    train, val, _ = read_and_split_data(folder)
    ds = DatasetBase(train_x=train)
    cache_dir = str(tmp_path / "split_fewshot")
    random.seed(1)
    t1, v1 = load_or_make_fewshot(ds, cache_dir, 4, 1, train, val, prefix=folder)
    path = os.path.join(cache_dir, "shot_4-seed_1.json")
    data = json.loads(open(path).read())
    assert set(data) == {"train", "val", "source"} and len(data["train"]) == 20 and len(data["val"]) == 5 * 2
    random.seed(999)  # the cache, not the RNG, decides
    t2, v2 = load_or_make_fewshot(ds, cache_dir, 4, 1, train, val, prefix=folder)
    assert [d.impath for d in t1] == [d.impath for d in t2] and [d.impath for d in v1] == [d.impath for d in v2]
    # ImageNet style: no val
    t3, v3 = load_or_make_fewshot(ds, cache_dir, 2, 1, train, None, prefix=folder)
    assert v3 is None and set(json.loads(open(os.path.join(cache_dir, "shot_2-seed_1.json")).read())) == {"train", "source"}


def test_subsample_base_new_relabels(folder):
    random.seed(0)
    train, val, test = read_and_split_data(folder)
    b_train, b_val, b_test = subsample_classes(train, val, test, subsample="base")
    n_train, n_val, n_test = subsample_classes(train, val, test, subsample="new")
    assert sorted({d.label for d in b_train}) == [0, 1, 2] and sorted({d.label for d in n_test}) == [0, 1]
    assert {d.classname for d in b_test} == {"class_0", "class_1", "class_2"}
    assert {d.classname for d in n_test} == {"class_3", "class_4"}
    assert {d.classname for d in n_train if d.label == 0} == {"class_3"}
    assert subsample_classes(train, val, test, subsample="all") == (train, val, test)
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(train, subsample="novel")


def test_imagefolder_dataset_and_loaders(tmp_path):
    root = tmp_path / "data"
    make_image_folder(str(root / "mine"), n_classes=5, n_per_class=10)
    cfg = make_cfg(root, folder="mine", opts=["DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base"])
    random.seed(cfg.SEED)
    dm = DataManager(cfg)
    assert dm.num_classes == 3 and dm.dataset.classnames == ["class_0", "class_1", "class_2"]
    assert len(dm.dataset.train_x) == 6 and len(dm.dataset.test) == 9
    assert (root / "mine" / "split_vlprompt_ImageFolder.json").is_file()
    assert (root / "mine" / "split_fewshot" / "shot_2-seed_1.json").is_file()
    batch = next(iter(dm.train_loader_x))
    assert set(batch) == {"img", "label", "domain", "impath", "index"}
    assert batch["img"].shape == (4, 3, 224, 224) and batch["label"].dtype == torch.int64
    assert len(dm.train_loader_x) == 1  # drop_last: 6 items, batch 4
    assert isinstance(dm.test_loader.sampler, torch.utils.data.SequentialSampler)
    # the test transform is deterministic: resize + center crop + normalize
    b1 = next(iter(dm.test_loader))["img"]
    b2 = next(iter(dm.test_loader))["img"]
    assert torch.equal(b1, b2)
    assert DATASET_REGISTRY.get("ImageFolder") is type(dm.dataset)


def test_missing_folder_error(tmp_path):
    cfg = make_cfg(tmp_path, folder="absent")
    with pytest.raises(FileNotFoundError) as e:
        DataManager(cfg)
    assert "ImageFolder" in str(e.value) and str(tmp_path / "absent") in str(e.value)
