"""ImageNet family: the bundled CLIP class names, classnames.txt overrides, the JSON file index."""
import json
import os
import os.path as osp
import shutil
import time

import pytest

from dataset_fixtures import IMAGENET_MINI_WNIDS, MINIS, build_dataset, write_image, write_text

from vlprompt.data import catalog


def test_bundled_classnames_are_the_clip_names_in_sorted_wnid_order():
    names = catalog.bundled_imagenet_classnames()
    wnids = list(names)
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    # CLIP's edits (notebooks/Prompt_Engineering_for_ImageNet.ipynb), not the original WordNet lemmas
    expected = {
        "n01440764": "tench",
        "n01514668": "rooster",
        "n01608432": "kite (bird of prey)",
        "n02012849": "crane bird",
        "n03126707": "construction crane",
        "n03710637": "tights",
        "n03710721": "one-piece bathing suit",
        "n03804744": "metal nail",
        "n02114712": "red wolf or maned wolf",
        "n15075141": "toilet paper",
    }
    for wnid, name in expected.items():
        assert names[wnid] == name
    values = list(names.values())
    assert values[-3:] == ["bolete", "corn cob", "toilet paper"]
    # the file itself is in CoOp's classnames.txt format
    with open(catalog.BUNDLED_CLASSNAMES_FILE) as f:
        first = f.readline()
    assert first == "n01440764 tench\n"


def test_imagenet_a_and_r_synsets():
    names = catalog.bundled_imagenet_classnames()
    for wnids in (catalog.imagenet_a_wnids(), catalog.imagenet_r_wnids()):
        assert len(wnids) == 200 and wnids == sorted(wnids) and set(wnids) <= set(names)
    assert catalog.imagenet_a_wnids()[:3] == ["n01498041", "n01531178", "n01534433"]
    assert catalog.imagenet_r_wnids()[:3] == ["n01443537", "n01484850", "n01494475"]


def test_full_a_and_r_label_spaces(tmp_path):
    """All 200 folders present: labels 0..199 in sorted-wnid order with the ImageNet names."""
    names = catalog.bundled_imagenet_classnames()
    for name, wnids, image_dir, ddir in (
        ("ImageNetA", catalog.imagenet_a_wnids(), "imagenet-a", "imagenet-adversarial"),
        ("ImageNetR", catalog.imagenet_r_wnids(), "imagenet-r", "imagenet-rendition"),
    ):
        for w in reversed(wnids):
            write_image(osp.join(tmp_path, ddir, image_dir, w, "0.jpg"))
        write_text(osp.join(tmp_path, ddir, image_dir, "README.txt"), ["readme"])
        ds = build_dataset(tmp_path, name)
        assert ds.num_classes == 200
        assert ds.classnames == [names[w] for w in wnids]


def test_user_classnames_file_is_honoured(tmp_path):
    mini = MINIS["ImageNet"](str(tmp_path))
    write_text(osp.join(mini.dataset_dir, "classnames.txt"),
               [f"{w} my class {i}" for i, w in enumerate(IMAGENET_MINI_WNIDS)])
    ds = build_dataset(tmp_path, "ImageNet")
    assert ds.classnames == [f"my class {i}" for i in range(4)]
    v2 = MINIS["ImageNetV2"](str(tmp_path))
    # ImageNetV2 maps folder k to the k-th wnid in sorted order
    write_text(osp.join(v2.dataset_dir, "classnames.txt"),
               [f"n0000000{i} name {i}" for i in reversed(range(5))])
    assert build_dataset(tmp_path, "ImageNetV2").classnames == ["name 0", "name 1", "name 2", "name 3"]


def test_val_labels_follow_the_train_folders(tmp_path):
    mini = MINIS["ImageNet"](str(tmp_path))
    shutil.rmtree(osp.join(mini.dataset_dir, "images", "val", IMAGENET_MINI_WNIDS[1]))
    ds = build_dataset(tmp_path, "ImageNet")
    for it in ds.test:
        assert osp.basename(osp.dirname(it.impath)) == IMAGENET_MINI_WNIDS[it.label]
    assert {it.label for it in ds.test} == {0, 2, 3}
    write_image(osp.join(mini.dataset_dir, "images", "val", "n09999999", "x.JPEG"))
    with pytest.raises(ValueError, match="n09999999"):
        build_dataset(tmp_path, "ImageNet")


