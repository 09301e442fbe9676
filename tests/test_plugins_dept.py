"""Plug-ins (vlprompt/engine/plugins.py) and DePT as the first one (trainers/plugins/dept.py).

* composition: ``Host+Plugin`` spellings resolve in the trainer registry; the composed declarations;
  canonical order, unknown names and unsupported hosts are refused with one line;
* DePT's loss terms and test-time fusion against a hand computation (CoOp host);
* every supported host (parametrised over :func:`supported_pairs`): build, exact trainable set (the host's +
  DePT's), one step moves both, the checkpoint keeps DePT's state in its own folder, reload onto another
  class list (base -> novel: similarity only), and the host alone loads the composed run's checkpoint;
* kill-and-resume bit-equal for one host of each kind (CoOp, MaPLe, PromptSRC with its aggregation hook,
  CLIP-Adapter on stored features) and ``train.py --trainer CoOp+DePT`` on the toy world end to end.
"""
import json
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import train as train_mod
from tests.helpers import crash_copy_and_resume, make_cfg, make_image_folder
from vlprompt.engine import LAST_CHECKPOINT, TRAINER_REGISTRY, build_trainer
from vlprompt.engine.methods import load_plugins, method_spec
from vlprompt.engine.plugins import PluginError, composed_declarations, forget_composed, supported_pairs
from vlprompt.utils import load_checkpoint, restore_stdout, set_random_seed
from vlprompt.utils.errors import UnknownNameError

load_plugins()
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAIRS = supported_pairs(TRAINER_REGISTRY, "DePT")
OFFICIAL_HOSTS = {"CoOp", "CoCoOp", "KgCoOp", "MaPLe"}


@pytest.fixture(autouse=True)
def _forget_composed():
    """Composed names register on first use: leave the registry as the other test files expect it."""
    yield
    forget_composed(TRAINER_REGISTRY)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    make_image_folder(str(root / "three"), n_classes=3, n_per_class=4, seed=3, class_prefix="other")
    return root


def _trainer(name, data_root, out, folder="five", extra=()):
    host = name.split("+")[0]
    node = method_spec(host).cfg_node
    cfg = make_cfg(data_root, trainer=name, folder=folder, output_dir=str(out),
                   opts=[f"TRAINER.{node}.PREC", "fp32", *extra])
    cfg.freeze()
    set_random_seed(1)
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def _batch(n=4, k=5):
    g = torch.Generator().manual_seed(0)
    return {"img": torch.randn(n, 3, 224, 224, generator=g), "label": torch.arange(n) % k,
            "domain": torch.zeros(n, dtype=torch.long), "impath": [""] * n, "index": torch.arange(n)}


