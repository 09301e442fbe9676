"""ProGrad: the gradient projection (unit and through the engine step), the distillation term, the
official init rule, configs, and the toy world.

Build, forward, step, checkpoint and resume are covered for every trainer by tests/test_contract.py;
here only what is specific to ProGrad. Small random backbone (``test-vit-tiny``) on CPU.
"""
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from trainers.prograd import (
    PROGRAD_TEMPLATES,
    ProGradPromptLearner,
    distillation_term,
    init_phrase_of,
    project_conflicting,
    prograd_template,
)
from vlprompt.clip import APLE_TEMPLATES, build_clip_model, tokenize
from vlprompt.clip.prompt_init import token_embeddings
from vlprompt.config import extend_cfg, get_cfg_default, merge_from_file

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny").requires_grad_(False)


def _pair(sign, shape=(4, 6), seed=0):
    """Random gradients a, b with <a, b> of the given sign."""
    g = torch.Generator().manual_seed(seed)
    while True:
        a, b = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        if torch.sign((a * b).sum()) == sign:
            return a, b


def test_projection_is_orthogonal_exactly_when_the_gradients_conflict():
    for seed in range(5):
        a, b = _pair(-1, seed=seed)
        g = a.clone()
        assert project_conflicting([g], [b]) == [True]
        assert abs(torch.dot(g.flatten(), b.flatten()).item()) < 1e-5 * a.norm().item() * b.norm().item()
        b_unit = b / b.norm()
        assert torch.allclose(g, a - torch.dot(a.flatten(), b_unit.flatten()) * b_unit, atol=1e-6)
        assert torch.allclose(g + torch.dot(a.flatten(), b_unit.flatten()) * b_unit, a, atol=1e-6)

        a, b = _pair(1, seed=seed)
        g = a.clone()
        assert project_conflicting([g], [b]) == [False]
        assert torch.equal(g, a)  # unchanged, bit for bit


def test_projection_per_tensor_lambda_and_degenerate_cases():
    (a1, b1), (a2, b2) = _pair(-1, seed=1), _pair(1, seed=2)
    g1, g2 = a1.clone(), a2.clone()
    assert project_conflicting([g1, g2], [b1, b2], lambda_=0.5) == [True, False]
    b_unit = b1 / b1.norm()
    assert torch.allclose(g1, a1 - 0.5 * torch.dot(a1.flatten(), b_unit.flatten()) * b_unit, atol=1e-6)
    assert torch.equal(g2, a2)
    # zero KD gradient, zero CE gradient or no KD gradient: unchanged (officially a NaN cosine)
    a = torch.randn(3, 4)
    for b in (torch.zeros(3, 4), None):
        g = a.clone()
        assert project_conflicting([g], [b]) == [False] and torch.equal(g, a)
    g = torch.zeros(3, 4)
    assert project_conflicting([g], [torch.randn(3, 4)]) == [False] and torch.equal(g, torch.zeros(3, 4))


def test_distillation_term_is_a_soft_target_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for T in (1.0, 2.0):
        expected = (-(F.softmax(t / T, -1) * F.log_softmax(s / T, -1)).sum(1) * T * T).mean()
        assert torch.allclose(distillation_term(s, t, T), expected, atol=1e-6)
    # not a KL: its minimum over the student is the teacher's entropy, not 0
    assert distillation_term(t, t).item() > 0.1


def test_official_init_rule(tiny):
    d = tiny.token_embedding.weight.shape[1]
    learner = ProGradPromptLearner(tiny, ["cat", "sea_lion"], n_ctx=16, init_phrase="a photo of a")
    phrase = token_embeddings(tiny, tokenize("a photo of a"))[0, 1:5]
    assert learner.ctx.shape == (16, d)
    assert torch.equal(learner.ctx[:12], torch.zeros(12, d)) and torch.equal(learner.ctx[12:], phrase)
    assert learner.prompt_prefix == " ".join(["X"] * 12) + " a photo of a"
    # the assembled prompt is exactly the tokenized text "a photo of a <class>." after the 12 zero slots
    full = token_embeddings(tiny, tokenize(["X " * 12 + "a photo of a cat.", "X " * 12 + "a photo of a sea lion."]))
    prompts = learner.text_prompts()[0]
    assert torch.equal(prompts[:, 13:], full[:, 13:prompts.shape[1]])
    assert torch.equal(prompts[:, 1:13], torch.zeros(2, 12, d))

    # punctuation: 8 words, 9 tokens -> the last word stays a frozen token after the 16 slots
    pets = init_phrase_of(PROGRAD_TEMPLATES["OxfordPets"])
    assert pets == "a type of pet, a photo of a"
    learner = ProGradPromptLearner(tiny, ["cat"], n_ctx=16, init_phrase=pets)
    tok = token_embeddings(tiny, tokenize(pets))[0]
    assert torch.equal(learner.ctx[8:], tok[1:9]) and torch.equal(learner.ctx[:8], torch.zeros(8, d))
    assert torch.equal(learner.token_suffix[0, 0], tok[9])  # the final "a"

    rand = ProGradPromptLearner(tiny, ["cat", "dog", "cow"], n_ctx=5, init_phrase="", csc=True)
    assert rand.ctx.shape == (3, 5, d) and rand.ctx.abs().sum() > 0


