"""The dataset doctor's verdicts on good and broken miniature trees."""
import dataclasses
import json
import os
import os.path as osp

import pytest

from dataset_fixtures import MINIS, build_dataset

from tests import procs
from vlprompt.data import catalog, doctor

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _shrink_catalog(monkeypatch, name, mini, ds):
    """Make the catalog expect the miniature's sizes so that a good tree gets 'ok'."""
    info = catalog.DATASETS[name]
    sizes = (len(ds.train_x), len(ds.val) if ds.val is not None and name != "ImageNet" else 0, len(ds.test))
    if info.test_only:
        sizes = (0, 0, len(ds.test))
    monkeypatch.setitem(catalog.DATASETS, name, dataclasses.replace(info, sizes=sizes, num_classes=ds.num_classes))
    if name in ("ImageNetA", "ImageNetR"):
        wnids = sorted(os.listdir(osp.join(mini.dataset_dir, info.image_dir)))
        wnids = [w for w in wnids if w.startswith("n")]
        attr = "imagenet_a_wnids" if name == "ImageNetA" else "imagenet_r_wnids"
        monkeypatch.setattr(doctor, attr, lambda: wnids)


def _verdict(root, name, quick=False):
    (v,) = doctor.check_all(str(root), [name], quick=quick)
    return v


@pytest.mark.parametrize("name", list(MINIS))
def test_good_tree_is_ok(tmp_path, monkeypatch, name):
    mini = MINIS[name](str(tmp_path))
    ds = build_dataset(tmp_path, name)  # writes the split file where the dataset has one
    _shrink_catalog(monkeypatch, name, mini, ds)
    v = _verdict(tmp_path, name)
    assert v.status == doctor.OK, v.details
    assert v.todo == "-"
    assert doctor.main(["--root", str(tmp_path), "--dataset", name, "--strict"]) == 0


def test_real_sizes_make_a_miniature_a_warning_not_a_problem(tmp_path, capsys):
    MINIS["OxfordPets"](str(tmp_path))
    build_dataset(tmp_path, "OxfordPets")
    v = _verdict(tmp_path, "OxfordPets")
    assert v.status == doctor.WARN
    assert any("expected 2,944/736/3,669" in d for d in v.details)
    assert doctor.main(["--root", str(tmp_path), "--dataset", "oxford_pets"]) == 0
    assert doctor.main(["--root", str(tmp_path), "--dataset", "oxford_pets", "--strict"]) == 1


def test_raw_files_without_split_is_a_warning_with_the_fix(tmp_path):
    MINIS["SUN397"](str(tmp_path))
    v = _verdict(tmp_path, "SUN397")
    assert v.status == doctor.WARN
    assert "--split-only" in v.todo and "sun397" in v.todo


def test_missing_image_is_a_problem_and_named(tmp_path, capsys):
    MINIS["DescribableTextures"](str(tmp_path))
    ds = build_dataset(tmp_path, "DescribableTextures")
    victim = ds.val[0].impath
    os.remove(victim)
    v = _verdict(tmp_path, "DescribableTextures")
    assert v.status == doctor.PROBLEM
    assert any(victim in d for d in v.details)
    capsys.readouterr()
    assert doctor.main(["--root", str(tmp_path), "--dataset", "dtd"]) == 1
    out = capsys.readouterr().out
    assert "problem" in out and victim in out and "python -m vlprompt.data.download dtd" in out
    # --quick skips the per-image check
    assert _verdict(tmp_path, "DescribableTextures", quick=True).status == doctor.WARN


def test_missing_image_folder_is_a_problem(tmp_path):
    MINIS["Food101"](str(tmp_path))
    build_dataset(tmp_path, "Food101")
    os.rename(osp.join(tmp_path, "food-101", "images"), osp.join(tmp_path, "food-101", "imgs"))
    v = _verdict(tmp_path, "Food101")
    assert v.status == doctor.PROBLEM
    assert any(osp.join(str(tmp_path), "food-101", "images") in d for d in v.details)


def test_nested_mirror_folders_are_pointed_out(tmp_path):
    mini = MINIS["StanfordCars"](str(tmp_path))
    build_dataset(tmp_path, "StanfordCars")
    train = osp.join(mini.dataset_dir, "cars_train")
    os.rename(train, train + "_tmp")
    os.makedirs(train)
    os.rename(train + "_tmp", osp.join(train, "cars_train"))
    v = _verdict(tmp_path, "StanfordCars")
    assert v.status == doctor.PROBLEM
    assert v.todo == f"flatten {train}"