def _perturb(module, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------------
# composition
# ------------------------------------------------------------------------------------------------


def test_supported_hosts_cover_the_official_ones():
    hosts = {h for h, _ in PAIRS}
    assert OFFICIAL_HOSTS | {"PromptSRC", "VPT", "CLIP_Adapter"} <= hosts


def test_spelling_resolves_to_a_composed_class_with_derived_declarations():
    assert "CoOp+DePT" not in TRAINER_REGISTRY
    cls = TRAINER_REGISTRY.get("CoOp+DePT")
    host = TRAINER_REGISTRY.get("CoOp")
    assert cls.__name__ == "CoOp+DePT" and issubclass(cls, host) and "CoOp+DePT" in TRAINER_REGISTRY
    assert TRAINER_REGISTRY.get("CoOp+DePT") is cls  # composed once
    spec, host_card = method_spec("CoOp+DePT"), method_spec("CoOp")
    assert spec.order == host_card.order + 1 and spec.cfg_node == "COOP" and spec.model_name == "prompt_learner"
    assert spec.config_folder == "DePT" and spec.backbones == host_card.backbones
    assert spec.all_recipes() == {p: {"config": "DePT/vit_b16_ep10_bs4_lr35"}
                                  for p in ("base2new", "cross_dataset", "domain_generalization")}
    for rel in {r["config"] for r in spec.all_recipes().values()}:
        assert osp.isfile(osp.join(ROOT, "configs", "trainers", rel + ".yaml")), rel
    # a host without official DePT configs keeps its own recipes, in its own folder
    src, src_host = method_spec("PromptSRC+DePT"), method_spec("PromptSRC")
    assert src.config_folder == "PromptSRC" and src.all_recipes() == src_host.all_recipes()
    assert src.recipe("base2new")["config"] == "vit_b16_c2_ep20_batch4_4+4ctx"
    assert src.recipe("few_shot")["per_dataset"]["dtd"] == "vit_b16_c2_ep50_batch4_4+4ctx_few_shot_gpa45"
    # the one derivation function is what the class carries
    from trainers.plugins.dept import DePT

    assert composed_declarations("CoOp", host, [DePT]) == {"CARD": cls.__dict__["CARD"]}


@pytest.mark.parametrize("name, pattern", [
    ("ZeroshotCLIP+DePT", "DePT cannot be added to ZeroshotCLIP: zero-shot CLIP trains nothing"),
    ("ProGrad+DePT", "DePT cannot be added to ProGrad: ProGrad's step projects"),
    ("LinearProbeCLIP+DePT", "DePT cannot be added to LinearProbeCLIP: a linear probe"),
    ("CoOp+DePT+DePT", "names a plug-in twice"),
    ("CoOp+", "write a host and its plug-ins as Host+Plugin"),
])
def test_refusals_are_one_line(name, pattern):
    with pytest.raises(PluginError) as e:
        TRAINER_REGISTRY.get(name)
    assert pattern in str(e.value) and "\n" not in str(e.value)
    assert name not in TRAINER_REGISTRY


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(UnknownNameError, match=r"Unknown plug-in 'DePTX' in 'CoOp\+DePTX'. Registered plug-ins: "):
        TRAINER_REGISTRY.get("CoOp+DePTX")
    with pytest.raises(UnknownNameError, match=r"Unknown host trainer 'CoOpX'"):
        TRAINER_REGISTRY.get("CoOpX+DePT")


def test_non_canonical_order_is_refused_with_the_canonical_spelling():
    from vlprompt.engine.plugins import PLUGIN_REGISTRY, Plugin

    class Later(Plugin):
        ORDER = 50
        HOSTS = {"CoOp+DePT": None}

    PLUGIN_REGISTRY.register(Later)
    try:
        with pytest.raises(PluginError, match=r"canonical order .*use 'CoOp\+DePT\+Later'"):
            TRAINER_REGISTRY.get("CoOp+Later+DePT")
        with pytest.raises(PluginError, match="Later declares no support for CoOp "):
            TRAINER_REGISTRY.get("CoOp+Later")
        assert TRAINER_REGISTRY.get("CoOp+DePT+Later").PLUGINS[1] is Later
    finally:
        del PLUGIN_REGISTRY._obj_map["Later"]


def test_cli_refusal_is_one_error_line(data_root, tmp_path, capsys):
    yaml = tmp_path / "five.yaml"
    yaml.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    try:
        code = train_mod.cli(["--root", str(data_root), "--trainer", "TipAdapter+DePT", "--dataset-config-file",
                              str(yaml), "--output-dir", str(tmp_path / "out")])
    finally:
        restore_stdout()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("Error: DePT cannot be added to TipAdapter: Tip-Adapter is training-free")
    assert not osp.exists(tmp_path / "out")


# ------------------------------------------------------------------------------------------------
# DePT against a hand computation (CoOp host)
# ------------------------------------------------------------------------------------------------


def test_dept_loss_terms_and_fusion_by_hand(data_root, tmp_path):
    t = _trainer("CoOp+DePT", data_root, tmp_path)
    head = t._models["DePT"]
    _perturb(head)
    b = _batch()
    img, y = b["img"], b["label"]
    model = t.model
    t.set_model_mode("train")
    terms, logits = t.loss_terms(img, y)
    with torch.no_grad():
        f = model.image_features(img).float()
        txt = model.text_features().float()
        sim = model.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(txt, dim=-1).t()
        si, bi = head.film_lp_img.scale, head.film_lp_img.bias
        st, bt = head.film_lp_text.scale, head.film_lp_text.bias
        W, c = head.linear_probe_proj.weight, head.linear_probe_proj.bias
        rows = torch.cat([(txt * st + bt)[y], f * si + bi])  # the labels' text features, then the images
        lp = rows @ W.t() + c
        ce, ce_lp = F.cross_entropy(sim, y), F.cross_entropy(lp, torch.cat([y, y]))
    assert set(terms) == {"ce", "dept"}
    torch.testing.assert_close(logits, sim, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["ce"], (1 - 0.7) * ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["dept"], 0.7 * ce_lp, rtol=1e-5, atol=1e-6)

    t.set_model_mode("eval")
    with torch.no_grad():
        fused = t.model_inference(img)
        head_logits = (f * si + bi) @ W.t() + c
    torch.testing.assert_close(fused, 0.3 * sim + 0.7 * head_logits, rtol=1e-5, atol=1e-4)

    # a subset of the head's classes, in another order (ImageNet-A/-R style): the head's rows of those classes
    names = list(t.dm.dataset.classnames)
    sub = [names[3], names[0], names[2]]
    t.set_classnames(sub)
    with torch.no_grad():
        txt3 = model.text_features().float()
        sim3 = model.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(txt3, dim=-1).t()
        out3 = t.model_inference(img)
    torch.testing.assert_close(out3, 0.3 * sim3 + 0.7 * head_logits[:, [3, 0, 2]], rtol=1e-5, atol=1e-4)

    # classes the head never saw (novel classes): the host's similarity logits alone
    t.set_classnames(sub[:2] + ["a class it never saw"])
    with torch.no_grad():
        out_novel = t.model_inference(img)
        sim_novel = model.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(model.text_features(), dim=-1).t()
    torch.testing.assert_close(out_novel, sim_novel, rtol=1e-5, atol=1e-5)


def test_fusion_off_gives_the_head_alone_and_similarity_type(data_root, tmp_path):
    t = _trainer("CoOp+DePT", data_root, tmp_path, extra=["TRAINER.DEPT.TEST_TIME_FUSION", "False"])
    head = t._models["DePT"]
    img = _batch()["img"]
    t.set_model_mode("eval")
    with torch.no_grad():
        f = t.model.image_features(img).float()
        out = t.model_inference(img)
    torch.testing.assert_close(out, head.film_lp_img(f) @ head.linear_probe_proj.weight.t()
                               + head.linear_probe_proj.bias, rtol=1e-5, atol=1e-5)
    s = _trainer("CoOp+DePT", data_root, tmp_path / "s", extra=["TRAINER.DEPT.TYPE", "similarity"])
    assert s._models["DePT"].linear_probe_proj is None
    assert sorted(n for n, _ in s._models["DePT"].named_parameters()) == [
        "film_lp_img.bias", "film_lp_img.scale", "film_lp_text.bias", "film_lp_text.scale"]
    s.set_model_mode("train")
    b = _batch()
    terms, logits = s.loss_terms(b["img"], b["label"])
    # FiLM at its identity init: the cosine head equals the similarity logits
    torch.testing.assert_close(terms["dept"], 0.7 * F.cross_entropy(logits, b["label"]), rtol=1e-5, atol=1e-6)


def test_dept_learning_rates_and_kgcoop_term(data_root, tmp_path):
    t = _trainer("CoOp+DePT", data_root, tmp_path, extra=["OPTIM.LR", "0.0035", "OPTIM.WARMUP_EPOCH", "0"])
    assert t._optimizers["prompt_learner"][0].param_groups[0]["lr"] == pytest.approx(0.0035)
    assert t._optimizers["DePT"][0].param_groups[0]["lr"] == pytest.approx(0.0035 * 6.5)
    assert t._optimizers["DePT"][2] == "DePT"
    # KgCoOp's term is kept unweighted next to DePT's (official elp_kgcoop.py)
    k = _trainer("KgCoOp+DePT", data_root, tmp_path / "k")
    host = _trainer("KgCoOp", data_root, tmp_path / "h")
    b = _batch()
    tk, _ = k.loss_terms(b["img"], b["label"])
    th, _ = host.loss_terms(b["img"], b["label"])
    assert set(tk) == {"ce", "kg", "dept"}
    torch.testing.assert_close(tk["kg"], th["kg"])
    torch.testing.assert_close(tk["ce"], (1 - 0.7) * th["ce"])


# ------------------------------------------------------------------------------------------------
# every supported host
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [h for h, _ in PAIRS])
def test_dept_on_every_supported_host(host, data_root, tmp_path):
    name = f"{host}+DePT"
    # no warm-up (its 1e-5 leaves a scale of 1.0 unchanged in fp32 when the features are small, as VPT's
    # normalised fixed text features are) and no weight decay (it moves tensors without a gradient)
    t = _trainer(name, data_root, tmp_path / "a", extra=["OPTIM.WEIGHT_DECAY", "0.0", "OPTIM.WARMUP_EPOCH", "0"])
    model_name = method_spec(host).model_name
    assert t.get_model_names() == [model_name, "DePT"]
    host_learnable = {id(p) for p in t._models[model_name].parameters()}
    for n, p in t.model.named_parameters():
        assert p.requires_grad == (id(p) in host_learnable), n
    dept = t._models["DePT"]
    expected = {"film_lp_img.scale", "film_lp_img.bias", "film_lp_text.scale", "film_lp_text.bias",
                "linear_probe_proj.weight", "linear_probe_proj.bias"}
    assert {n for n, p in dept.named_parameters() if p.requires_grad} == expected
    d = t.model.dims["d_embed"]
    assert dept.linear_probe_proj.weight.shape == (5, d)
    n_host = sum(p.numel() for p in t._models[model_name].parameters() if p.requires_grad)
    assert t.num_trainable_params == n_host + 4 * d + 5 * d + 5

    # one step moves the host's learnable tensors and every DePT tensor
    host_before = {n: p.detach().clone() for n, p in t._models[model_name].named_parameters()}
    dept_before = {n: p.detach().clone() for n, p in dept.named_parameters()}
    t.set_model_mode("train")
    t.epoch, t.batch_idx, t.num_batches = 0, 0, 2
    summary = t.forward_backward(_batch())
    assert {"loss", "ce", "dept"} <= set(summary)
    assert any(not torch.equal(p.detach(), host_before[n]) for n, p in t._models[model_name].named_parameters())
    assert all(not torch.equal(p.detach(), dept_before[n]) for n, p in dept.named_parameters())

    # checkpoint: DePT's state in its own folder, the host's folder without it
    t.save_model(0, str(tmp_path / "a"))
    saved = load_checkpoint(str(tmp_path / "a" / "DePT" / "model.pth.tar-1"))["state_dict"]
    assert set(saved) == expected | {"class_keys"}
    host_saved = load_checkpoint(str(tmp_path / "a" / model_name / "model.pth.tar-1"))["state_dict"]
    assert not any("film" in k or "linear_probe" in k for k in host_saved)

    # reload onto another class list (base -> novel): the head keeps its 5 trained rows, similarity only
    novel = _trainer(name, data_root, tmp_path / "b", folder="three")
    novel.load_model(str(tmp_path / "a"), epoch=1)
    restore_stdout()
    nd = novel._models["DePT"]
    assert nd.linear_probe_proj.weight.shape == (5, d) and nd.rows is None
    for k, v in saved.items():
        assert torch.equal(nd.state_dict()[k], v), k
    # the host alone loads the composed run's checkpoint (its folder only) and gives the same logits
    alone = _trainer(host, data_root, tmp_path / "c", folder="three")
    alone.load_model(str(tmp_path / "a"), epoch=1)
    restore_stdout()
    img = _batch(2)["img"]
    novel.set_model_mode("eval")
    alone.set_model_mode("eval")
    with torch.no_grad():
        a, b = novel.model_inference(img), alone.model_inference(img)
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b)