def _index(mini):
    return osp.join(mini.dataset_dir, "preprocessed.json")


def test_file_index_is_json_and_reused(tmp_path, monkeypatch, capsys):
    import datasets.imagenet as imagenet_module

    mini = MINIS["ImageNet"](str(tmp_path))
    first = build_dataset(tmp_path, "ImageNet")
    with open(_index(mini)) as f:
        data = json.load(f)
    assert data["format"] == imagenet_module.INDEX_FORMAT
    assert [e[0] for e in data["splits"]["train"]] == IMAGENET_MINI_WNIDS
    assert all(not osp.isabs(fn) for e in data["splits"]["train"] for fn in e[2])
    assert not os.path.exists(osp.join(mini.dataset_dir, "preprocessed.pkl"))

    def no_listing(path):
        raise AssertionError(f"listed {path} although the index is fresh")

    monkeypatch.setattr(imagenet_module, "listdir_nohidden", no_listing)
    capsys.readouterr()
    second = build_dataset(tmp_path, "ImageNet")
    assert "Loaded the ImageNet file index" in capsys.readouterr().out
    assert [(d.impath, d.label, d.classname) for d in second.train_x] == \
        [(d.impath, d.label, d.classname) for d in first.train_x]


def test_file_index_notices_changed_folders(tmp_path, capsys):
    mini = MINIS["ImageNet"](str(tmp_path))
    build_dataset(tmp_path, "ImageNet")
    folder = osp.join(mini.dataset_dir, "images", "train", IMAGENET_MINI_WNIDS[2])
    write_image(osp.join(folder, "new_image.JPEG"))
    future = time.time() + 100  # make the change visible even on coarse-mtime file systems
    os.utime(folder, (future, future))
    shutil.rmtree(osp.join(mini.dataset_dir, "images", "val", IMAGENET_MINI_WNIDS[3]))
    capsys.readouterr()
    ds = build_dataset(tmp_path, "ImageNet")
    assert "changed since the index was made" in capsys.readouterr().out
    assert len(ds.train_x) == mini.sizes[0] + 1
    assert any(it.impath.endswith("new_image.JPEG") and it.label == 2 for it in ds.train_x)
    assert len(ds.test) == mini.sizes[2] - 2
    with open(_index(mini)) as f:
        assert len(json.load(f)["splits"]["val"]) == 3


def test_file_index_survives_moving_the_dataset(tmp_path, capsys):
    mini = MINIS["ImageNet"](str(tmp_path / "a"))
    build_dataset(tmp_path / "a", "ImageNet")
    os.makedirs(tmp_path / "b")
    os.rename(mini.dataset_dir, tmp_path / "b" / "imagenet")
    capsys.readouterr()
    ds = build_dataset(tmp_path / "b", "ImageNet")
    assert "Loaded the ImageNet file index" in capsys.readouterr().out
    assert all(it.impath.startswith(str(tmp_path / "b")) and osp.isfile(it.impath) for it in ds.train_x)


def test_corrupt_file_index_is_rebuilt(tmp_path, capsys):
    mini = MINIS["ImageNet"](str(tmp_path))
    with open(_index(mini), "w") as f:
        f.write('{"format": "vlprompt-imagenet-file-index", "version": 1, "splits": {"train": [')
    ds = build_dataset(tmp_path, "ImageNet")
    out = capsys.readouterr().out
    assert "Ignoring the unreadable ImageNet file index" in out and _index(mini) in out
    assert len(ds.train_x) == mini.sizes[0]
    with open(_index(mini)) as f:
        json.load(f)  # rewritten whole


def test_fewshot_imagenet_cache_holds_train_only(tmp_path):
    mini = MINIS["ImageNet"](str(tmp_path))
    ds = build_dataset(tmp_path, "ImageNet", num_shots=1, subsample="base")
    with open(osp.join(mini.dataset_dir, "split_fewshot", "shot_1-seed_1.json")) as f:
        assert list(json.load(f)) == ["train", "source"]
    assert ds.classnames == ["tench", "goldfish"]
    assert len(ds.train_x) == 2 and len(ds.test) == 4 and ds.val is ds.test
