"""Bad input: missing folders, missing images, malformed split and annotation files.

Each error names the dataset / file / line / image, and no half-written split or cache is left.
"""
import glob
import os
import os.path as osp

import pytest

from dataset_fixtures import MINIS, build_dataset, write_text


def _no_split_written(dataset_dir):
    assert not glob.glob(osp.join(dataset_dir, "split_zhou_*.json"))
    assert not glob.glob(osp.join(dataset_dir, "**", "*.tmp"), recursive=True)
    assert not glob.glob(osp.join(dataset_dir, "**", ".*.tmp"), recursive=True)


@pytest.mark.parametrize("name", list(MINIS))
def test_missing_dataset_folder_names_dataset_path_and_commands(tmp_path, name):
    from vlprompt.data.catalog import get_info

    with pytest.raises(FileNotFoundError) as exc:
        build_dataset(tmp_path, name)
    msg = str(exc.value)
    assert name in msg
    assert osp.join(str(tmp_path), get_info(name).dataset_dir) in msg
    assert "python -m vlprompt.data.doctor" in msg
    assert "python -m vlprompt.data.download" in msg


def test_missing_annotation_file_is_named(tmp_path):
    mini = MINIS["OxfordPets"](str(tmp_path))
    os.remove(osp.join(mini.dataset_dir, "annotations", "test.txt"))
    with pytest.raises(FileNotFoundError) as exc:
        build_dataset(tmp_path, "OxfordPets")
    msg = str(exc.value)
    assert osp.join(mini.dataset_dir, "annotations", "test.txt") in msg
    assert "split_zhou_OxfordPets.json is absent" in msg
    _no_split_written(mini.dataset_dir)


def test_missing_image_folder_of_a_folder_dataset(tmp_path):
    os.makedirs(osp.join(tmp_path, "eurosat"))
    with pytest.raises(FileNotFoundError) as exc:
        build_dataset(tmp_path, "EuroSAT")
    assert osp.join(str(tmp_path), "eurosat", "2750") in str(exc.value)


def test_split_referencing_a_missing_image_names_it(tmp_path):
    mini = MINIS["DescribableTextures"](str(tmp_path))
    ds = build_dataset(tmp_path, "DescribableTextures")
    victim = ds.test[3].impath
    os.remove(victim)
    with pytest.raises(FileNotFoundError) as exc:
        build_dataset(tmp_path, "DescribableTextures")
    assert victim in str(exc.value)
    assert mini.split_file in str(exc.value)


def test_annotation_referencing_a_missing_image_names_image_file_and_line(tmp_path):
    mini = MINIS["OxfordPets"](str(tmp_path))
    os.remove(osp.join(mini.dataset_dir, "images", "american_bulldog_2.jpg"))
    with pytest.raises(FileNotFoundError) as exc:
        build_dataset(tmp_path, "OxfordPets")
    msg = str(exc.value)
    assert "american_bulldog_2.jpg" in msg
    assert osp.join(mini.dataset_dir, "annotations", "trainval.txt") in msg and "line 7" in msg
    _no_split_written(mini.dataset_dir)


def test_malformed_split_json_names_file_and_line(tmp_path):
    mini = MINIS["Food101"](str(tmp_path))
    with open(mini.split_file, "w") as f:
        f.write('{\n    "train": [\n        ["apple_pie/x.jpg", 0 "apple_pie"]\n    ],\n')
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "Food101")
    assert mini.split_file in str(exc.value)
    assert "line 3" in str(exc.value)


def test_split_json_with_a_bad_entry_names_file_and_entry(tmp_path):
    mini = MINIS["Food101"](str(tmp_path))
    with open(mini.split_file, "w") as f:
        f.write('{"train": [["apple_pie/x.jpg", 0]], "val": [], "test": []}')
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "Food101")
    assert mini.split_file in str(exc.value) and "entry 0" in str(exc.value)


