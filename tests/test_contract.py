"""The method-kit contract: what every registered trainer gets for free (timm's test_models idea).

Parametrised over ``vlprompt.engine.methods.method_specs()`` (so a new trainer file is covered without
editing this file), on the tiny random backbone and a fabricated 5-class folder:

* build: the learnable module is registered under ``MODEL_NAME``; exactly its parameters require grad,
  the frozen CLIP none;
* forward: (B, K) finite fp32 logits for the dataset's class count;
* backward: one engine step moves learnable tensors that received a gradient, and nothing else;
* checkpoint onto another class list: the saved learned state loads into a model built for other
  classes (base -> novel), and the logits have the new class count;
* resume: a run killed after epoch 1 and started again ends bit for bit like an uninterrupted run
  (models, every named optimiser, schedulers, RNG, the per-epoch ``model-last.pth.tar``).
"""
import os
import os.path as osp

import pytest
import torch

import train as train_mod
from tests.helpers import card_fixture_opts, crash_copy_and_resume, make_cfg, make_image_folder, write_user_descriptions
from vlprompt.engine import LAST_CHECKPOINT, TRAINER_REGISTRY, build_trainer
from vlprompt.engine.methods import load_plugins, method_specs
from vlprompt.utils import load_checkpoint, restore_stdout

load_plugins()
# the shipped trainers (trainers/*.py), not those a test registers at run time
ALL = [s for s in method_specs() if TRAINER_REGISTRY.get(s.name).__module__.startswith("trainers.")]
TRAINABLE = [s for s in ALL if not s.eval_only]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    five = make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    three = make_image_folder(str(root / "three"), n_classes=3, n_per_class=4, seed=3, class_prefix="other")
    # class descriptions for the methods that read them (vlprompt.data.descriptions: a user's dataset's file)
    for folder, names in (("five", five), ("three", three)):
        write_user_descriptions(str(root), folder, names)
    return root


def _opts(spec, extra=()):
    opts = [f"TRAINER.{spec.cfg_node}.PREC", "fp32"] if spec.cfg_node else []
    return opts + list(extra)


def _trainer(spec, data_root, out, folder="five", extra=()):
    cfg = make_cfg(data_root, trainer=spec.name, folder=folder, output_dir=str(out), opts=_opts(spec, extra))
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _batch(n=4, k=5, views=1):
    g = torch.Generator().manual_seed(0)
    img = [torch.randn(n, 3, 224, 224, generator=g) for _ in range(views)]
    return {"img": img[0] if views == 1 else img, "label": torch.arange(n) % k,
            "domain": torch.zeros(n, dtype=torch.long), "impath": [""] * n, "index": torch.arange(n)}


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_build_and_forward(spec, data_root, tmp_path):
    t = _trainer(spec, data_root, tmp_path)
    t.set_model_mode("eval")
    with torch.no_grad():
        logits = t.model_inference(_batch()["img"])
    assert logits.shape == (4, 5) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    if spec.eval_only:
        assert t.get_model_names() == []
        return
    assert t.get_model_names() == [spec.model_name]
    learnable = {id(p) for p in t._models[spec.model_name].parameters()}
    for name, p in t.model.named_parameters():
        assert p.requires_grad == (id(p) in learnable), f"{name}: requires_grad={p.requires_grad}"


@pytest.mark.parametrize("spec", TRAINABLE, ids=lambda s: s.name)
def test_one_step_updates_exactly_the_learnable_tensors(spec, data_root, tmp_path):
    # no weight decay: it moves parameters whose gradient is exactly zero (LoRA's A while B is 0)
    t = _trainer(spec, data_root, tmp_path, extra=["OPTIM.WEIGHT_DECAY", "0.0"])
    module = t._models[spec.model_name]
    frozen_before = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
    summary = t.forward_backward(_batch(views=spec.views))  # K augmented views where the card reads K
    assert "loss" in summary and all(isinstance(v, float) for v in summary.values())
    changed = [n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])]
    with_grad = [n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert changed, "one step changed no learnable tensor"
    assert set(changed) <= set(with_grad), f"moved without a gradient: {set(changed) - set(with_grad)}"
    for n, p in t.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), frozen_before[n]), f"frozen parameter {n} changed"


@pytest.mark.parametrize("spec", TRAINABLE, ids=lambda s: s.name)
def test_checkpoint_loads_onto_another_class_list(spec, data_root, tmp_path):
    t = _trainer(spec, data_root, tmp_path / "a")
    with torch.no_grad():
        for p in t._models[spec.model_name].parameters():
            p.add_(0.01)
    t.save_model(0, str(tmp_path / "a"))
    saved = load_checkpoint(str(tmp_path / "a" / spec.model_name / "model.pth.tar-1"))["state_dict"]
    assert all(not k.endswith(("token_prefix", "token_suffix", "tokenized_prompts")) for k in saved)
    other = _trainer(spec, data_root, tmp_path / "b", folder="three")
    try:
        other.load_model(str(tmp_path / "a"), epoch=1)
    finally:
        restore_stdout()
    mine = other._models[spec.model_name].state_dict()
    for k, v in saved.items():
        if k in mine and mine[k].shape == v.shape:
            assert torch.equal(mine[k], v), k
    other.set_model_mode("eval")
    with torch.no_grad():
        assert other.model_inference(_batch(2)["img"]).shape == (2, 3)


def _run(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


def _learned(out, name):
    return load_checkpoint(osp.join(out, name, "model.pth.tar-2"))


@pytest.mark.parametrize("spec", TRAINABLE, ids=lambda s: s.name)
def test_kill_and_resume_equals_uninterrupted(spec, data_root, tmp_path, monkeypatch):
    yaml = tmp_path / "five.yaml"
    yaml.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    common = ["--root", str(data_root), "--seed", "1", "--trainer", spec.name, "--dataset-config-file", str(yaml),
              "MODEL.BACKBONE.NAME", "test-vit-tiny", "USE_CUDA", "False", "DATALOADER.NUM_WORKERS", "0",
              "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.05",
              "OPTIM.WARMUP_EPOCH", "0", "TEST.NO_TEST", "True", "INPUT.SIZE", "(224, 224)",
              *_opts(spec), *card_fixture_opts(spec.name, data_root)]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    crash_copy_and_resume(_run, common, full, killed, TRAINER_REGISTRY.get(spec.name), monkeypatch)
    assert not osp.exists(osp.join(killed, spec.model_name, LAST_CHECKPOINT)), "resume point left after the run"
    a, b = _learned(full, spec.model_name), _learned(killed, spec.model_name)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["epoch"] == b["epoch"] == 2
    assert sorted(os.listdir(osp.join(full, spec.model_name))) == sorted(os.listdir(osp.join(killed, spec.model_name)))
    assert str(a.get("optimizer")) == str(b.get("optimizer"))
    assert str(a.get("optimizers")) == str(b.get("optimizers"))
