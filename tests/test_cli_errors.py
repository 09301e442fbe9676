"""Every user mistake gets one ``Error: ...`` line and exit status 2 from ``train.py``, before any
environment dump, and a refused run leaves nothing in its output folder (issue 12, item 7)."""
import json
import os
import subprocess
import sys

import pytest

import train as train_mod
from tests.helpers import METHOD_YAML, make_image_folder, register_linear_probe, write_method_yaml
from vlprompt.utils import restore_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
register_linear_probe()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10)
    return root


@pytest.fixture(scope="module")
def dataset_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "five.yaml"
    p.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    return str(p)


@pytest.fixture(scope="module")
def method_yaml(tmp_path_factory):
    return write_method_yaml(tmp_path_factory.mktemp("cfgm") / "probe.yaml",
                             METHOD_YAML.replace("MAX_EPOCH: 3", "MAX_EPOCH: 1").replace("WARMUP_EPOCH: 1", "WARMUP_EPOCH: 0"))


def run_cli(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


def args_for(root, ds, m, out, trainer="TestLinearProbe"):
    a = ["--trainer", trainer, "--dataset-config-file", ds, "--config-file", m, "--output-dir", str(out)]
    return (["--root", str(root)] if root is not None else []) + a


def assert_refused(capsys, rc, out, *needles):
    """rc 2, exactly one Error message (its first line starts with ``Error:``; indented hint lines
    may follow) naming ``needles``, no traceback, no dump, nothing in ``out``."""
    cap = capsys.readouterr()
    assert rc == 2, cap
    assert cap.err.count("Error: ") == 1 and cap.err.startswith("Error: "), cap.err
    assert "Traceback" not in cap.err
    errors = [cap.err]
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    # no argument/config/environment dump before the refusal
    assert "** Config **" not in cap.out and "System info" not in cap.out
    assert not out.exists() or os.listdir(out) == [], os.listdir(out)
    return errors[0]


def test_unknown_trainer(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out, trainer="TestLinearProb"))
    assert_refused(capsys, rc, out, "TestLinearProb", "Did you mean 'TestLinearProbe'")


def test_unknown_dataset(tmp_path, data_root, method_yaml, capsys):
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "OxfordPet"\n')
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, str(ds), method_yaml, out))
    assert_refused(capsys, rc, out, "OxfordPet", "OxfordPets")


def test_missing_root(tmp_path, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(None, dataset_yaml, method_yaml, out))
    assert_refused(capsys, rc, out, "--root")


def test_missing_dataset_folder_leaves_existing_output_folder_empty(tmp_path, dataset_yaml, method_yaml, capsys):
    out = tmp_path / "o"
    out.mkdir()  # an existing, empty output folder stays empty (no config.yaml, log.txt, lock)
    rc = run_cli(args_for(tmp_path / "nowhere", dataset_yaml, method_yaml, out))
    assert_refused(capsys, rc, out, tmp_path / "nowhere" / "five", "vlprompt.data.doctor")
    assert out.is_dir()


def test_nonexistent_yaml(tmp_path, data_root, dataset_yaml, capsys):
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, str(tmp_path / "nope.yaml"), out))
    assert_refused(capsys, rc, out, tmp_path / "nope.yaml", "not found")


def test_duplicate_yaml_key(tmp_path, data_root, dataset_yaml, capsys):
    m = tmp_path / "dup.yaml"
    m.write_text(METHOD_YAML + "OPTIM:\n  LR: 0.5\n")
    out = tmp_path / "o"
    rc = run_cli(args_for(data_root, dataset_yaml, str(m), out))
    assert_refused(capsys, rc, out, m, "Duplicate key OPTIM")


