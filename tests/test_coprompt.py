"""CoPrompt (trainers/coprompt.py) on the tiny random backbone: the loss terms against a hand computation from
the frozen CLIP, which tensors get gradients, the random description index, the second view going to the
frozen tower only, the K-view data pipeline, the official per-dataset table and its switch, the shipped
configs, official checkpoints and the errors a user can hit. The generic checks (build, one step, reload on
another class list, kill-and-resume) are the contract suite's (tests/test_contract.py -k CoPrompt)."""
import json
import os.path as osp
import random

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.helpers import make_cfg, make_image_folder, write_user_descriptions
from vlprompt.clip.tokenizer import tokenize
from vlprompt.config import ConfigError
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins, method_card, repo_root
from vlprompt.errors import UserError
from vlprompt.utils import restore_stdout

load_plugins()
from trainers import coprompt as cp  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("coprompt")
    names = make_image_folder(str(r / "four"), n_classes=4, n_per_class=4)
    write_user_descriptions(str(r), "four", names, per_class=3)
    make_image_folder(str(r / "nodesc"), n_classes=3, n_per_class=4, seed=2)
    return r


def _trainer(root, out, folder="four", opts=()):
    cfg = make_cfg(root, trainer="CoPrompt", folder=folder, output_dir=str(out),
                   opts=["TRAINER.COPROMPT.PREC", "fp32", "TRAINER.COPROMPT.W", "2.5", *opts])
    cfg.freeze()
    random.seed(0)
    torch.manual_seed(0)
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


@pytest.fixture(scope="module")
def trainer(root, tmp_path_factory):
    return _trainer(root, tmp_path_factory.mktemp("out"))


def _views(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 224, 224, generator=g) for _ in range(2)]


def _clip(trainer):
    return trainer.model._clip_model


def test_loss_terms_equal_the_hand_computation_from_the_frozen_clip(trainer, root):
    model, clip = trainer.model, _clip(trainer)
    v1, v2 = _views()
    label = torch.tensor([0, 1, 3])
    trainer.set_model_mode("train")
    random.seed(7)
    terms, logits = trainer.loss_terms([v1, v2], label)
    k = random.Random(7).randint(0, 2)  # 3 descriptions per class: one index for every class
    assert trainer.last_consistency["index"] == k
    with torch.no_grad():
        learner = model.prompt_learner
        raw_t = cp.DeepPromptedCLIP.text_features(model)
        raw_i = cp.DeepPromptedCLIP.image_features(model, v1)
        a_t, a_i = learner.adapter_text.fc, learner.adapter_image.fc
        t = 0.2 * F.relu(F.relu(raw_t @ a_t[0].weight.t()) @ a_t[2].weight.t()) + 0.8 * raw_t
        i = 0.1 * F.relu(F.relu(raw_i @ a_i[0].weight.t()) @ a_i[2].weight.t()) + 0.9 * raw_i
        t_n, i_n = t / t.norm(dim=-1, keepdim=True), i / i.norm(dim=-1, keepdim=True)
        table = json.load(open(osp.join(root, "descriptions", "user", "four.json")))
        sentences = [table[c.replace("_", " ")][k] for c in learner.classnames]
        t_hat = clip.encode_text(tokenize(sentences, model=clip))
        t_hat = t_hat / t_hat.norm(dim=-1, keepdim=True)
        i_hat = clip.encode_image(v2)
        i_hat = i_hat / i_hat.norm(dim=-1, keepdim=True)
        want_logits = clip.logit_scale.exp() * i_n @ t_n.t()
        l_text = 1 - torch.mean(torch.sum(t_n * t_hat, dim=1) / (t_n.norm(dim=1) * t_hat.norm(dim=1)))
        l_image = 1 - torch.mean(torch.sum(i_n * i_hat, dim=1) / (i_n.norm(dim=1) * i_hat.norm(dim=1)))
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(want_logits, label), rtol=1e-5, atol=1e-6)
    assert trainer.last_consistency["text"] == pytest.approx(float(l_text), abs=1e-5)
    assert trainer.last_consistency["image"] == pytest.approx(float(l_image), abs=1e-5)
    torch.testing.assert_close(terms["distill"], 2.5 * (l_text + l_image), rtol=1e-5, atol=1e-6)
    assert float(l_text) > 1e-3 and float(l_image) > 1e-4  # the terms are not trivially zero here


