"""Exact few-shot splits of other codebases (vlprompt.data.fewshot_splits): 2SFS's .jsonl files, CoOp's pickles
converted by a restricted unpickler, the doctor's check, the missing-file error."""
import json
import os
import os.path as osp
import pickle
import sys
import types

import pytest

from dataset_fixtures import build_dataset, make_caltech101, make_cfg
from vlprompt.data import fewshot_splits as fs


def _write_jsonl(path, rows):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _row(item, image_dir, prefix):
    rel = osp.relpath(item.impath, image_dir)
    return {"_impath": osp.join(prefix, rel), "_label": item.label, "_domain": 0, "_classname": item.classname}


def _pick(items, shots):
    out, seen = [], {}
    for it in items:  # the LAST images of each class (vlprompt's draw would not give exactly these)
        seen.setdefault(it.label, []).append(it)
    for label in sorted(seen):
        out += seen[label][-shots:]
    return out


@pytest.fixture(scope="module")
def caltech(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fsroot"))
    mini = make_caltech101(root)
    full = build_dataset(root, "Caltech101")  # writes the split file
    image_dir = osp.join(mini.dataset_dir, "101_ObjectCategories")
    return root, mini, full, image_dir


def _build(root, shots=2, seed=1):
    import datasets  # noqa: F401
    from vlprompt.data.datasets import DATASET_REGISTRY

    cfg = make_cfg(root, "Caltech101", num_shots=shots, seed=seed)
    cfg.DATASET.FEWSHOT_SPLITS = "jsonl"
    return DATASET_REGISTRY.get("Caltech101")(cfg)


def test_2sfs_files_give_exactly_their_images(caltech, tmp_path):
    root, mini, full, image_dir = caltech
    folder = osp.join(mini.dataset_dir, "split_fewshot")
    train, val = _pick(full.train_x, 2), _pick(full.val, 2)
    # train relative to the data root (2SFS joins it with --root_path), val absolute from another machine
    _write_jsonl(fs.train_file(folder, 2, 1), [_row(i, image_dir, "caltech-101/101_ObjectCategories") for i in train])
    _write_jsonl(fs.val_file(folder, 2, 1), [_row(i, image_dir, "/mnt/other/caltech-101/101_ObjectCategories")
                                              for i in val])
    ds = _build(root)
    assert [i.impath for i in ds.train_x] == [i.impath for i in train]
    assert [i.impath for i in ds.val] == [i.impath for i in val]
    assert [i.label for i in ds.train_x] == [i.label for i in train]
    # the doctor's check of the same files: both fit
    findings = fs.doctor_findings(root, "Caltech101")
    assert [s for s, _ in findings] == ["ok", "ok"], findings


def test_missing_file_is_one_error_naming_it(caltech):
    root, mini, _, _ = caltech
    with pytest.raises(fs.SplitFileError) as e:
        _build(root, shots=4, seed=3)
    msg = str(e.value)
    assert fs.train_file(osp.join(mini.dataset_dir, "split_fewshot"), 4, 3) in msg
    assert "download_splits.sh" in msg and "\n" not in msg


def test_wrong_entries_are_refused(caltech, tmp_path):
    root, mini, full, image_dir = caltech
    folder = str(tmp_path / "split_fewshot")
    train = _pick(full.train_x, 1)
    rows = [_row(i, image_dir, "x") for i in train]
    test_row = _row(full.test[0], image_dir, "x")
    test_row["_label"] = rows[0]["_label"]
    _write_jsonl(fs.train_file(folder, 1, 1), [test_row] + rows[1:])
    with pytest.raises(fs.SplitFileError, match="is a test image"):
        fs.load_external_fewshot(folder, 1, 1, full.train_x, full.val, image_dir, full.test)
    bad = dict(rows[0], _label=(rows[0]["_label"] + 1) % len(mini.classnames))
    _write_jsonl(fs.train_file(folder, 1, 1), [bad] + rows[1:])
    with pytest.raises(fs.SplitFileError, match="has label"):
        fs.load_external_fewshot(folder, 1, 1, full.train_x, full.val, image_dir, full.test)
    # a shot count that is not the file's
    _write_jsonl(fs.train_file(folder, 2, 1), rows)
    with pytest.raises(fs.SplitFileError, match="expected 2"):
        fs.load_external_fewshot(folder, 2, 1, full.train_x, full.val, image_dir, full.test)
    findings = fs.check_files(folder, [(osp.relpath(i.impath, image_dir), i.label, i.classname, None)
                                       for i in full.train_x], None, len(mini.classnames))
    assert ("problem" in {s for s, _ in findings}) and any("expected 2" in m for _, m in findings)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_coop_pickle_converted_without_running_code(caltech, tmp_path, monkeypatch):
    root, mini, full, image_dir = caltech
    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:  # the shape of Dassl's Datum (attributes _impath, _label, _domain, _classname)
        def __init__(self, impath, label, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, 0, classname

    Datum.__module__, Datum.__qualname__ = mod.__name__, "Datum"
    mod.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    train = _pick(full.train_x, 1)
    data = {"train": [Datum(i.impath, i.label, i.classname) for i in train],
            "val": [Datum(i.impath, i.label, i.classname) for i in _pick(full.val, 1)]}
    pkl = tmp_path / "shot_1-seed_2.pkl"
    pkl.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    assert fs.main(["coop", str(pkl), "--out", str(tmp_path / "out")]) == 0
    rows = fs.read_jsonl(str(tmp_path / "out" / "shot_1-seed_2_train.jsonl"))
    assert rows == [{"_impath": i.impath, "_label": i.label, "_domain": 0, "_classname": i.classname} for i in train]
    assert osp.isfile(tmp_path / "out" / "shot_1-seed_2_val.jsonl")
    # the converted files are accepted as the split of the very same images
    got, _ = fs.load_external_fewshot(str(tmp_path / "out"), 1, 2, full.train_x, None, image_dir)
    assert [i.impath for i in got] == [i.impath for i in train]
    evil = tmp_path / "shot_1-seed_3.pkl"
    evil.write_bytes(pickle.dumps({"train": [_Evil()]}))
    with pytest.raises(fs.SplitFileError, match="refusing"):
        fs.convert_coop_pickle(str(evil))
    assert not osp.exists(tmp_path / "shot_1-seed_3_train.jsonl")


def test_doctor_flag_reports_a_bad_file(caltech, tmp_path, capsys):
    from vlprompt.data import doctor

    root, mini, full, image_dir = caltech
    folder = osp.join(mini.dataset_dir, "split_fewshot")
    path = fs.train_file(folder, 8, 2)
    _write_jsonl(path, [{"_impath": "caltech-101/101_ObjectCategories/nowhere/x.jpg", "_label": 0, "_domain": 0,
                         "_classname": "face"}])
    try:
        code = doctor.main(["--root", root, "--dataset", "Caltech101", "--fewshot-splits"])
    finally:
        os.remove(path)
    out = capsys.readouterr().out
    assert code == 1 and "nowhere/x.jpg is not an image of the train split" in out