def test_image_listed_in_split_but_missing(tmp_path, method_yaml, capsys):
    root = tmp_path / "d"
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    assert run_cli(args_for(root, str(ds), method_yaml, tmp_path / "first") + ["--no-train"]) == 0
    capsys.readouterr()
    split_file = root / "five" / "split_vlprompt_ImageFolder.json"
    victim = root / "five" / json.loads(split_file.read_text())["train"][0][0]
    victim.unlink()
    out = tmp_path / "o"
    rc = run_cli(args_for(root, str(ds), method_yaml, out))
    assert_refused(capsys, rc, out, victim, split_file)


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_jpeg_during_training(tmp_path, method_yaml, capsys, workers):
    root = tmp_path / "d"
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10, size=64)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    assert run_cli(args_for(root, str(ds), method_yaml, tmp_path / "first") + ["--no-train"]) == 0
    capsys.readouterr()
    split = json.loads((root / "five" / "split_vlprompt_ImageFolder.json").read_text())
    for rel, _, _ in split["train"]:  # every training image truncated to half its bytes
        p = root / "five" / rel
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    out = tmp_path / "o"
    rc = run_cli(args_for(root, str(ds), method_yaml, out) + ["DATALOADER.NUM_WORKERS", str(workers)])
    cap = capsys.readouterr()
    assert rc == 2
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in cap.err, cap.err
    assert "Cannot read image" in errors[0] and str(root / "five") in errors[0]
    assert "truncated" in errors[0]
    # the run had started: its log is kept and ends with the reason
    assert (out / "log.txt").read_text().rstrip().endswith(errors[0])


def test_corrupt_checkpoint_for_eval_only(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    run = tmp_path / "run"
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, run)) == 0
    ckpt = run / "head" / "model.pth.tar-1"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    out = tmp_path / "eval"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, out) +
                 ["--eval-only", "--model-dir", str(run), "--load-epoch", "1"])
    cap = capsys.readouterr()
    assert rc == 2 and "Traceback" not in cap.err
    line = [ln for ln in cap.err.splitlines() if ln.startswith("Error: ")]
    assert len(line) == 1 and str(ckpt) in line[0] and "truncated or corrupt" in line[0]
    assert "weights_only" not in cap.err


def test_finished_run_with_other_config_is_refused(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    run = tmp_path / "run"
    assert run_cli(args_for(data_root, dataset_yaml, method_yaml, run)) == 0
    before = sorted(os.listdir(run))
    results = (run / "results.json").read_text()
    capsys.readouterr()
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, run) + ["OPTIM.LR", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("Error: ") == 1
    old = json.loads(results)["config_digest"]
    assert "another config" in err and old in err and "OPTIM.LR: 0.05 -> 0.5" in err
    assert "TRAIN.OVERWRITE True" in err
    # the same config -> "already finished"
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, run))
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a finished run" in err
    assert sorted(os.listdir(run)) == before and (run / "results.json").read_text() == results


def test_debug_flag_shows_the_traceback(tmp_path, data_root, dataset_yaml, method_yaml, monkeypatch):
    with pytest.raises(ValueError, match="TestLinearProb"):
        run_cli(args_for(data_root, dataset_yaml, method_yaml, tmp_path / "o", trainer="TestLinearProb") + ["--debug"])
    monkeypatch.setenv("VLPROMPT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run_cli(args_for(data_root, dataset_yaml, str(tmp_path / "nope.yaml"), tmp_path / "o"))


def test_real_command_line_prints_one_line(tmp_path, data_root, dataset_yaml, method_yaml):
    """The real ``python train.py``: exit 2 and a one-line stderr, nothing on stdout."""
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--root", str(data_root),
                        "--trainer", "CoOpp", "--dataset-config-file", dataset_yaml, "--config-file", method_yaml,
                        "--output-dir", str(out)], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("Error: ") and "'CoOp'" in p.stderr
    assert not out.exists()


def test_output_folder_that_cannot_be_created(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = run_cli(args_for(data_root, dataset_yaml, method_yaml, blocker / "out"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Error: ") and str(blocker / "out") in err and "Traceback" not in err