# one host per kind of host: text prompts (CoOp), coupled deep prompts (MaPLe), a method hook with state
# (PromptSRC's prompt aggregation) beside DePT's state, and the stored-feature batch source (CLIP-Adapter)
@pytest.mark.parametrize("host", ["CoOp", "MaPLe", "PromptSRC", "CLIP_Adapter"])
def test_kill_and_resume_equals_uninterrupted(host, data_root, tmp_path, monkeypatch):
    def run(argv):
        try:
            return train_mod.cli(argv)
        finally:
            restore_stdout()

    name, card = f"{host}+DePT", method_spec(host)
    yaml = tmp_path / "five.yaml"
    yaml.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    common = ["--root", str(data_root), "--seed", "1", "--trainer", name, "--dataset-config-file", str(yaml),
              "MODEL.BACKBONE.NAME", "test-vit-tiny", "USE_CUDA", "False", "DATALOADER.NUM_WORKERS", "0",
              "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.05",
              "OPTIM.WARMUP_EPOCH", "0", "TEST.NO_TEST", "True", "INPUT.SIZE", "(224, 224)",
              f"TRAINER.{card.cfg_node}.PREC", "fp32"]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    crash_copy_and_resume(run, common, full, killed, TRAINER_REGISTRY.get(name), monkeypatch)
    assert not osp.exists(osp.join(killed, "DePT", LAST_CHECKPOINT))  # the resumed run finished
    for folder in (card.model_name, "DePT"):
        a = load_checkpoint(osp.join(full, folder, "model.pth.tar-2"))
        b = load_checkpoint(osp.join(killed, folder, "model.pth.tar-2"))
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), (folder, k)
        assert str(a.get("optimizer")) == str(b.get("optimizer"))
        assert str(a.get("hooks")) == str(b.get("hooks"))


