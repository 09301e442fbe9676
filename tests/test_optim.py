"""Optimisers, LR trajectories (Dassl's, per epoch) and scheduler state."""
import io
import math

import pytest
import torch
import torch.nn as nn

from vlprompt.config import get_cfg_default
from vlprompt.optim import build_lr_scheduler, build_optimizer


def _optim_cfg(**kw):
    o = get_cfg_default().OPTIM
    o.NAME = "sgd"
    o.LR_SCHEDULER = "cosine"
    o.WARMUP_EPOCH = 1
    o.WARMUP_TYPE = "constant"
    o.WARMUP_CONS_LR = 1e-5
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def _trajectory(o, epochs):
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], o)
    sched = build_lr_scheduler(opt, o)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_maple_trajectory():
    lrs = _trajectory(_optim_cfg(LR=0.0035, MAX_EPOCH=5), 5)
    assert lrs == pytest.approx([1e-5, 3.5e-3, 3.1657e-3, 2.2908e-3, 1.2092e-3], rel=1e-3)


def test_coop_ten_epoch_trajectory_matches_closed_form():
    lrs = _trajectory(_optim_cfg(LR=0.002, MAX_EPOCH=10), 10)
    expected = [1e-5] + [0.002 * (1 + math.cos(math.pi * (e - 1) / 10)) / 2 for e in range(1, 10)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] == pytest.approx(1.910e-4, rel=1e-3)


def test_linear_warmup_and_recount_false():
    lrs = _trajectory(_optim_cfg(LR=0.01, MAX_EPOCH=6, WARMUP_EPOCH=2, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-4), 4)
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(0.005)
    assert lrs[2] == pytest.approx(0.01)
    o = _optim_cfg(LR=0.01, MAX_EPOCH=4, WARMUP_RECOUNT=False)
    lrs = _trajectory(o, 3)
    # the successor starts counting at WARMUP_EPOCH: its first own step is already step 2 of the
    # cosine, applied (chainable form) to the base LR that the warmup hands over
    assert lrs[1] == pytest.approx(0.01)
    assert lrs[2] == pytest.approx(0.01 * (1 + math.cos(math.pi * 2 / 4)) / (1 + math.cos(math.pi * 1 / 4)))


def test_step_schedules_and_bad_names():
    lrs = _trajectory(_optim_cfg(LR=1.0, MAX_EPOCH=6, LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5,
                                 WARMUP_EPOCH=-1), 6)
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    lrs = _trajectory(_optim_cfg(LR=1.0, MAX_EPOCH=6, LR_SCHEDULER="multi_step", STEPSIZE=(1, 4), GAMMA=0.1,
                                 WARMUP_EPOCH=-1), 5)
    assert lrs == pytest.approx([1, 0.1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="LR_SCHEDULER"):
        _trajectory(_optim_cfg(LR_SCHEDULER="poly"), 1)
    with pytest.raises(ValueError, match="OPTIM.NAME"):
        build_optimizer([nn.Parameter(torch.zeros(1))], _optim_cfg(NAME="lamb"))


def test_scheduler_state_round_trip_weights_only():
    o = _optim_cfg(LR=0.0035, MAX_EPOCH=5)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], o)
    sched = build_lr_scheduler(opt, o)
    for _ in range(3):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer([nn.Parameter(torch.zeros(1))], o)
    sched2 = build_lr_scheduler(opt2, o)
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    for _ in range(2):
        opt.step(); sched.step(); opt2.step(); sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_sgd_defaults_and_param_groups():
    o = _optim_cfg(LR=0.002)
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = build_optimizer(m, o)
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert g["lr"] == 0.002 and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    assert g["dampening"] == 0 and g["nesterov"] is False
    groups = [{"params": [m[0].weight], "lr": 0.1}, {"params": [m[1].weight]}]
    opt = build_optimizer(None, o, param_groups=groups)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.002]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(2, 2)
            self.head = nn.Linear(2, 2)

    o = _optim_cfg(LR=0.01, STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1)
    opt = build_optimizer(Net(), o)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.01])
    for name, cls in [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
                      ("radam", torch.optim.RAdam)]:
        assert isinstance(build_optimizer(nn.Linear(1, 1), _optim_cfg(NAME=name)), cls)
    assert build_optimizer(nn.Linear(1, 1), _optim_cfg(NAME="amsgrad")).param_groups[0]["amsgrad"] is True
