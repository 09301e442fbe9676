"""ATPrompt as a plug-in (trainers/plugins/atprompt.py): the prompt it builds equals the official
construction (the tokenized string "X X color X X shape X X X X <class>." with the learned tokens in the X
slots), what trains and what is saved, the evaluation text cache, the attribute table, refusals, the
composition CoOp+DePT+ATPrompt (its train.py run on the toy world: tests/test_plugins_dept.py), and the hosts
CoCoOp (per-image prompts, Meta-Net bias on the context only) and MaPLe (deep text prompts behind the block)."""

import json
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg
from vlprompt.config import ConfigError, get_cfg_default, extend_cfg
from vlprompt.engine import TRAINER_REGISTRY, build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.engine.plugins import PluginError
from vlprompt.utils import load_checkpoint, restore_stdout, set_random_seed

load_plugins()
from trainers.plugins.atprompt import attribute_words  # noqa: E402

ATT = ["TRAINER.ATPROMPT.ATT_NUM", "2", "TRAINER.ATPROMPT.ATT1_TEXT", "color", "TRAINER.ATPROMPT.ATT2_TEXT", "shape",
       "TRAINER.ATPROMPT.N_ATT1", "2", "TRAINER.ATPROMPT.N_ATT2", "3", "TRAINER.COOP.N_CTX", "4"]


# the composed-name cleanup and the two fabricated folders are the plug-in suite's
from tests.test_plugins_dept import _forget_composed, data_root  # noqa: E402,F401


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
    ("CoOp+ATPrompt+DePT", r"canonical order .*use 'CoOp\+DePT\+ATPrompt'"),
    ("KgCoOp+DePT+ATPrompt", r"^ATPrompt cannot be added to KgCoOp\+DePT: ATPrompt declares no support"),
])
def test_refusals(name, pattern):
    with pytest.raises(PluginError, match=pattern):
        TRAINER_REGISTRY.get(name)


# -----------------------------------------------------------------------------------------------
# CoCoOp+ATPrompt and MaPLe+ATPrompt (official trainers/cocoop_atp.py, trainers/maple_atp.py, clip/model_atp.py)
# -----------------------------------------------------------------------------------------------

HOST_OPTS = {
    "CoCoOp": ["TRAINER.COCOOP.PREC", "fp32", "TRAINER.COCOOP.N_CTX", "4", "TRAINER.COCOOP.CTX_INIT", ""],
    "MaPLe": ["TRAINER.MAPLE.PREC", "fp32", "TRAINER.MAPLE.N_CTX", "2", "TRAINER.MAPLE.CTX_INIT", "",
              "TRAINER.MAPLE.PROMPT_DEPTH", "2"],
}
ATT2 = ["TRAINER.ATPROMPT.ATT_NUM", "2", "TRAINER.ATPROMPT.ATT1_TEXT", "color", "TRAINER.ATPROMPT.ATT2_TEXT", "shape",
        "TRAINER.ATPROMPT.N_ATT1", "2", "TRAINER.ATPROMPT.N_ATT2", "3"]


def _host_trainer(name, data_root, out, folder="five", extra=(), backbone="test-vit-tiny"):
    host = name.split("+")[0]
    cfg = make_cfg(data_root, trainer=name, folder=folder, output_dir=str(out), opts=[*HOST_OPTS[host], *ATT2, *extra],
                   backbone=backbone)
    cfg.freeze()
    set_random_seed(1)
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _official_embeddings(learner, text_encoder, n_att, n_ctx):
    """Token embeddings of the official prompt string "<X*n1> color <X*n2> shape <X*n_ctx> <class>." and its EOT."""
    names = [n.replace("_", " ") for n in learner.classnames]
    x = lambda n: " ".join(["X"] * n)  # noqa: E731
    texts = [f"{x(n_att[0])} color {x(n_att[1])} shape {x(n_ctx)} {n}." for n in names]
    ids = learner._tokenizer(texts, learner.context_length)
    return text_encoder.embed(ids).float().clone(), learner._tokenizer.eot_positions(ids)


def _randomize(*modules):
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.normal_(std=0.5)