@pytest.mark.parametrize(
    "name, rel, bad_line, lineno",
    [
        ("OxfordPets", "annotations/trainval.txt", "Abyssinian_1 1", 2),
        ("UCF101", "ucfTrainTestlist/testlist01.txt", "NoSuchAction/v_x.avi", 3),
        ("UCF101", "ucfTrainTestlist/classInd.txt", "ApplyEyeMakeup", 1),
        ("SUN397", "Training_01.txt", "/z/zebra_park/sun_1.jpg", 2),
        ("FGVCAircraft", "images_variant_val.txt", "0000001 Unknown Plane", 4),
    ],
)
def test_malformed_annotation_line_names_file_and_line(tmp_path, name, rel, bad_line, lineno):
    mini = MINIS[name](str(tmp_path))
    path = osp.join(mini.dataset_dir, rel)
    with open(path) as f:
        lines = [ln.rstrip("\n") for ln in f]
    lines.insert(lineno - 1, bad_line)
    write_text(path, lines)
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, name)
    msg = str(exc.value)
    assert path in msg and f"line {lineno}" in msg and bad_line in msg
    _no_split_written(mini.dataset_dir)


def test_flowers_label_without_a_name(tmp_path):
    import json

    mini = MINIS["OxfordFlowers"](str(tmp_path))
    with open(osp.join(mini.dataset_dir, "cat_to_name.json"), "w") as f:
        json.dump({"1": "pink primrose", "2": "x", "3": "y"}, f)
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "OxfordFlowers")
    assert "cat_to_name.json" in str(exc.value) and '"4"' in str(exc.value)
    _no_split_written(mini.dataset_dir)


def test_corrupt_mat_file_is_named(tmp_path):
    mini = MINIS["StanfordCars"](str(tmp_path))
    path = osp.join(mini.dataset_dir, "devkit", "cars_meta.mat")
    with open(path, "wb") as f:
        f.write(b"not a mat file")
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "StanfordCars")
    assert path in str(exc.value)
    _no_split_written(mini.dataset_dir)


def test_corrupt_fewshot_cache_is_named(tmp_path):
    mini = MINIS["DescribableTextures"](str(tmp_path))
    os.makedirs(osp.join(mini.dataset_dir, "split_fewshot"))
    cache = osp.join(mini.dataset_dir, "split_fewshot", "shot_1-seed_1.json")
    with open(cache, "w") as f:
        f.write('{"train": [\n')
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "DescribableTextures", num_shots=1)
    assert cache in str(exc.value)


def test_imagenet_unsorted_val_is_explained(tmp_path):
    mini = MINIS["ImageNet"](str(tmp_path))
    val = osp.join(mini.dataset_dir, "images", "val")
    for wnid in os.listdir(val):
        for f in os.listdir(osp.join(val, wnid)):
            os.rename(osp.join(val, wnid, f), osp.join(val, f))
        os.rmdir(osp.join(val, wnid))
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "ImageNet")
    assert val in str(exc.value) and "DATASETS.md" in str(exc.value)
    assert not osp.exists(osp.join(mini.dataset_dir, "preprocessed.json"))


def test_imagenet_malformed_classnames_file_names_line(tmp_path):
    mini = MINIS["ImageNet"](str(tmp_path))
    path = osp.join(mini.dataset_dir, "classnames.txt")
    write_text(path, ["n01440764 tench", "n01443537"])
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "ImageNet")
    assert path in str(exc.value) and "line 2" in str(exc.value)


def test_imagenet_folder_without_a_name(tmp_path):
    mini = MINIS["ImageNet"](str(tmp_path))
    write_text(osp.join(mini.dataset_dir, "classnames.txt"), ["n01440764 tench", "n01443537 goldfish"])
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "ImageNet")
    assert "n02012849" in str(exc.value) and "classnames.txt" in str(exc.value)


def test_imagenetv2_gap_in_numbered_folders(tmp_path):
    mini = MINIS["ImageNetV2"](str(tmp_path))
    image_dir = osp.join(mini.dataset_dir, "imagenetv2-matched-frequency-format-val")
    os.rename(osp.join(image_dir, "2"), osp.join(image_dir, "7"))
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "ImageNetV2")
    assert "missing [2]" in str(exc.value)


def test_unknown_subsample_value(tmp_path):
    MINIS["DescribableTextures"](str(tmp_path))
    with pytest.raises(ValueError) as exc:
        build_dataset(tmp_path, "DescribableTextures", subsample="half")
    assert "SUBSAMPLE_CLASSES" in str(exc.value)
