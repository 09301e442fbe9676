"""ATPrompt as a plug-in (trainers/plugins/atprompt.py): the prompt it builds equals the official
construction (the tokenized string "X X color X X shape X X X X <class>." with the learned tokens in the X
slots), what trains and what is saved, the evaluation text cache, the attribute table, refusals, the
composition CoOp+DePT+ATPrompt (its train.py run on the toy world: tests/test_plugins_dept.py)."""

import pytest
import torch

from tests.helpers import make_cfg, make_image_folder
from vlprompt.config import ConfigError, get_cfg_default, extend_cfg
from vlprompt.engine import TRAINER_REGISTRY, build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.engine.plugins import PluginError, forget_composed
from vlprompt.utils import load_checkpoint, restore_stdout, set_random_seed

load_plugins()
from trainers.plugins.atprompt import attribute_words  # noqa: E402

ATT = ["TRAINER.ATPROMPT.ATT_NUM", "2", "TRAINER.ATPROMPT.ATT1_TEXT", "color", "TRAINER.ATPROMPT.ATT2_TEXT", "shape",
       "TRAINER.ATPROMPT.N_ATT1", "2", "TRAINER.ATPROMPT.N_ATT2", "3", "TRAINER.COOP.N_CTX", "4"]


@pytest.fixture(autouse=True)
def _forget_composed():
    yield
    forget_composed(TRAINER_REGISTRY)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("atp")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    make_image_folder(str(root / "three"), n_classes=3, n_per_class=4, seed=3, class_prefix="other")
    return root


def _trainer(name, data_root, out, folder="five", extra=()):
    cfg = make_cfg(data_root, trainer=name, folder=folder, output_dir=str(out),
                   opts=["TRAINER.COOP.PREC", "fp32", *ATT, *extra])
    cfg.freeze()
    set_random_seed(1)
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _batch(n=4, k=5):
    g = torch.Generator().manual_seed(0)
    return {"img": torch.randn(n, 3, 224, 224, generator=g), "label": torch.arange(n) % k}


def test_prompt_equals_the_official_construction(data_root, tmp_path):
    t = _trainer("CoOp+ATPrompt", data_root, tmp_path)
    model, learner, atp = t.model, t.model.prompt_learner, t._models["ATPrompt"]
    with torch.no_grad():
        for p in atp.parameters():
            p.normal_()
    # official: tokenize "<A1 x2> color <A2 x3> shape <ctx x4> <class>." and put the learned vectors in the X slots
    names = [n.replace("_", " ") for n in learner.classnames]
    texts = [f"X X color X X X shape X X X X {n}." for n in names]
    ids = learner._tokenizer(texts, learner.context_length)
    emb = model.text_encoder.embed(ids).float().clone()
    slots = {1: atp.ctx_att1, 4: atp.ctx_att2, 8: learner.ctx}  # SOS, A1 (2), color, A2 (3), shape, ctx (4)
    for start, v in slots.items():
        emb[:, start:start + v.shape[0]] = v
    eot = learner._tokenizer.eot_positions(ids)
    with torch.no_grad():
        want = model.text_encoder(emb, eot, shared_prefix=0)
        got = model.text_features()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert atp.ctx_att3.shape == (4, learner.ctx.shape[1])  # always built (N_ATT3 default 4), unused with 2