def test_templates_and_bad_settings(tiny, tmp_path):
    from tests.helpers import make_cfg, make_image_folder
    from vlprompt.config import ConfigError
    from vlprompt.engine import build_trainer
    from vlprompt.utils import restore_stdout

    assert PROGRAD_TEMPLATES == APLE_TEMPLATES  # ProGrad's table is the one APLe's teacher reuses
    assert prograd_template("DescribableTextures") == "a texture of {}."
    assert prograd_template("ImageFolder") == "a photo of a {}."
    make_image_folder(str(tmp_path / "three"), n_classes=3, n_per_class=4)
    cfg = make_cfg(tmp_path, trainer="ProGrad", folder="three", output_dir=str(tmp_path / "o"),
                   opts=["TRAINER.PROGRAD.PREC", "fp32", "TRAINER.PROGRAD.CTX_INIT", "True",
                         "TRAINER.PROGRAD.N_CTX", "2"])
    cfg.freeze()
    with pytest.raises(ConfigError, match="TRAINER.PROGRAD.N_CTX"):
        try:
            build_trainer(cfg)
        finally:
            restore_stdout()


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from tests.helpers import make_cfg, make_image_folder
    from vlprompt.engine import build_trainer
    from vlprompt.utils import restore_stdout

    root = tmp_path_factory.mktemp("prograd")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    cfg = make_cfg(root, trainer="ProGrad", folder="five", output_dir=str(root / "out"),
                   opts=["TRAINER.PROGRAD.PREC", "fp32", "TRAINER.PROGRAD.CTX_INIT", "True"])
    cfg.freeze()
    torch.manual_seed(0)
    try:
        t = build_trainer(cfg)
    finally:
        restore_stdout()
    return t


def test_engine_step_applies_the_projected_ce_gradient(trainer):
    """Through ``forward_backward``: the gradient left on ``ctx`` is the CE gradient, projected off the
    KD gradient when (and only when) they conflict (the optimiser steps with that ``.grad``)."""
    t = trainer
    ctx = t.model.prompt_learner.ctx
    images = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        zs = t.model.zero_shot.logits(images)
    seen = set()
    # labels = the teacher's choice (CE and KD agree) and its last choice (they pull apart)
    for labels in (zs.argmax(1), zs.argmin(1)):
        t.set_model_mode("train")
        terms, _ = t.loss_terms(images, labels)
        a, = torch.autograd.grad(terms["ce"], [ctx], retain_graph=True)
        b, = torch.autograd.grad(terms["kd"], [ctx])
        conflict = torch.dot(a.flatten(), b.flatten()).item() < 0
        before = ctx.detach().clone()
        t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
        summary = t.forward_backward({"img": images, "label": labels})
        assert set(summary) == {"loss", "ce", "kd", "acc"} and summary["loss"] == summary["ce"]
        assert t.last_projected == [conflict]
        g = ctx.grad
        if conflict:
            b_unit = b / b.norm()
            assert torch.allclose(g, a - torch.dot(a.flatten(), b_unit.flatten()) * b_unit, atol=1e-7)
            assert abs(torch.dot(g.flatten(), b.flatten()).item()) < 1e-4 * a.norm().item() * b.norm().item()
        else:
            assert torch.allclose(g, a, atol=1e-7)
        assert not torch.equal(ctx.detach(), before)  # the optimiser steps with this .grad
        seen.add(conflict)
    assert seen == {True, False}, "the test batch did not produce both cases"


def _cfg_from(path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, path)
    return cfg


def test_config_defaults_and_files():
    import trainers  # noqa: F401

    cfg = get_cfg_default()
    extend_cfg(cfg)
    node = cfg.TRAINER.PROGRAD
    assert (node.N_CTX, node.CSC, node.CTX_INIT, node.PREC, node.CLASS_TOKEN_POSITION) == (16, False, False, "fp16",
                                                                                           "end")
    assert (node.T, node.LAMBDA) == (1.0, 1.0)
    folder = osp.join(ROOT, "configs", "trainers", "ProGrad")
    epochs = {"rn50": 200, "rn50_ep50": 50, "rn50_ep100": 100, "vit_b16": 200, "vit_b16_ep50": 50,
              "vit_b16_ep100": 100}
    assert {f[:-5] for f in os.listdir(folder) if not f.startswith("toy")} == set(epochs)
    for name, ep in epochs.items():
        c = _cfg_from(osp.join(folder, f"{name}.yaml"))
        assert c.MODEL.BACKBONE.NAME == ("RN50" if name.startswith("rn50") else "ViT-B/16")
        assert c.OPTIM.MAX_EPOCH == ep
        n = c.TRAINER.PROGRAD
        assert (n.CTX_INIT, n.N_CTX, n.T, n.LAMBDA, n.CSC, n.PREC) == (True, 16, 1.0, 1.0, False, "fp16")
        assert (c.DATALOADER.TRAIN_X.BATCH_SIZE, c.OPTIM.NAME, c.OPTIM.LR) == (32, "sgd", 0.002)
        if name.startswith("vit"):
            assert "RECONSTRUCTED" in open(osp.join(folder, f"{name}.yaml")).read()
