"""Bring-your-own data with the generic ImageFolder dataset, as a user meets it (issue 26, item 7): files
that are not images are left out of the split with one warning naming them; results.json names the
dataset by its folder, so two ImageFolder datasets are two columns of a table; the documented command
is complete (it names its --output-dir)."""
import csv
import json
import os

import pytest

import train as train_mod
from tests.helpers import METHOD_YAML, make_image_folder, register_linear_probe, write_method_yaml
from vlprompt.utils import restore_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
register_linear_probe()


@pytest.fixture(scope="module")
def method_yaml(tmp_path_factory):
    return write_method_yaml(tmp_path_factory.mktemp("cfgm") / "probe.yaml",
                             METHOD_YAML.replace("MAX_EPOCH: 3", "MAX_EPOCH: 1")
                             .replace("WARMUP_EPOCH: 1", "WARMUP_EPOCH: 0"))


def run(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


def argv_for(root, folder, method_yaml, out, *opts):
    return ["--root", str(root), "--trainer", "TestLinearProbe", "--config-file", method_yaml,
            "--output-dir", str(out), "DATASET.NAME", "ImageFolder", "DATASET.FOLDER", folder, *opts]


def test_non_image_files_are_left_out_with_one_warning(tmp_path, method_yaml, capsys):
    root = tmp_path / "data"
    make_image_folder(str(root / "pets"), n_classes=3, n_per_class=10)
    (root / "pets" / "class_0" / "notes.txt").write_text("taken on a sunny day")
    (root / "pets" / "class_1" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (root / "pets" / "class_2" / "raw").mkdir()
    out = tmp_path / "out"
    assert run(argv_for(root, "pets", method_yaml, out)) == 0  # trains and evaluates
    log = capsys.readouterr().out
    warnings = [ln for ln in log.splitlines() if ln.startswith("Warning: ImageFolder")]
    assert warnings == [
        f"Warning: ImageFolder {root / 'pets'}: 3 entries are not image files (.jpg, .jpeg, .png, .ppm, .bmp, "
        ".pgm, .tif, .tiff, .webp) and left out of the split: class_0/notes.txt, class_1/Thumbs.db, class_2/raw"]
    split = json.loads((root / "pets" / "split_vlprompt_ImageFolder.json").read_text())
    listed = [rel for part in ("train", "val", "test") for rel, _, _ in split[part]]
    assert len(listed) == 30 and all(rel.endswith(".png") or rel.endswith(".jpg") for rel in listed)
    assert json.loads((out / "results.json").read_text())["num_test"] == 9


def test_upper_case_image_extensions_are_images(tmp_path):
    from vlprompt.data.datasets.folder import is_image_file

    for name, ok in (("a.JPG", True), ("b.jpeg", True), ("c.Png", True), ("d.txt", False), ("e", False)):
        (tmp_path / name).write_bytes(b"x")
        assert is_image_file(str(tmp_path / name)) is ok, name
    assert not is_image_file(str(tmp_path))  # a folder


def test_two_image_folder_datasets_are_two_table_columns(tmp_path, method_yaml, capsys):
    from vlprompt.results.cli import main as results_main
    from vlprompt.results.records import collect

    root = tmp_path / "data"
    for folder in ("pets", "flowers"):
        make_image_folder(str(root / folder), n_classes=3, n_per_class=10)
        # base classes: a run outside the output tree that the tables file from its fields (base2new)
        assert run(argv_for(root, folder, method_yaml, tmp_path / "out" / folder,
                            "DATASET.SUBSAMPLE_CLASSES", "base")) == 0
        res = json.loads((tmp_path / "out" / folder / "results.json").read_text())
        assert res["dataset"] == folder
    records, problems = collect([str(tmp_path / "out")])
    assert sorted(r.dataset for r in records) == ["flowers", "pets"] and not problems
    capsys.readouterr()
    assert results_main([str(tmp_path / "out"), "--out", str(tmp_path / "tables")]) == 0
    with open(tmp_path / "tables" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["dataset"] for r in rows) == ["flowers", "pets"]


def test_the_documented_command_names_its_output_folder():
    with open(os.path.join(ROOT, "docs", "DATASETS.md")) as f:
        text = f.read()
    section = text[text.index("**Without code: the generic `ImageFolder` dataset.**"):]
    command = section[section.index("python train.py"):section.index("```", section.index("python train.py"))]
    assert "--output-dir" in command and "DATASET.NAME ImageFolder" in command