def test_trainable_state_checkpoint_and_cache(data_root, tmp_path):
    t = _trainer("CoOp+ATPrompt", data_root, tmp_path / "a", extra=["OPTIM.WARMUP_EPOCH", "0"])
    assert t.get_model_names() == ["prompt_learner", "ATPrompt"]
    atp = t._models["ATPrompt"]
    assert sorted(n for n, p in atp.named_parameters() if p.requires_grad) == ["ctx_att1", "ctx_att2", "ctx_att3"]
    assert [n for n, p in t.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    before = {n: p.detach().clone() for n, p in atp.named_parameters()}
    ctx0 = t.model.prompt_learner.ctx.detach().clone()
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
    t.forward_backward({**_batch(), "domain": torch.zeros(4, dtype=torch.long)})
    assert not torch.equal(t.model.prompt_learner.ctx, ctx0)
    moved = {n for n, p in atp.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"ctx_att1", "ctx_att2"}  # ATT_NUM 2: the third block gets no gradient

    # evaluation caches the text features; a change of the attribute blocks alone invalidates the cache
    t.set_model_mode("eval")
    img = _batch(2)["img"]
    with torch.no_grad():
        a = t.model.class_text_features()
        assert t.model.class_text_features() is a  # cached
        atp.ctx_att1.add_(5.0)
        b = t.model.class_text_features()
        fresh = t.model.text_features()
    assert not torch.equal(a, b) and torch.equal(b, fresh)

    t.save_model(0, str(tmp_path / "a"))
    saved = load_checkpoint(str(tmp_path / "a" / "ATPrompt" / "model.pth.tar-1"))["state_dict"]
    assert sorted(saved) == ["ctx_att1", "ctx_att2", "ctx_att3"]  # no word embeddings (fixed, rebuilt)
    assert list(load_checkpoint(str(tmp_path / "a" / "prompt_learner" / "model.pth.tar-1"))["state_dict"]) == ["ctx"]
    other = _trainer("CoOp+ATPrompt", data_root, tmp_path / "b", folder="three")
    other.load_model(str(tmp_path / "a"), epoch=1)
    restore_stdout()
    for k, v in saved.items():
        assert torch.equal(other._models["ATPrompt"].state_dict()[k], v)
    other.set_model_mode("eval")
    with torch.no_grad():
        assert other.model_inference(img).shape == (2, 3)


def test_composed_with_dept_draws_the_blocks_as_coop_atprompt_does(data_root, tmp_path):
    t = _trainer("CoOp+DePT+ATPrompt", data_root, tmp_path / "d")
    solo = _trainer("CoOp+ATPrompt", data_root, tmp_path / "s")
    assert t.get_model_names() == ["prompt_learner", "ATPrompt", "DePT"]
    for k, v in solo._models["ATPrompt"].state_dict().items():  # built before DePT's head, as officially
        assert torch.equal(t._models["ATPrompt"].state_dict()[k], v), k
    b = _batch()
    t.set_model_mode("train")
    terms, logits = t.loss_terms(b["img"], b["label"])
    assert set(terms) == {"ce", "dept"}
    with torch.no_grad():
        torch.testing.assert_close(t.model.text_features(), solo.model.text_features())


def test_attribute_table_and_config_errors(data_root, tmp_path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "OxfordFlowers"
    cfg.TRAINER.ATPROMPT.ATT_NUM = 1
    assert attribute_words(cfg) == ["color", "habitat", "growth"]  # the official table wins
    cfg.TRAINER.ATPROMPT.USE_TABLE = False
    cfg.TRAINER.ATPROMPT.ATT1_TEXT = "petal"
    assert attribute_words(cfg) == ["petal"]
    cfg.DATASET.NAME = "ImageFolder"
    cfg.TRAINER.ATPROMPT.ATT_NUM = 0
    with pytest.raises(ConfigError, match=r"TRAINER.ATPROMPT.ATT_NUM must be 1, 2 or 3 for dataset 'ImageFolder'"):
        attribute_words(cfg)
    with pytest.raises(ConfigError, match=r"TRAINER.ATPROMPT.ATT1_TEXT: the attribute word 'qzxvwkjh' is \d+ tokens"):
        _trainer("CoOp+ATPrompt", data_root, tmp_path, extra=["TRAINER.ATPROMPT.ATT1_TEXT", "qzxvwkjh"])


@pytest.mark.parametrize("name, pattern", [
    ("MaPLe+ATPrompt", r"^ATPrompt cannot be added to MaPLe: an official ATPrompt host not done in vlprompt yet"),
    ("CoOp+ATPrompt+DePT", r"canonical order .*use 'CoOp\+DePT\+ATPrompt'"),
    ("KgCoOp+DePT+ATPrompt", r"^ATPrompt cannot be added to KgCoOp\+DePT: ATPrompt declares no support"),
])
def test_refusals(name, pattern):
    with pytest.raises(PluginError, match=pattern):
        TRAINER_REGISTRY.get(name)