def test_mse_variant_and_cosine_formula():
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    c, d = torch.randn(3, 8), torch.randn(3, 8)
    lt, li = cp.consistency_terms(a, b, c, d, "mse")
    assert float(lt) == pytest.approx(float(((a - b) ** 2).mean())) and float(li) == pytest.approx(float(((c - d) ** 2).mean()))
    lt, _ = cp.consistency_terms(a, a * 3.0, c, d, "cosine")
    assert float(lt) == pytest.approx(0.0, abs=1e-6)


def test_every_learned_tensor_gets_a_gradient_and_the_second_view_only_moves_the_image_term(trainer):
    t = trainer
    t.set_model_mode("train")
    t.model.zero_grad(set_to_none=True)
    v1, v2 = _views()
    label = torch.tensor([0, 1, 2])
    random.seed(3)
    terms, _ = t.loss_terms([v1, v2], label)
    sum(terms.values()).backward()
    learner = t._models["MultiModalPromptLearner"]
    no_grad = [n for n, p in learner.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    assert {n.split(".")[0] for n, _ in learner.named_parameters()} == {
        "ctx", "proj", "compound_prompts_text", "compound_prompt_projections", "adapter_image", "adapter_text"}
    assert all(p.grad is None for n, p in t.model.named_parameters() if not p.requires_grad)
    first = dict(t.last_consistency)
    with torch.no_grad():
        random.seed(3)
        t.loss_terms([v1, torch.flip(v2, dims=[3])], label)
    assert t.last_consistency["text"] == first["text"] and t.last_consistency["image"] != first["image"]
    t.model.zero_grad(set_to_none=True)


def test_the_training_loader_gives_two_independent_views_and_the_test_loader_one(trainer):
    batch = next(iter(trainer.train_loader_x))
    assert isinstance(batch["img"], list) and len(batch["img"]) == 2
    assert batch["img"][0].shape == batch["img"][1].shape and not torch.equal(batch["img"][0], batch["img"][1])
    assert torch.is_tensor(next(iter(trainer.test_loader))["img"])
    image, label = trainer.parse_batch_train(batch)
    assert isinstance(image, list) and len(image) == 2 and label.shape[0] == image[0].shape[0]


def test_k_views_is_a_general_data_option(root):
    from vlprompt.data import DataManager

    cfg = make_cfg(root, trainer="CoOp", folder="four", opts=["DATALOADER.K_TRANSFORMS", "3"])
    dm = DataManager(cfg, train_views=2)  # at least what the trainer reads, K_TRANSFORMS when larger
    assert len(next(iter(dm.train_loader_x))["img"]) == 3
    cfg = make_cfg(root, trainer="CoOp", folder="four")
    assert len(next(iter(DataManager(cfg, train_views=2).train_loader_x))["img"]) == 2
    assert torch.is_tensor(next(iter(DataManager(cfg).train_loader_x))["img"])
    assert method_card("CoPrompt").views == 2 and method_card("CoOp").views == 1


def test_descriptions_are_read_at_the_first_training_step_and_missing_ones_name_the_file(root, tmp_path):
    t = _trainer(root, tmp_path, folder="nodesc")  # builds and evaluates without any description file
    t.set_model_mode("eval")
    with torch.no_grad():
        assert t.model_inference(_views()[0]).shape == (3, 3)
    t.set_model_mode("train")
    with pytest.raises(UserError) as e:
        t.loss_terms(_views(), torch.tensor([0, 1, 2]))
    assert osp.join("descriptions", "user", "nodesc.json") in str(e.value) and "\n" not in str(e.value)


def test_unequal_description_counts_are_refused(trainer):
    model = trainer.model
    saved = model.describe
    model.describe = lambda names: [["a", "b"]] + [["a", "b", "c"]] * (len(names) - 1)
    model.desc_features = None
    try:
        with pytest.raises(UserError, match="same number of descriptions"):
            model.description_features()
    finally:
        model.describe, model.desc_features = saved, None


def test_official_table_switch(root):
    cfg = make_cfg(root, trainer="CoPrompt", folder="four", opts=["TRAINER.COPROMPT.N_CTX", "3"])
    cfg.DATASET.NAME = "Food101"
    cp.apply_official_table(cfg)  # the official order: the table wins over the command line
    m = cfg.TRAINER.COPROMPT
    assert (m.N_CTX, m.PROMPT_DEPTH, m.W, cfg.OPTIM.MAX_EPOCH) == (4, 9, 0.5, 5)
    cfg.DATASET.NAME = "ImageNetV2"
    with pytest.raises(ConfigError, match="no row for ImageNetV2"):
        cp.apply_official_table(cfg)
    # the default: the config files and command line decide (the table ships as per-dataset configs)
    assert method_card("CoPrompt").recipe("base2new")["per_dataset"]["food101"] == "coprompt_food101"


def test_shipped_configs_carry_the_official_values():
    folder = osp.join(repo_root(), "configs", "trainers", "CoPrompt")
    base = yaml.safe_load(open(osp.join(folder, "coprompt.yaml")))
    assert base["DATALOADER"]["K_TRANSFORMS"] == 2 and base["INPUT"]["TRANSFORMS"] == ["randaugment", "normalize"]
    assert base["OPTIM"]["LR"] == 0.0035 and base["OPTIM"]["MAX_EPOCH"] == 8 and base["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"] == 4
    assert base["TRAINER"]["COPROMPT"] == {"N_CTX": 2, "CTX_INIT": "a photo of a", "PREC": "fp16", "PROMPT_DEPTH": 9,
                                          "W": 1.0, "DISTILL": "cosine"}
    for name, row in cp.OFFICIAL_TABLE.items():
        c = yaml.safe_load(open(osp.join(folder, f"coprompt_{cp._YAML[name]}.yaml")))
        assert {k: c["TRAINER"]["COPROMPT"][k] for k in ("N_CTX", "PROMPT_DEPTH", "W")} == {
            k: row[k] for k in ("N_CTX", "PROMPT_DEPTH", "W")}, name
        assert c["OPTIM"]["MAX_EPOCH"] == row.get("MAX_EPOCH", 8), name
        assert {k: v for k, v in c.items() if k != "TRAINER" and k != "OPTIM"} == {
            k: v for k, v in base.items() if k != "TRAINER" and k != "OPTIM"}, name
    for p in ("base2new", "few_shot", "cross_dataset", "domain_generalization"):
        r = method_card("CoPrompt").recipe(p)
        for cfg_name in [r["config"], *r.get("per_dataset", {}).values()]:
            assert osp.isfile(osp.join(folder, f"{cfg_name}.yaml")), (p, cfg_name)


def test_official_checkpoint_keys_load(trainer, tmp_path):
    learner = trainer._models["MultiModalPromptLearner"]
    official = {("prompt_learner." + k if not k.startswith("adapter_") else k): v.clone() + 1.0
                for k, v in learner.state_dict().items()}
    official["image_encoder.conv1.weight"] = torch.zeros(1)  # the official file holds the frozen CLIP too
    official["prompt_learner.token_prefix"] = torch.zeros(1)
    converted = trainer.convert_legacy_state_dict(official)
    assert set(converted) == set(learner.state_dict()) | {"token_prefix"}
    assert torch.equal(converted["adapter_text.fc.0.weight"], learner.adapter_text.fc[0].weight + 1.0)


def test_published_rows_match_the_trainer():
    with open(osp.join(repo_root(), "vlprompt", "results", "published.json")) as f:
        pub = json.load(f)
    for m in ("CoPrompt (ICLR24)", "CoPrompt (re-run in the SkipTuning paper)"):
        assert pub["methods"][m]["match"] == [{"trainer": "CoPrompt"}]
    assert pub["base2new"]["per_dataset"]["CoPrompt (ICLR24)"]["eurosat"] == [94.6, 78.57, 85.84]