def test_no_split_and_no_raw_files_is_a_problem(tmp_path):
    mini = MINIS["UCF101"](str(tmp_path))
    os.remove(osp.join(mini.dataset_dir, "ucfTrainTestlist", "classInd.txt"))
    v = _verdict(tmp_path, "UCF101")
    assert v.status == doctor.PROBLEM
    assert any("ucfTrainTestlist/classInd.txt" in d for d in v.details)


def test_malformed_split_file_is_a_problem_naming_the_line(tmp_path):
    mini = MINIS["EuroSAT"](str(tmp_path))
    with open(mini.split_file, "w") as f:
        f.write('{\n  "train": [\n  ["a.jpg", 0 "x"]\n')
    v = _verdict(tmp_path, "EuroSAT")
    assert v.status == doctor.PROBLEM
    assert any(mini.split_file in d and "line 3" in d for d in v.details)


def test_fgvc_broken_list_line(tmp_path):
    mini = MINIS["FGVCAircraft"](str(tmp_path))
    with open(osp.join(mini.dataset_dir, "images_variant_test.txt"), "a") as f:
        f.write("1234567 Concorde\n")
    v = _verdict(tmp_path, "FGVCAircraft")
    assert v.status == doctor.PROBLEM
    assert any("images_variant_test.txt, line 9" in d for d in v.details)


def test_imagenet_flat_val_is_a_problem(tmp_path):
    mini = MINIS["ImageNet"](str(tmp_path))
    val = osp.join(mini.dataset_dir, "images", "val")
    for wnid in os.listdir(val):
        for f in os.listdir(osp.join(val, wnid)):
            os.rename(osp.join(val, wnid, f), osp.join(val, f))
        os.rmdir(osp.join(val, wnid))
    v = _verdict(tmp_path, "ImageNet")
    assert v.status == doctor.PROBLEM
    assert "wnid folders" in v.todo


def test_imagenet_variant_unknown_folder_is_a_problem(tmp_path):
    mini = MINIS["ImageNetSketch"](str(tmp_path))
    os.makedirs(osp.join(mini.dataset_dir, "images", "not_a_wnid"))
    assert _verdict(tmp_path, "ImageNetSketch").status == doctor.PROBLEM


def test_missing_dataset_counts_only_when_asked_for(tmp_path, capsys):
    MINIS["DescribableTextures"](str(tmp_path))
    build_dataset(tmp_path, "DescribableTextures")
    v = _verdict(tmp_path, "ImageNetR")
    assert v.status == doctor.MISSING
    assert "python -m vlprompt.data.download imagenet_r" in v.todo
    manual = _verdict(tmp_path, "ImageNet")
    assert manual.status == doctor.MISSING and "manual" in manual.todo
    assert doctor.main(["--root", str(tmp_path)]) == 0  # all datasets: the absent ones are only listed
    out = capsys.readouterr().out
    assert out.count("\n") >= 15 and "missing" in out
    assert doctor.main(["--root", str(tmp_path), "--dataset", "imagenet_r"]) == 1
    assert doctor.main(["--root", str(tmp_path), "--dataset", "dtd,ImageNetR"]) == 1


