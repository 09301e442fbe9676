"""Engine checkpoints as users meet them: SIGKILL mid-run and resume, an unreadable newest checkpoint,
TRAIN.OVERWRITE retraining, the per-epoch resume point. CoOp on the tiny random backbone."""
import json
import os
import os.path as osp
import signal
import subprocess
import time

import pytest
import torch

import train as train_mod
import trainers  # noqa: F401  (registers the trainers)
from tests import procs
from tests.helpers import make_image_folder
from vlprompt.engine import LAST_CHECKPOINT, TRAINER_REGISTRY
from vlprompt.utils import load_checkpoint, restore_stdout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckdata")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=8)
    (root / "five.yaml").write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    return root


def argv(data_root, out, *extra):
    return ["--root", str(data_root), "--seed", "1", "--trainer", "CoOp",
            "--dataset-config-file", str(data_root / "five.yaml"), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", "test-vit-tiny", "USE_CUDA", "False", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "3", "OPTIM.LR", "0.05",
            "TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.N_CTX", "4", "TRAIN.PRINT_FREQ", "1", *extra]


def run(args):
    try:
        return train_mod.cli(args)
    finally:
        restore_stdout()


def ctx(out, epoch=3):
    return load_checkpoint(osp.join(out, "prompt_learner", f"model.pth.tar-{epoch}"))["state_dict"]["ctx"]


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    assert run(argv(data_root, out)) == 0
    return out


def test_sigkill_mid_epoch_then_resume_is_bit_identical(data_root, uninterrupted, tmp_path, capsys):
    # the killed run in its own process, as users run it; its resume and the uninterrupted reference run of the
    # same command in this process (one thread here and in the child: the suite sets OMP_NUM_THREADS=1,
    # tests/conftest.py)
    reference = uninterrupted
    out = tmp_path / "killed"
    proc = procs.popen([osp.join(ROOT, "train.py"), *argv(data_root, out)], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    killed_at = None
    deadline = time.time() + 120
    for line in proc.stdout:
        if line.startswith("epoch [2/3] batch [2/"):
            proc.send_signal(signal.SIGKILL)
            killed_at = line.strip()
            break
        assert time.time() < deadline, "the run never reached epoch 2"
    proc.wait(timeout=30)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    folder = out / "prompt_learner"
    assert (folder / LAST_CHECKPOINT).exists(), "no per-epoch resume point after epoch 1"
    assert load_checkpoint(str(folder / LAST_CHECKPOINT))["epoch"] == 1
    assert not (out / "results.json").exists()
    capsys.readouterr()
    assert run(argv(data_root, out)) == 0
    log = capsys.readouterr().out
    assert "Found checkpoint" in log and "Previous epoch: 1" in log
    assert torch.equal(ctx(out), ctx(reference))
    assert sorted(os.listdir(folder)) == sorted(os.listdir(reference / "prompt_learner"))
    a = json.load(open(out / "results.json"))["metrics"]
    b = json.load(open(reference / "results.json"))["metrics"]
    assert a == b


class _Stop(Exception):
    pass


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(data_root, uninterrupted, tmp_path,
                                                                    monkeypatch, capsys):
    out = tmp_path / "corrupt"
    cls = TRAINER_REGISTRY.get("CoOp")
    original = cls.run_epoch

    def stop_at_third(self):
        if self.epoch == 2:
            raise _Stop()
        return original(self)

    monkeypatch.setattr(cls, "run_epoch", stop_at_third)
    with pytest.raises(_Stop):
        run(argv(data_root, out, "TRAIN.CHECKPOINT_FREQ", "1"))
    restore_stdout()
    monkeypatch.setattr(cls, "run_epoch", original)
    newest = out / "prompt_learner" / "model.pth.tar-2"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # a crash while the disk was full
    capsys.readouterr()
    assert run(argv(data_root, out, "TRAIN.CHECKPOINT_FREQ", "1")) == 0
    log = capsys.readouterr().out
    assert f'Checkpoint "{newest}" is unreadable' in log
    assert "model.pth.tar-1" in log
    assert torch.equal(ctx(out), ctx(uninterrupted))


def test_overwrite_trains_again_from_scratch(data_root, uninterrupted, tmp_path, capsys):
    out = tmp_path / "over"
    assert run(argv(data_root, out)) == 0
    old = ctx(out).clone()
    capsys.readouterr()
    assert run(argv(data_root, out, "TRAIN.OVERWRITE", "True", "OPTIM.LR", "0.5")) == 0
    log = capsys.readouterr().out
    assert "TRAIN.OVERWRITE True: training from scratch" in log
    assert "epoch [1/3] batch [1/" in log and "epoch [3/3]" in log
    assert not torch.equal(ctx(out), old)
    record = json.load(open(out / "results.json"))
    assert record["config"]["OPTIM"]["LR"] == 0.5 and record["epochs"] == 3


def test_lr_schedule_per_iteration(data_root, tmp_path):
    """LR_SCHEDULE_UNIT "iteration": the schedulers step after every iteration (and not again at the
    epoch end); the default steps once per epoch."""
    from tests.helpers import make_cfg
    from vlprompt.engine import build_trainer

    cls = TRAINER_REGISTRY.get("CoOp")

    class CoOpPerIteration(cls):
        LR_SCHEDULE_UNIT = "iteration"

    for klass, expected in ((cls, 2), (CoOpPerIteration, None)):
        cfg = make_cfg(data_root, trainer="CoOp", folder="five", output_dir=str(tmp_path / klass.__name__),
                       opts=["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.N_CTX", "4", "OPTIM.MAX_EPOCH", "2",
                             "TEST.NO_TEST", "True", "OPTIM.WARMUP_EPOCH", "0"])
        cfg.freeze()
        try:
            t = klass(cfg)
            t.train()
        finally:
            restore_stdout()
        sched = t._optimizers["prompt_learner"][1]
        if expected is None:
            expected = 2 * len(t.train_loader_x)
        assert sched.last_epoch == expected, (klass.__name__, sched.last_epoch)
