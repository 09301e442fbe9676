"""KgCoOp: the knowledge-guided regulariser, its templates, its init switch, configs, and the toy world.

Build, forward, step, checkpoint and resume are covered for every trainer by tests/test_contract.py;
here only what is specific to KgCoOp. Small random backbone (``test-vit-tiny``) on CPU.
"""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from trainers.kgcoop import KGCOOP_TEMPLATES, build_kgcoop_clip, kgcoop_template, knowledge_gap
from vlprompt.clip import CUSTOM_TEMPLATES, build_clip_model, encode_class_texts, get_template
from vlprompt.config import extend_cfg, get_cfg_default, merge_from_file

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ["cat", "dog", "sea_lion", "golden retriever"]


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny").requires_grad_(False)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_regulariser_is_zero_when_the_learned_prompt_is_the_hand_crafted_one(tiny):
    # CTX_INIT: the context starts as "a photo of a", the template is "a photo of a {}.": same text
    model = build_kgcoop_clip(tiny, CLASSES, "a photo of a {}.", ctx_init=True)
    learned = model.text_features()
    zs = model.zero_shot.text_features()
    assert torch.allclose(F.normalize(learned, dim=-1), encode_class_texts(tiny, CLASSES, "a photo of a {}."),
                          atol=1e-6)
    assert abs(knowledge_gap(learned, zs).item()) < 1e-6
    # another template or a moved context: a positive gap, with a gradient on ctx only
    other = build_kgcoop_clip(tiny, CLASSES, "a blurry photo of a {}.", ctx_init=True)
    assert knowledge_gap(other.text_features(), other.zero_shot.text_features()).item() > 1e-4
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.05 * torch.randn_like(model.prompt_learner.ctx))
    gap = knowledge_gap(model.text_features(), zs)
    assert gap.item() > 1e-4
    gap.backward()
    assert model.prompt_learner.ctx.grad is not None and model.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_regulariser_formula():
    g = torch.Generator().manual_seed(1)
    t, z = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    expected = 1 - torch.stack([torch.dot(t[i] / t[i].norm(), z[i] / z[i].norm()) for i in range(5)]).mean()
    assert torch.allclose(knowledge_gap(t, z), expected, atol=1e-6)
    assert torch.allclose(knowledge_gap(3.0 * t, z), expected, atol=1e-6)  # scale-free in the learned features


def test_templates_are_kgcoops():
    assert kgcoop_template("DescribableTextures") == "a photo of a {}, a type of texture."
    assert CUSTOM_TEMPLATES["DescribableTextures"] != KGCOOP_TEMPLATES["DescribableTextures"]
    for name in CUSTOM_TEMPLATES:
        if name != "DescribableTextures":
            assert kgcoop_template(name) == CUSTOM_TEMPLATES[name], name
    assert kgcoop_template("ImageFolder") == get_template("ImageFolder") == "a photo of a {}."


def test_ctx_init_is_a_switch(tiny):
    phrase = build_kgcoop_clip(tiny, CLASSES, "a photo of a {}.", n_ctx=16, ctx_init=True).prompt_learner
    assert tuple(phrase.ctx.shape) == (4, tiny.token_embedding.weight.shape[1])  # N_CTX ignored, as officially
    rand = build_kgcoop_clip(tiny, CLASSES, "a photo of a {}.", n_ctx=6, ctx_init=False).prompt_learner
    assert tuple(rand.ctx.shape) == (6, tiny.token_embedding.weight.shape[1]) and rand.prompt_prefix == "X X X X X X"
    csc = build_kgcoop_clip(tiny, CLASSES, "a photo of a {}.", n_ctx=3, ctx_init=False, csc=True).prompt_learner
    assert tuple(csc.ctx.shape) == (len(CLASSES), 3, tiny.token_embedding.weight.shape[1])


def test_loss_terms_through_the_trainer(tmp_path, images):
    from tests.helpers import make_cfg, make_image_folder
    from vlprompt.engine import build_trainer
    from vlprompt.utils import restore_stdout

    make_image_folder(str(tmp_path / "five"), n_classes=5, n_per_class=4)
    losses = {}
    for w in (1.0, 8.0):
        cfg = make_cfg(tmp_path, trainer="KgCoOp", folder="five", output_dir=str(tmp_path / f"o{w}"),
                       opts=["TRAINER.KGCOOP.PREC", "fp32", "TRAINER.KGCOOP.W", str(w)])
        cfg.freeze()
        torch.manual_seed(0)
        try:
            t = build_trainer(cfg)
        finally:
            restore_stdout()
        terms, logits = t.loss_terms(images, torch.tensor([0, 1, 2]))
        assert set(terms) == {"ce", "kg"} and logits.shape == (3, 5)
        assert torch.allclose(terms["ce"], F.cross_entropy(t.model(images), torch.tensor([0, 1, 2])))
        losses[w] = terms
    assert losses[1.0]["kg"].item() > 0
    assert torch.allclose(losses[8.0]["kg"], 8.0 * losses[1.0]["kg"], rtol=1e-5)


def _cfg_from(path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, path)
    return cfg


def test_config_defaults_and_files():
    import trainers  # noqa: F401

    cfg = get_cfg_default()
    extend_cfg(cfg)
    node = cfg.TRAINER.KGCOOP
    assert (node.N_CTX, node.CSC, node.CTX_INIT, node.W, node.PREC) == (16, False, False, 1.0, "fp16")
    for name, backbone in (("vit_b16_ep100_ctxv1", "ViT-B/16"), ("rn50_ep100", "RN50")):
        c = _cfg_from(osp.join(ROOT, "configs", "trainers", "KgCoOp", f"{name}.yaml"))
        assert c.MODEL.BACKBONE.NAME == backbone
        assert (c.TRAINER.KGCOOP.CTX_INIT, c.TRAINER.KGCOOP.W, c.TRAINER.KGCOOP.N_CTX) == (True, 8.0, 4)
        assert c.TRAINER.KGCOOP.PREC == "fp16"
        assert (c.DATALOADER.TRAIN_X.BATCH_SIZE, c.DATALOADER.TEST.BATCH_SIZE) == (128, 100)
        assert (c.OPTIM.NAME, c.OPTIM.LR, c.OPTIM.MAX_EPOCH, c.OPTIM.LR_SCHEDULER) == ("sgd", 0.002, 100, "cosine")
        assert (c.OPTIM.WARMUP_EPOCH, c.OPTIM.WARMUP_TYPE, c.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
