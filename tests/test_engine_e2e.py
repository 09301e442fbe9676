"""End-to-end engine tests on a fabricated 5-class folder dataset with the test-vit-tiny backbone."""
import json
import os
import os.path as osp

import pytest
import torch

import train as train_mod
from tests.helpers import METHOD_YAML, make_image_folder, register_linear_probe, write_method_yaml
from vlprompt.utils import load_checkpoint, restore_stdout

register_linear_probe()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=10)
    return root


@pytest.fixture(scope="module")
def dataset_yaml(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    p = d / "five.yaml"
    p.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    return str(p)


@pytest.fixture(scope="module")
def method_yaml(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfgm")
    return write_method_yaml(d / "probe.yaml", METHOD_YAML)


def run_cli(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


def base_args(data_root, dataset_yaml, method_yaml, out, seed=1):
    return ["--root", str(data_root), "--seed", str(seed), "--trainer", "TestLinearProbe",
            "--dataset-config-file", dataset_yaml, "--config-file", method_yaml, "--output-dir", str(out)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root, dataset_yaml, method_yaml):
    out = tmp_path_factory.mktemp("runs") / "full"
    rc = run_cli(base_args(data_root, dataset_yaml, method_yaml, out) + ["DATASET.NUM_SHOTS", "4"])
    assert rc == 0
    return out


def test_train_writes_dassl_tree_log_and_results(finished_run):
    out = finished_run
    log = (out / "log.txt").read_text()
    # Dassl log lines in order
    for needle in ["** Arguments **", "** Config **", "Loading trainer: TestLinearProbe",
                   "Loading dataset: ImageFolder", "Creating a 4-shot dataset",
                   "Saving preprocessed few-shot data to", "Building transform_train",
                   "+ random resized crop (size=(224, 224), scale=(0.08, 1.0))",
                   "Loading evaluator: Classification", "No checkpoint found, train from scratch",
                   "epoch [1/3] batch [1/5]", "Finish training", "Deploy the last-epoch model",
                   "Evaluate on the *test* set", "=> result", "* accuracy:", "* macro_f1:", "Elapsed:"]:
        assert needle in log, needle
    assert log.index("Finish training") < log.index("=> result")
    # the last line of epoch 1 already shows epoch 2's LR (update_lr inside the last batch)
    ep1_last = [ln for ln in log.splitlines() if ln.startswith("epoch [1/3] batch [5/5]")][0]
    assert "lr 5.0000e-02" in ep1_last
    ep1_first = [ln for ln in log.splitlines() if ln.startswith("epoch [1/3] batch [1/5]")][0]
    assert "lr 1.0000e-05" in ep1_first
    # checkpoint layout
    assert (out / "head" / "model.pth.tar-3").is_file()
    assert (out / "head" / "checkpoint").read_text().strip() == "model.pth.tar-3"
    assert (out / "tensorboard").is_dir() and os.listdir(out / "tensorboard")
    assert (out / "config.yaml").read_text().count("NUM_SHOTS: 4") == 1
    res = json.loads((out / "results.json").read_text())
    assert res["trainer"] == "TestLinearProbe" and res["dataset"] == "five"  # an ImageFolder dataset: its folder
    assert res["shots"] == 4 and res["seed"] == 1 and res["subsample"] == "all"
    assert res["phase"] == "train" and res["epochs"] == 3 and res["num_classes"] == 5
    assert res["num_test"] == 5 * 3  # 30% of 10 images per class
    acc = res["metrics"]["accuracy"]
    assert f"* accuracy: {acc:.1f}%" in log
    assert abs(res["metrics"]["error_rate"] - (100 - acc)) < 1e-9
    assert len(res["config_digest"]) == 16 and res["versions"]["torch"] == torch.__version__
    assert res["config"]["OPTIM"]["LR"] == 0.05
    # colour-coded classes are easy: the probe must learn something real
    assert acc > 40.0


def test_checkpoint_is_plain_and_weights_only(finished_run):
    ckpt = torch.load(finished_run / "head" / "model.pth.tar-3", weights_only=True)
    assert set(ckpt) >= {"state_dict", "epoch", "optimizer", "scheduler", "val_result", "rng_state"}
    assert ckpt["epoch"] == 3 and ckpt["val_result"] is None
    assert set(ckpt["state_dict"]) == {"fc.weight", "fc.bias"}
    assert isinstance(ckpt["scheduler"]["successor"], dict)  # nested state dict, not a pickled object
    assert ckpt["scheduler"]["successor"]["last_epoch"] == 2


def test_eval_only_from_saved_run(tmp_path, finished_run, data_root, dataset_yaml, method_yaml):
    out = tmp_path / "eval"
    rc = run_cli(base_args(data_root, dataset_yaml, method_yaml, out) +
                 ["--eval-only", "--model-dir", str(finished_run), "--load-epoch", "3", "DATASET.NUM_SHOTS", "4"])
    assert rc == 0
    log = (out / "log.txt").read_text()
    assert f"Load {finished_run}/head/model.pth.tar-3 to head (epoch=3, val_result=None)" in log
    assert "Finish training" not in log
    res = json.loads((out / "results.json").read_text())
    trained = json.loads((finished_run / "results.json").read_text())
    assert res["phase"] == "eval" and res["load_epoch"] == 3 and res["epochs"] == 0
    assert res["metrics"] == trained["metrics"]
    assert not (out / "tensorboard").exists()


def test_refuses_to_overwrite_finished_run(finished_run, data_root, dataset_yaml, method_yaml, capsys):
    before = (finished_run / "results.json").read_text()
    rc = run_cli(base_args(data_root, dataset_yaml, method_yaml, finished_run) + ["DATASET.NUM_SHOTS", "4"])
    assert rc == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (finished_run / "results.json").read_text() == before
    assert not [f for f in os.listdir(finished_run) if f.startswith("log.txt-")]


def test_second_log_is_not_overwritten(tmp_path, data_root, dataset_yaml, method_yaml):
    out = tmp_path / "nolog"
    args = base_args(data_root, dataset_yaml, method_yaml, out) + ["--no-train", "DATASET.NUM_SHOTS", "2"]
    assert run_cli(args) == 0
    assert run_cli(args) == 0
    logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt"))
    assert logs[0] == "log.txt" and len(logs) == 2 and logs[1].startswith("log.txt-")


def test_kill_and_resume_matches_uninterrupted(tmp_path, data_root, dataset_yaml, method_yaml):
    cls = register_linear_probe()
    opts = ["TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "4"]
    full = tmp_path / "full"
    assert run_cli(base_args(data_root, dataset_yaml, method_yaml, full) + opts) == 0

    crashed = tmp_path / "crashed"
    cls.fail_at = (2, 1)  # dies in the middle of the 3rd epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            run_cli(base_args(data_root, dataset_yaml, method_yaml, crashed) + opts)
    finally:
        cls.fail_at = None
    assert (crashed / "head" / "checkpoint").read_text().strip() == "model.pth.tar-2"
    assert not (crashed / "results.json").exists()
    assert run_cli(base_args(data_root, dataset_yaml, method_yaml, crashed) + opts) == 0
    log2 = sorted(f for f in os.listdir(crashed) if f.startswith("log.txt-"))[0]
    assert "Previous epoch: 2" in (crashed / log2).read_text()
    a = load_checkpoint(str(full / "head" / "model.pth.tar-3"))["state_dict"]
    b = load_checkpoint(str(crashed / "head" / "model.pth.tar-3"))["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((full / "results.json").read_text())["metrics"]
    rb = json.loads((crashed / "results.json").read_text())["metrics"]
    assert ra == rb


def test_non_finite_loss_names_epoch_and_batch(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    cls = register_linear_probe()
    out = tmp_path / "nan"
    cls.nan_at = (1, 2)
    try:
        rc = run_cli(base_args(data_root, dataset_yaml, method_yaml, out) + ["TRAIN.CHECKPOINT_FREQ", "1"])
    finally:
        cls.nan_at = None
    assert rc == 1
    err = capsys.readouterr().err
    msg = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(msg) == 1 and "Traceback" not in err
    msg = msg[0]
    assert "epoch 2/3" in msg and "batch 3/" in msg
    assert msg in (out / "log.txt").read_text()  # the log says why the run stopped
    # the checkpoint of the last good epoch is kept
    assert (out / "head" / "checkpoint").read_text().strip() == "model.pth.tar-1"


def test_bad_trainer_and_dataset_names(tmp_path, data_root, dataset_yaml, method_yaml, capsys):
    rc = run_cli(["--root", str(data_root), "--trainer", "TestLinearProb", "--dataset-config-file", dataset_yaml,
                  "--config-file", method_yaml, "--output-dir", str(tmp_path / "x")])
    assert rc == 2 and "TestLinearProbe" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text('DATASET:\n  NAME: "ImageFolde"\n')
    rc = run_cli(["--root", str(data_root), "--trainer", "TestLinearProbe", "--dataset-config-file", str(bad),
                  "--config-file", method_yaml, "--output-dir", str(tmp_path / "y")])
    assert rc == 2 and "ImageFolder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unknown_config_key_in_yaml_is_reported(tmp_path, data_root, dataset_yaml, capsys):
    bad = tmp_path / "m.yaml"
    bad.write_text(METHOD_YAML.replace("MAX_EPOCH: 3", "MAX_EPOCHS: 3"))
    rc = run_cli(["--root", str(data_root), "--trainer", "TestLinearProbe", "--dataset-config-file", dataset_yaml,
                  "--config-file", str(bad), "--output-dir", str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "OPTIM.MAX_EPOCHS" in err and str(bad) in err and "OPTIM.MAX_EPOCH" in err


def test_missing_data_root_names_folder(tmp_path, dataset_yaml, method_yaml, capsys):
    rc = run_cli(["--root", str(tmp_path / "nowhere"), "--trainer", "TestLinearProbe",
                  "--dataset-config-file", dataset_yaml, "--config-file", method_yaml,
                  "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(tmp_path / "nowhere" / "five") in err
    assert "vlprompt.data.doctor" in err
    assert not (tmp_path / "o").exists()


def test_unreadable_image_names_file(tmp_path, method_yaml, capsys):
    root = tmp_path / "d"
    make_image_folder(str(root / "five"), n_classes=3, n_per_class=10)
    ds = tmp_path / "ds.yaml"
    ds.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    out = tmp_path / "o"
    # build split, then corrupt one test image
    assert run_cli(["--root", str(root), "--trainer", "TestLinearProbe", "--dataset-config-file", str(ds),
                    "--config-file", method_yaml, "--output-dir", str(out), "--no-train"]) == 0
    split = json.loads((root / "five" / "split_vlprompt_ImageFolder.json").read_text())
    victim = root / "five" / split["test"][0][0]
    victim.write_bytes(b"not a jpeg")
    rc = run_cli(["--root", str(root), "--trainer", "TestLinearProbe", "--dataset-config-file", str(ds),
                  "--config-file", method_yaml, "--output-dir", str(tmp_path / "o2"), "--eval-only"])
    assert rc == 2
    assert str(victim) in capsys.readouterr().err
