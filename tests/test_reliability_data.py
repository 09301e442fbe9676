"""A stale few-shot cache never survives a rebuilt split (issue 26, item 2): cached few-shot draws carry
the identity of the split they were drawn from and are drawn again, with a message, when it changes."""
import json
import os
import random
import shutil

from tests.helpers import make_cfg, make_image_folder
from vlprompt.data.datasets.base_dataset import read_split, split_identity
from vlprompt.data.datasets.folder import SPLIT_FILE, ImageFolder
from vlprompt.utils import restore_stdout


def _build(root, shots=2, capsys=None):
    random.seed(1)  # what train.py's --seed 1 does before the dataset is built
    cfg = make_cfg(root, folder="five", opts=["DATASET.NUM_SHOTS", str(shots)])
    ds = ImageFolder(cfg)
    restore_stdout()
    return ds


def _add_images(folder, n):
    for c in sorted(os.listdir(folder)):
        d = os.path.join(folder, c)
        if not os.path.isdir(d) or c == "split_fewshot":
            continue
        for j in range(n):
            shutil.copy(os.path.join(d, f"img_{j % 10}.jpg"), os.path.join(d, f"added_{j}.jpg"))


def _paths(items):
    return {x.impath for x in items}


def test_rebuilt_split_redraws_the_few_shot_cache(tmp_path, capsys):
    make_image_folder(str(tmp_path / "five"), n_classes=3, n_per_class=10)
    first = _build(tmp_path)
    cache = tmp_path / "five" / "split_fewshot" / "shot_2-seed_1.json"
    data = json.loads(cache.read_text())
    split_train, split_val, _ = read_split(str(tmp_path / "five" / SPLIT_FILE), str(tmp_path / "five"))
    assert data["source"] == {"train": split_identity(split_train, str(tmp_path / "five")), "num_train": 15,
                              "val": split_identity(split_val, str(tmp_path / "five")), "num_val": 6}
    assert len(first.train_x) == 6
    capsys.readouterr()

    # the user adds images and deletes the split file, as the ImageFolder error message advises
    _add_images(str(tmp_path / "five"), 20)
    os.remove(tmp_path / "five" / SPLIT_FILE)
    second = _build(tmp_path)
    out = capsys.readouterr().out
    train, val, test = read_split(str(tmp_path / "five" / SPLIT_FILE), str(tmp_path / "five"))
    assert f"Few-shot cache {cache} does not belong to the current split" in out
    assert "it was drawn from another train split (15 items" in out and "now has 45 items" in out
    assert _paths(second.train_x) <= _paths(train)  # no test or val image is trained on
    assert _paths(second.val) <= _paths(val)
    assert not _paths(second.train_x) & _paths(test)
    assert len(second.train_x) == 6
    assert json.loads(cache.read_text())["source"]["num_train"] == 45  # the cache was replaced

    # an unchanged split: the cache is used as it is
    third = _build(tmp_path)
    out = capsys.readouterr().out
    assert "Loading preprocessed few-shot data" in out and "does not belong" not in out
    assert [x.impath for x in third.train_x] == [x.impath for x in second.train_x]


def test_old_cache_without_identity_is_checked_item_by_item(tmp_path, capsys):
    make_image_folder(str(tmp_path / "five"), n_classes=3, n_per_class=10)
    first = _build(tmp_path)
    cache = tmp_path / "five" / "split_fewshot" / "shot_2-seed_1.json"
    data = json.loads(cache.read_text())
    del data["source"]  # as written by an older vlprompt
    cache.write_text(json.dumps(data))
    capsys.readouterr()
    again = _build(tmp_path)  # every cached item is in the split: kept
    out = capsys.readouterr().out
    assert "Loading preprocessed few-shot data" in out and "does not belong" not in out
    assert [x.impath for x in again.train_x] == [x.impath for x in first.train_x]
    assert "source" not in json.loads(cache.read_text())  # a kept cache is not rewritten

    # a cached item that is no longer in the train split: drawn again
    moved = data["train"][0]
    data["train"][0] = [moved[0].replace("img_", "gone_"), moved[1], moved[2]]
    cache.write_text(json.dumps(data))
    redrawn = _build(tmp_path)
    out = capsys.readouterr().out
    assert "records no split identity (written by an older vlprompt) and 1 of its train items are not in the " \
           "current train split" in out
    assert "source" in json.loads(cache.read_text())
    train, _, _ = read_split(str(tmp_path / "five" / SPLIT_FILE), str(tmp_path / "five"))
    assert _paths(redrawn.train_x) <= _paths(train) and len(redrawn.train_x) == 6
    os.remove(cache)  # the redraw is exactly what a run without any cache draws
    fresh = _build(tmp_path)
    assert [x.impath for x in fresh.train_x] == [x.impath for x in redrawn.train_x]