def test_cocoop_prompts_per_image_equal_the_official_construction(data_root, tmp_path):
    t = _host_trainer("CoCoOp+ATPrompt", data_root, tmp_path)
    model, pl, atp = t.model, t.model.prompt_learner, t._models["ATPrompt"]
    _randomize(atp, pl)
    img = _batch(3)["img"]
    with torch.no_grad():
        f = F.normalize(model.image_encoder(img).float(), dim=-1)
        bias = pl.meta_net(f)  # official: added to the context only (ctx_shifted), not to the attribute blocks
        emb, eot = _official_embeddings(pl, model.text_encoder, (2, 3), 4)
        want = []
        for b in range(3):
            e = emb.clone()  # SOS, A1 (2), color, A2 (3), shape, ctx + pi_b (4), class, ., EOT
            e[:, 1:3], e[:, 4:7], e[:, 8:12] = atp.ctx_att1, atp.ctx_att2, pl.ctx + bias[b]
            text = F.normalize(model.text_encoder(e, eot, shared_prefix=0), dim=-1)
            want.append(model.logit_scale.exp() * f[b] @ text.t())
        want = torch.stack(want)
        torch.testing.assert_close(model(img), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.forward_loop(img), want, rtol=1e-4, atol=1e-4)
        model.chunk_size = 4  # chunks that split an image's K prompts: same prompts
        torch.testing.assert_close(model(img), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_att2, backbone", [(2, "test-vit-tiny"), (3, "test-vit-tiny"), (3, "test-siglip-tiny")])
def test_maple_deep_text_prompts_sit_behind_the_attribute_block(data_root, tmp_path, n_att2, backbone):
    t = _host_trainer("MaPLe+ATPrompt", data_root, tmp_path, extra=["TRAINER.ATPROMPT.N_ATT2", str(n_att2)],
                      backbone=backbone)
    model, pl, atp = t.model, t.model.prompt_learner, t._models["ATPrompt"]
    _randomize(atp, pl)
    emb, eot = _official_embeddings(pl, model.text_encoder, (2, n_att2), 2)  # SigLIP: padded to the full length
    s0 = pl.first_slot  # 1 after CLIP's SOS, 0 on SigLIP
    start = s0 + 2 + 1 + n_att2 + 1  # A1, color, A2, shape
    if n_att2 == 2:  # every N_ATTk equals N_CTX: the official clip/model_atp.py slot formula 1 + ATT_NUM * (N_CTX + 1)
        assert start == 1 + 2 * (2 + 1)
    with torch.no_grad():
        emb[:, s0:s0 + 2], emb[:, s0 + 3:s0 + 3 + n_att2] = atp.ctx_att1, atp.ctx_att2[:n_att2]
        emb[:, start:start + 2] = pl.ctx
        deep = list(pl.compound_prompts_text)
        assert len(deep) == 1
        want = model.text_encoder(emb, eot, deep, prompt_slice=slice(start, start + 2), shared_prefix=0)
        got = model.text_features()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        wrong = model.text_encoder(emb, eot, deep, shared_prefix=0)  # MaPLe's own slots 1..2 (inside A1)
        assert not torch.allclose(got, wrong, rtol=1e-4, atol=1e-4)
        # the image tower is MaPLe's: proj(ctx) and the projected deep prompts, no attribute tokens
        img = _batch(2)["img"]
        ctx_v, deep_v = pl.vision_prompts()
        torch.testing.assert_close(model.image_features(img), model.image_encoder(img, ctx_v, deep_v))


@pytest.mark.parametrize("host", ["CoCoOp", "MaPLe"])
def test_blocks_are_drawn_after_the_host_prompt_learner(data_root, tmp_path, host, monkeypatch):
    """Officially ctx_att1..3 are drawn last in the prompt learner (after CoCoOp's Meta-Net, MaPLe's
    projections and deep prompts), N(0, 0.01^2) each: the host's tensors are those of the host alone, and the
    blocks are the next three draws after the host's model."""
    cfg = make_cfg(data_root, trainer=host, folder="five", output_dir=str(tmp_path / "h"), opts=[*HOST_OPTS[host], *ATT2])
    cfg.freeze()
    set_random_seed(1)
    try:
        alone = build_trainer(cfg)
    finally:
        restore_stdout()
    cls = TRAINER_REGISTRY.get(f"{host}+ATPrompt")
    original = cls.build_custom_clip.__func__
    captured = {}

    def spy(klass, cfg_, classnames, clip_model):
        model = original(klass, cfg_, classnames, clip_model)
        captured["rng"] = torch.get_rng_state()
        return model

    monkeypatch.setattr(cls, "build_custom_clip", classmethod(spy))
    t = _host_trainer(f"{host}+ATPrompt", data_root, tmp_path / "c")
    for k, v in alone.model.prompt_learner.state_dict().items():
        assert torch.equal(t.model.prompt_learner.state_dict()[k], v), k
    d = alone.model.prompt_learner.ctx.shape[1]
    torch.set_rng_state(captured["rng"])
    for k, n in ((1, 2), (2, 3), (3, 4)):  # N_ATT1 2, N_ATT2 3, N_ATT3 the default 4
        want = torch.empty(n, d)
        torch.nn.init.normal_(want, std=0.01)
        assert torch.equal(getattr(t._models["ATPrompt"], f"ctx_att{k}").detach(), want), k


@pytest.mark.parametrize("host", ["CoCoOp", "MaPLe"])
def test_host_trainable_set_training_step_and_reload(data_root, tmp_path, host):
    t = _host_trainer(f"{host}+ATPrompt", data_root, tmp_path / "a", extra=["OPTIM.WARMUP_EPOCH", "0"])
    host_name = {"CoCoOp": "prompt_learner", "MaPLe": "MultiModalPromptLearner"}[host]
    assert t.get_model_names() == [host_name, "ATPrompt"]
    atp = t._models["ATPrompt"]
    trainable = sorted(n for n, p in t.model.named_parameters() if p.requires_grad)
    want = {"CoCoOp": ["prompt_learner.ctx", "prompt_learner.meta_net.linear1.bias", "prompt_learner.meta_net.linear1.weight",
                       "prompt_learner.meta_net.linear2.bias", "prompt_learner.meta_net.linear2.weight"],
            "MaPLe": ["prompt_learner.compound_prompt_projections.0.bias", "prompt_learner.compound_prompt_projections.0.weight",
                      "prompt_learner.compound_prompts_text.0", "prompt_learner.ctx", "prompt_learner.proj.bias",
                      "prompt_learner.proj.weight"]}[host]
    assert trainable == want
    assert sorted(n for n, p in atp.named_parameters() if p.requires_grad) == ["ctx_att1", "ctx_att2", "ctx_att3"]
    before = {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}
    before_atp = {n: p.detach().clone() for n, p in atp.named_parameters()}
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
    t.forward_backward({**_batch(), "domain": torch.zeros(4, dtype=torch.long)})
    moved = {n for n, p in t.model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])}
    assert moved == set(want)
    assert {n for n, p in atp.named_parameters() if not torch.equal(p.detach(), before_atp[n])} == {"ctx_att1", "ctx_att2"}

    t.save_model(0, str(tmp_path / "a"))
    saved = load_checkpoint(str(tmp_path / "a" / "ATPrompt" / "model.pth.tar-1"))["state_dict"]
    assert sorted(saved) == ["ctx_att1", "ctx_att2", "ctx_att3"]
    other = _host_trainer(f"{host}+ATPrompt", data_root, tmp_path / "b", folder="three")
    other.load_model(str(tmp_path / "a"), epoch=1)
    restore_stdout()
    for k, v in saved.items():
        assert torch.equal(other._models["ATPrompt"].state_dict()[k], v)
    assert torch.equal(other.model.prompt_learner.ctx, t.model.prompt_learner.ctx)
    other.set_model_mode("eval")
    img = _batch(2)["img"]
    with torch.no_grad():
        out = other.model_inference(img)
        assert out.shape == (2, 3)
        atp2 = other._models["ATPrompt"]
        atp2.ctx_att1.add_(3.0)  # the loaded blocks are used: moving them moves the logits
        assert not torch.allclose(other.model_inference(img), out)