def test_table_has_one_row_per_dataset_and_json_output(tmp_path, capsys):
    MINIS["EuroSAT"](str(tmp_path))
    doctor.main(["--root", str(tmp_path)])
    out = capsys.readouterr().out
    table = out.split("Details:")[0]
    for name in catalog.DATASETS:
        assert sum(1 for line in table.splitlines() if line.startswith(name + " ")) == 1
    doctor.main(["--root", str(tmp_path), "--dataset", "eurosat", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data[0]["name"] == "EuroSAT" and data[0]["status"] == "warn"


def test_unknown_dataset_name(tmp_path, capsys):
    assert doctor.main(["--root", str(tmp_path), "--dataset", "cifar10"]) == 2
    assert "Unknown dataset" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    MINIS["EuroSAT"](str(tmp_path))
    proc = procs.run(
        ["-m", "vlprompt.data.doctor", "--root", str(tmp_path), "--dataset", "eurosat", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "EuroSAT" in proc.stdout and "warn" in proc.stdout


# ------------------------------------------------------------------------------------------------
# --decode and --verify
# ------------------------------------------------------------------------------------------------
def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _good_dtd(tmp_path, monkeypatch):
    mini = MINIS["DescribableTextures"](str(tmp_path))
    ds = build_dataset(tmp_path, "DescribableTextures")
    _shrink_catalog(monkeypatch, "DescribableTextures", mini, ds)
    return catalog.DATASETS["DescribableTextures"].image_path(str(tmp_path)), ds


def test_decode_reports_truncated_jpegs_by_name(tmp_path, monkeypatch, capsys):
    image_dir, ds = _good_dtd(tmp_path, monkeypatch)
    v = _verdict(tmp_path, "DescribableTextures")
    assert v.status == doctor.OK  # the layout checks cannot see a truncated file ...
    victim = ds.train_x[0].impath
    _truncate(victim)
    assert _verdict(tmp_path, "DescribableTextures").status == doctor.OK
    (v,) = doctor.check_all(str(tmp_path), ["dtd"], decode=True)  # ... decoding does
    assert v.status == doctor.PROBLEM
    assert v.bad_files == [victim]
    assert any(victim in d and "truncated" in d for d in v.details), v.details
    assert doctor.main(["--root", str(tmp_path), "--dataset", "dtd", "--decode"]) == 1
    out = capsys.readouterr().out
    assert victim in out and "cannot be decoded" in out
    doctor.main(["--root", str(tmp_path), "--dataset", "dtd", "--decode", "--json"])
    assert json.loads(capsys.readouterr().out)[0]["bad_files"] == [victim]


def test_decode_honours_no_global_truncation_setting(tmp_path, monkeypatch):
    from PIL import ImageFile

    _, ds = _good_dtd(tmp_path, monkeypatch)
    _truncate(ds.test[0].impath)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # e.g. set by some training script
    (v,) = doctor.check_all(str(tmp_path), ["dtd"], decode=True)
    assert v.bad_files == [ds.test[0].impath]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_decode_all_good(tmp_path, monkeypatch):
    _good_dtd(tmp_path, monkeypatch)
    (v,) = doctor.check_all(str(tmp_path), ["dtd"], decode=True)
    assert v.status == doctor.OK and "images decoded" in v.found


def test_verify_against_the_install_manifest(tmp_path, monkeypatch, capsys):
    from vlprompt.data.integrity import write_manifest

    image_dir, ds = _good_dtd(tmp_path, monkeypatch)
    ddir = catalog.DATASETS["DescribableTextures"].dataset_path(str(tmp_path))
    # installed by hand: nothing to verify against, said as a warning
    (v,) = doctor.check_all(str(tmp_path), ["dtd"], verify=True)
    assert v.status == doctor.WARN and any("no install manifest" in d for d in v.details)
    write_manifest(ddir, {"source": "original", "archives": [{"filename": "dtd-r1.0.1.tar.gz"}]})
    (v,) = doctor.check_all(str(tmp_path), ["dtd"], verify=True)
    assert v.status == doctor.OK and "files verified" in v.found
    # caches written later are not part of the record
    os.makedirs(osp.join(ddir, "split_fewshot"))
    open(osp.join(ddir, "split_fewshot", "shot_1-seed_1.pkl"), "wb").close()
    assert doctor.check_all(str(tmp_path), ["dtd"], verify=True)[0].status == doctor.OK
    # a same-size modification (CRC-32) and a deleted file are both named
    changed, gone = ds.train_x[0].impath, ds.test[0].impath
    data = bytearray(open(changed, "rb").read())
    data[-3] ^= 0x55
    open(changed, "wb").write(bytes(data))
    os.remove(gone)
    (v,) = doctor.check_all(str(tmp_path), ["dtd"], verify=True, quick=True)
    assert v.status == doctor.PROBLEM
    rel = lambda p: osp.relpath(p, ddir)  # noqa: E731
    assert any(rel(gone) in d and "missing since installation" in d for d in v.details)
    assert any(rel(changed) in d and "CRC-32" in d for d in v.details)
    assert doctor.main(["--root", str(tmp_path), "--dataset", "dtd", "--verify", "--quick"]) == 1
    assert "dtd-r1.0.1.tar.gz" in capsys.readouterr().out


def test_missing_stanford_cars_points_at_the_download_helper(tmp_path):
    v = _verdict(tmp_path, "StanfordCars")  # fetched from the Hub mirror by default now
    assert v.status == doctor.MISSING and v.todo.startswith("run: python -m vlprompt.data.download stanford_cars")
