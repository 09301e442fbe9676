"""Pinned numbers of every registered trainer on the tiny random backbone (fp32, CPU).

For each trainer with recipes: the logits of a fixed batch before training, the loss summary of one
training step on a fixed batch, and the parameter update of that step, compared with
``tests/golden/trainer_pins*.json`` (``VLPROMPT_UPDATE_GOLDEN=1`` rewrites this machine's file). Refactors
of the engine or the shared blocks must keep these numbers (rtol/atol 1e-6; bit for bit where the order
of operations is unchanged).

CPU kernels differ by instruction set (an AVX2 and an AVX-512 GEMM sum in another order: logits then
move by up to ~2e-5 at logit scale 100), so the pins are kept per CPU capability
(``torch.backends.cpu.get_cpu_capability()``): ``trainer_pins.json`` was recorded on AVX-512,
``trainer_pins.AVX2.json`` on AVX2. A trainer pinned in this machine's file is held to 1e-6; one pinned
only in another CPU's file (a new trainer recorded on one kind of machine) is compared with that file at
a cross-kernel tolerance of 1e-4 (still far below what any change of a method's computation moves).
"""
import json
import os
import random
import os.path as osp

import pytest
import torch

from tests.helpers import GOLDEN, make_cfg, make_image_folder, write_user_descriptions
from vlprompt.engine import TRAINER_REGISTRY, build_trainer
from vlprompt.engine.methods import load_plugins, method_specs
from vlprompt.utils import restore_stdout

load_plugins()
# the shipped trainers (trainers/*.py), not those a test registers at run time
SPECS = {s.name: s for s in method_specs() if TRAINER_REGISTRY.get(s.name).__module__.startswith("trainers.")}
CAPABILITY = torch.backends.cpu.get_cpu_capability()
PIN_FILES = {"AVX512": osp.join(GOLDEN, "trainer_pins.json"), "AVX2": osp.join(GOLDEN, "trainer_pins.AVX2.json")}
PINS = PIN_FILES.get(CAPABILITY, osp.join(GOLDEN, f"trainer_pins.{CAPABILITY}.json"))
STRICT, CROSS_KERNEL = 1e-6, 1e-4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gold")
    names = make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    write_user_descriptions(str(root), "five", names)  # for the methods that read class descriptions
    return root


def _fixed_batch(views=1):
    g = torch.Generator().manual_seed(0)
    img = torch.randn(4, 3, 224, 224, generator=g)
    if views > 1:  # a method that reads K augmented views (its card's views): K fixed tensors, view 0 first
        img = [img] + [torch.randn(4, 3, 224, 224, generator=g) for _ in range(views - 1)]
    return {"img": img, "label": torch.tensor([0, 1, 2, 3]), "domain": torch.zeros(4, dtype=torch.long),
            "impath": [""] * 4, "index": torch.arange(4)}


def _pins_of(name, data_root, out):
    spec = SPECS[name]
    opts = []
    if spec.cfg_node:
        opts = [f"TRAINER.{spec.cfg_node}.PREC", "fp32"]
    cfg = make_cfg(data_root, trainer=name, folder="five", output_dir=str(out), opts=opts)
    cfg.OPTIM.MAX_EPOCH = 1
    cfg.freeze()
    random.seed(0)  # the fabricated folder's split (CoOp's rule shuffles with the global RNG)
    torch.manual_seed(0)
    try:
        trainer = build_trainer(cfg)
    finally:
        restore_stdout()
    batch = _fixed_batch(spec.views)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        logits = trainer.model_inference(_fixed_batch()["img"]).float()
    pins = {"logits": logits.flatten().tolist()}
    if spec.eval_only:
        return pins
    before = {n: p.detach().clone() for m in trainer.get_model_names()
              for n, p in trainer._models[m].named_parameters() if p.requires_grad}
    trainer.set_model_mode("train")
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, 2
    torch.manual_seed(1)
    random.seed(1)  # a method's own draws (CoPrompt's description index), whatever the split build consumed
    summary = trainer.forward_backward(batch)
    after = {n: p.detach() for m in trainer.get_model_names()
             for n, p in trainer._models[m].named_parameters() if p.requires_grad}
    pins["summary"] = {k: float(v) for k, v in summary.items()}
    pins["update"] = {n: [float((after[n] - before[n]).abs().sum()), float((after[n] - before[n]).flatten()[0])]
                      for n in sorted(before)}
    return pins


def _close(a, b, path, tol=STRICT):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        assert torch.allclose(ta, tb, rtol=tol, atol=tol), f"{path}: max diff {(ta - tb).abs().max().item():.3g}"
    else:
        assert abs(a - b) <= tol + tol * abs(b), f"{path}: {a} != {b}"


def _stored_pin(name):
    """(pin of ``name``, tolerance): from this CPU capability's file at 1e-6; a trainer that file does not
    hold yet (pinned on another kind of CPU only) from the first recorded file that has it, at 1e-4."""
    own = json.load(open(PINS)) if osp.exists(PINS) else {}
    if name in own:
        return own[name], STRICT
    for path in PIN_FILES.values():
        if path != PINS and osp.exists(path):
            other = json.load(open(path))
            if name in other:
                return other[name], CROSS_KERNEL
    return None, STRICT


@pytest.mark.parametrize("name", sorted(SPECS))
def test_trainer_numbers_are_pinned(name, data_root, tmp_path):
    got = _pins_of(name, data_root, tmp_path / "out")
    if os.environ.get("VLPROMPT_UPDATE_GOLDEN"):
        stored = json.load(open(PINS)) if osp.exists(PINS) else {}
        stored[name] = got
        tmp = PINS + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        os.replace(tmp, PINS)
    pin, tol = _stored_pin(name)
    assert pin is not None, f"no pinned numbers for {name} in {sorted(PIN_FILES.values())} " \
                            "(VLPROMPT_UPDATE_GOLDEN=1 to add them to this CPU's file)"
    _close(got, pin, name, tol)