# ------------------------------------------------------------------------------------------------
# train.py on the toy world
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_root():
    from tests.helpers import shared_toy_root

    return shared_toy_root("ToyShapes")


def test_train_py_coop_dept_on_the_toy_world(toy_root, tmp_path):
    root = toy_root
    common = ["--root", root, "--seed", "1", "--trainer", "CoOp+DePT",
              "--dataset-config-file", osp.join(ROOT, "configs", "datasets", "toy_shapes.yaml"),
              "--config-file", osp.join(ROOT, "configs", "trainers", "DePT", "toy.yaml"),
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
        assert rec["trainer"] == "CoOp+DePT" and 0.0 <= rec["metrics"]["accuracy"] <= 100.0
    assert {"DePT", "prompt_learner", "results.json", "log.txt"} <= set(os.listdir(base))
    assert "model.pth.tar-1" in os.listdir(osp.join(base, "DePT"))
    with open(osp.join(base, "log.txt")) as f:
        log = f.read()
    assert "DePT: the head was trained on the current classes: fused logits" in log
    with open(osp.join(new, "log.txt")) as f:
        assert "DePT: the current classes are not the head's: similarity logits only" in f.read()


def test_train_py_coop_dept_atprompt_on_the_toy_world(toy_root, tmp_path):
    """The composition of two plug-ins from the command line (ATPrompt: tests/test_atprompt.py)."""
    common = ["--root", toy_root, "--seed", "1", "--trainer", "CoOp+DePT+ATPrompt",
              "--dataset-config-file", osp.join(ROOT, "configs", "datasets", "toy_shapes.yaml"),
              "--config-file", osp.join(ROOT, "configs", "trainers", "ATPrompt", "toy.yaml"),
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
            assert json.load(f)["trainer"] == "CoOp+DePT+ATPrompt"
    with open(osp.join(base, "log.txt")) as f:
        log = f.read()
    assert "ATPrompt: attributes ['color', 'shape'] (TRAINER.ATPROMPT)" in log and " dept " in log
    assert {"prompt_learner", "ATPrompt", "DePT"} <= set(os.listdir(base))


def test_result_tables_put_host_plus_plugin_rows_below_their_host_with_their_recipes():
    from vlprompt.results.methods import load_methods

    table = load_methods()
    names = ["PromptSRC+DePT", "MaPLe", "CoOp+DePT+ATPrompt", "CoOp", "CoOp+DePT", "PromptSRC", "Nope+DePT"]
    ranked = sorted(names, key=table.rank)
    assert ranked == ["CoOp", "CoOp+DePT", "CoOp+DePT+ATPrompt", "MaPLe", "PromptSRC", "PromptSRC+DePT",
                      "Nope+DePT"]
    assert table.recipe("CoOp+DePT", "base2new") == {"config": "DePT/vit_b16_ep10_bs4_lr35"}
    assert table.recipe("PromptSRC+DePT", "few_shot") == method_spec("PromptSRC").recipe("few_shot")