def test_train_py_maple_atprompt_on_the_toy_world(tmp_path):
    import train as train_mod
    from tests.toy_methods import toy_root  # built once per process, shared with the other toy tests

    root = toy_root()
    cfgs = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs")
    common = ["--root", root, "--seed", "1", "--trainer", "MaPLe+ATPrompt",
              "--dataset-config-file", osp.join(cfgs, "datasets", "toy_shapes.yaml"),
              "--config-file", osp.join(cfgs, "trainers", "ATPrompt", "toy_maple.yaml"),
              "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0",
              "DATALOADER.TRAIN_X.BATCH_SIZE", "4"]
    base, new = str(tmp_path / "base"), str(tmp_path / "new")
    try:
        assert train_mod.cli(["--output-dir", base, *common, "DATASET.SUBSAMPLE_CLASSES", "base"]) == 0
        assert train_mod.cli(["--output-dir", new, "--eval-only", "--model-dir", base, "--load-epoch", "1",
                              *common, "DATASET.SUBSAMPLE_CLASSES", "new"]) == 0
    finally:
        restore_stdout()
    for out in (base, new):
        with open(osp.join(out, "results.json")) as f:
            rec = json.load(f)
        assert rec["trainer"] == "MaPLe+ATPrompt" and 0.0 <= rec["metrics"]["accuracy"] <= 100.0
    assert {"MultiModalPromptLearner", "ATPrompt"} <= set(os.listdir(base))
    assert "model.pth.tar-1" in os.listdir(osp.join(base, "ATPrompt"))
    with open(osp.join(base, "log.txt")) as f:
        assert "ATPrompt: attributes ['color', 'shape'] (TRAINER.ATPROMPT)" in f.read()
