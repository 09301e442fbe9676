"""The engine's one loop: batch sources, services as ordered hooks with state (vlprompt/engine/hooks.py)."""
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from vlprompt.engine import TRAINER_REGISTRY, HookBase, TrainerBase, TrainerX, build_trainer
from vlprompt.data.batch_sources import IterationBudget, LoaderSource, PairedSource
from vlprompt.engine.methods import load_plugins
from vlprompt.optim import build_lr_scheduler, build_optimizer
from vlprompt.utils import load_checkpoint, restore_stdout


class Trace(HookBase):
    """Records the events it sees, tagged with its name, into a shared list."""

    def __init__(self, name, log, priority=None):
        self.name, self.log = name, log
        if priority is not None:
            self.PRIORITY = priority

    def before_train(self):
        self.log.append((self.name, "before_train"))

    def after_epoch(self):
        self.log.append((self.name, "after_epoch", self.trainer.epoch))

    def after_iter(self):
        self.log.append((self.name, "after_iter"))

    def after_train(self):
        self.log.append((self.name, "after_train"))


if "LoopProbe" not in TRAINER_REGISTRY:
    @TRAINER_REGISTRY.register()
    class LoopProbe(TrainerX):
        """A pooled linear classifier on tiny images; optionally steps its LR itself (as ported Dassl
        trainers do) or per iteration."""

        steps_lr_itself = False
        extra_hooks = ()

        def build_model(self):
            self.model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, self.num_classes))
            self.optim = build_optimizer(self.model, self.cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
            self.register_model("model", self.model, self.optim, self.sched)
            for name, hook in type(self).extra_hooks:
                self.register_hook(name, hook)

        def forward_backward(self, batch):
            x, y = self.parse_batch_train(batch)[:2]
            loss = F.cross_entropy(self.model(x), y)
            self.model_backward_and_update(loss)
            if type(self).steps_lr_itself and self.batch_idx + 1 == self.num_batches:
                self.update_lr()
            return {"loss": loss.item()}


@pytest.fixture()
def probe(tmp_path):
    make_image_folder(str(tmp_path / "d"), n_classes=3, n_per_class=8, size=16)
    cls = TRAINER_REGISTRY.get("LoopProbe")
    cls.steps_lr_itself, cls.extra_hooks, cls.LR_SCHEDULE_UNIT = False, (), "epoch"
    yield cls
    cls.steps_lr_itself, cls.extra_hooks, cls.LR_SCHEDULE_UNIT = False, (), "epoch"


def _build(tmp_path, *opts, out="out"):
    cfg = make_cfg(tmp_path, trainer="LoopProbe", folder="d", output_dir=tmp_path / out,
                   opts=["INPUT.SIZE", "(16, 16)", "OPTIM.WARMUP_EPOCH", "0", "OPTIM.MAX_EPOCH", "3", *opts])
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _train(tr):
    try:
        tr.train()
    finally:
        restore_stdout()


def test_every_registered_trainer_runs_the_one_loop():
    load_plugins()
    for name in TRAINER_REGISTRY.registered_names():
        cls = TRAINER_REGISTRY.get(name)
        if issubclass(cls, TrainerBase):
            assert cls.run_epoch is TrainerBase.run_epoch, f"{name} overrides the engine's loop"


def test_services_are_hooks_in_priority_order_around_method_hooks(probe, tmp_path):
    log = []
    probe.extra_hooks = (("late", Trace("late", log, priority=85)), ("method", Trace("method", log)))
    tr = _build(tmp_path, "OPTIM.MAX_EPOCH", "2")
    assert list(tr._hooks) == ["resume", "lr_scheduler", "method", "evaluation", "late", "checkpoint", "timer",
                               "tensorboard"]
    _train(tr)
    # per epoch: the method hook sees the epoch after the LR step; the checkpoint follows every hook
    assert log[0] == ("method", "before_train") and log[1] == ("late", "before_train")
    epochs = [e for e in log if e[1] == "after_epoch"]
    assert epochs == [("method", "after_epoch", 0), ("late", "after_epoch", 0), ("method", "after_epoch", 1),
                      ("late", "after_epoch", 1)]
    assert sum(1 for e in log if e == ("method", "after_iter")) == 2 * tr.num_batches
    assert log[-2:] == [("method", "after_train"), ("late", "after_train")]
    assert osp.exists(osp.join(tmp_path, "out", "model", "model.pth.tar-2"))
    assert osp.isdir(osp.join(tmp_path, "out", "tensorboard")) and tr._writer is None  # opened, then closed


@pytest.mark.parametrize("unit,itself,expected", [("epoch", False, "epochs"), ("epoch", True, "epochs"),
                                                  ("iteration", False, "iterations")])
def test_lr_is_stepped_once_per_unit(probe, tmp_path, unit, itself, expected):
    probe.LR_SCHEDULE_UNIT, probe.steps_lr_itself = unit, itself
    tr = _build(tmp_path, "TEST.NO_TEST", "True")
    _train(tr)
    n = tr.num_batches
    assert n >= 2
    assert tr.sched.last_epoch == (3 if expected == "epochs" else 3 * n)
    loader = tr.train_loader_x  # the loop counts the labelled images it fed (results.json cost)
    assert tr.images_trained == 3 * (n * loader.batch_size if loader.drop_last else len(loader.sampler))


def test_iteration_budget_chains_reshuffled_passes():
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=1, shuffle=True)
    items = [int(b[0]) for (b,) in IterationBudget(LoaderSource(loader), 7)]
    assert len(items) == 7 and len(IterationBudget(LoaderSource(loader), 7)) == 7
    assert sorted(items[:3]) == sorted(items[3:6]) == [0, 1, 2]  # whole passes, each a permutation
    with pytest.raises(RuntimeError, match="yields no batch"):
        list(IterationBudget([], 2))


def test_paired_source_restarts_the_shorter_loader():
    x, u = [("x", i) for i in range(2)], [("u", i) for i in range(5)]
    pairs = list(PairedSource(x, u, "train_u"))
    assert len(pairs) == 5 and [p[0][1] for p in pairs] == [0, 1, 0, 1, 0]
    assert len(PairedSource(x, u, "smaller_one")) == 2
    with pytest.raises(ValueError, match="TRAIN.COUNT_ITER"):
        PairedSource(x, u, "both")


def test_loader_source_passes_the_epoch_to_a_two_argument_forward_backward():
    assert list(LoaderSource(["a", "b"], epoch=4)) == [("a", 4), ("b", 4)]
    assert list(LoaderSource(["a"])) == [("a",)]


def test_best_val_result_is_checkpointed_and_resumed(probe, tmp_path):
    tr = _build(tmp_path, "TEST.FINAL_MODEL", "best_val", "OPTIM.MAX_EPOCH", "2")
    _train(tr)
    best = tr._hooks["evaluation"].best_result
    assert best > float("-inf") and tr.best_result == best
    ckpt = load_checkpoint(osp.join(tmp_path, "out", "model", "model.pth.tar-2"))
    assert ckpt["hooks"] == {"evaluation": {"best_result": best}}
    # a resumed run knows the best result so far (before, it restarted from -inf)
    again = _build(tmp_path, "TEST.FINAL_MODEL", "best_val", "OPTIM.MAX_EPOCH", "2")
    assert again.resume_model_if_exist(osp.join(tmp_path, "out")) == 2
    assert again._hooks["evaluation"].best_result == best


def test_checkpoints_hold_no_service_state_without_best_val_and_old_files_resume(probe, tmp_path):
    tr = _build(tmp_path, "OPTIM.MAX_EPOCH", "2", "TEST.NO_TEST", "True")
    _train(tr)
    path = osp.join(tmp_path, "out", "model", "model.pth.tar-2")
    assert "hooks" not in load_checkpoint(path)  # file contents as before the services became hooks
    # a best-val run resumes from a checkpoint written without any hook state (an older file)
    again = _build(tmp_path, "TEST.FINAL_MODEL", "best_val", "OPTIM.MAX_EPOCH", "2")
    assert again.resume_model_if_exist(osp.join(tmp_path, "out")) == 2
    assert again._hooks["evaluation"].best_result == float("-inf")


def test_a_method_hook_without_saved_state_refuses_to_resume(probe, tmp_path):
    class Counter(HookBase):
        def __init__(self):
            self.n = 0

        def after_epoch(self):
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    _train(_build(tmp_path, "OPTIM.MAX_EPOCH", "2", "TEST.NO_TEST", "True"))
    probe.extra_hooks = (("counter", Counter()),)
    tr = _build(tmp_path, "OPTIM.MAX_EPOCH", "2", "TEST.NO_TEST", "True")
    with pytest.raises(RuntimeError, match=r"keeps state in hooks \['counter'\]"):
        tr.resume_model_if_exist(osp.join(tmp_path, "out"))
