"""CLIP-LoRA (trainers/clip_lora.py) and the shared LoRA block (vlprompt/clip/lora.py).

What is specific to the method: where the adapters go, the alpha/sqrt(r) scaling, dropout on the LoRA
branch only, merged evaluation arithmetic without writing the frozen weights, training vs evaluation
logits, the 500 x shots iteration budget with a per-iteration cosine, official checkpoint formats,
Build / step / checkpoint / resume are covered by tests/test_contract.py and the toy-world base-to-novel
run by tests/test_toy.py (every registered trainer). The 16-shot toy comparison with zero-shot CLIP
takes minutes on 2 CPU cores (LoRA back-propagates through both towers), so it is measured and
reported in docs/METHODS.md instead of run in the suite.
"""
import copy
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from tests.helpers import make_cfg, make_image_folder
from vlprompt.clip import ArgError, build_clip_model
from vlprompt.clip.lora import (LoRAMultiheadAttention, apply_lora, lora_block_indices, official_lora_keys)
from vlprompt.config import ConfigError
from vlprompt.engine import build_trainer
from vlprompt.engine.methods import load_plugins
from vlprompt.utils import load_checkpoint, restore_stdout

load_plugins()
from trainers.clip_lora import CLIPLoRA, official_template  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(ROOT, "configs", "trainers", "CLIPLoRA")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_clip_model("test-vit-tiny", random_init=True).eval()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    make_image_folder(str(root / "five"), n_classes=5, n_per_class=4)
    make_image_folder(str(root / "three"), n_classes=3, n_per_class=4, seed=3, class_prefix="other")
    return root


def _randomise_B(lora, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if n.endswith("w_lora_B"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _tokens(k=3):
    tok = torch.randint(1, 400, (k, 77), generator=torch.Generator().manual_seed(2))
    tok[:, 9] = 49407
    tok[:, 10:] = 0
    return tok


# ------------------------------------------------------------------------------------------------
# the block
# ------------------------------------------------------------------------------------------------

def test_official_positions_and_bad_arguments():
    assert lora_block_indices("all", 12) == list(range(12))
    assert lora_block_indices("bottom", 12) == [0, 1, 2, 3]
    assert lora_block_indices("mid", 12) == [4, 5, 6, 7]
    assert lora_block_indices("up", 12) == [8, 9, 10, 11]
    assert lora_block_indices("half-up", 12) == [6, 7, 8, 9, 10, 11]
    assert lora_block_indices("half-bottom", 12) == [0, 1, 2, 3, 4, 5]
    assert lora_block_indices("top3", 12) == [9, 10, 11]
    assert lora_block_indices("half-up", 24) == list(range(12, 24))  # official ViT-L/14 vision list
    with pytest.raises(ArgError, match="position"):
        lora_block_indices("middle", 12)
    with pytest.raises(ArgError, match="needs more than the 6 blocks"):
        lora_block_indices("mid", 6)


def test_placement_parameter_count_and_zero_init_keep_clip_unchanged(tiny):
    model = copy.deepcopy(tiny)
    lora = apply_lora(model, r=2, alpha=1, dropout=0.25)
    d_t, d_v = model.transformer.width, model.visual.transformer.width
    n_t, n_v = len(model.transformer.resblocks), len(model.visual.transformer.resblocks)
    assert sum(p.numel() for p in lora.parameters()) == 3 * 2 * 2 * (n_t * d_t + n_v * d_v)
    assert all(isinstance(b.attn, LoRAMultiheadAttention) for b in model.transformer.resblocks)
    assert all(isinstance(b.attn, LoRAMultiheadAttention) for b in model.visual.transformer.resblocks)
    assert lora.layout()["text"][0] == ["q_proj", "k_proj", "v_proj"]
    sd = lora.state_dict()
    assert tuple(sd["text.0.q_proj.w_lora_A"].shape) == (2, d_t) and tuple(sd["vision.3.v_proj.w_lora_B"].shape) == (d_v, 2)
    assert all(torch.count_nonzero(v) == 0 for k, v in sd.items() if k.endswith("w_lora_B"))
    bound = 1 / math.sqrt(d_t)  # kaiming_uniform_(a=sqrt(5)) on (r, in) = nn.Linear's default bound
    a = sd["text.0.q_proj.w_lora_A"]
    assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound
    # the frozen model never holds the LoRA matrices
    assert not any("lora" in k for k in model.state_dict())
    img = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    lora.train()  # with dropout active and B = 0 the output is still CLIP's: dropout acts on the branch only
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(img), tiny.encode_image(img), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(_tokens()), tiny.encode_text(_tokens()), atol=2e-5, rtol=1e-5)


def test_adapted_attention_equals_mha_with_scaled_low_rank_update():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.resblocks = nn.ModuleList([Block() for _ in range(12)])

    class Fake(nn.Module):  # a text tower only (no ViT image tower)
        def __init__(self):
            super().__init__()
            self.transformer = Tower()
            self.visual = nn.Identity()

    fake = Fake()
    ref = copy.deepcopy(fake.transformer.resblocks[11].attn)
    lora = apply_lora(fake, r=4, alpha=1.0, dropout=0.0, encoders="text", position="top3", params=["q", "v", "o"])
    assert sorted(lora.layout()["text"]) == [9, 10, 11]
    assert isinstance(fake.transformer.resblocks[8].attn, nn.MultiheadAttention)
    _randomise_B(lora)
    adapted = fake.transformer.resblocks[11].attn
    ad = lora.text["11"]
    s = 1.0 / math.sqrt(4)  # alpha / sqrt(r) = 0.5, not alpha / r = 0.25
    with torch.no_grad():
        e = 16
        ref.in_proj_weight[:e] += s * ad["q_proj"].w_lora_B @ ad["q_proj"].w_lora_A
        ref.in_proj_weight[2 * e:] += s * ad["v_proj"].w_lora_B @ ad["v_proj"].w_lora_A
        ref.out_proj.weight += s * ad["proj"].w_lora_B @ ad["proj"].w_lora_A
    x = torch.randn(3, 7, 16)
    mask = torch.full((7, 7), float("-inf")).triu(1)
    for mode in (True, False):
        lora.train(mode)
        out, _ = adapted(x, x, x, need_weights=False, attn_mask=mask)
        torch.testing.assert_close(out, ref(x, x, x, need_weights=False, attn_mask=mask)[0], atol=1e-5, rtol=1e-5)
    # gradients reach A and B of the adapted projections only
    lora.train()
    adapted(x, x, x, attn_mask=mask)[0].sum().backward()
    assert ad["q_proj"].w_lora_A.grad.abs().sum() > 0 and ad["proj"].w_lora_B.grad.abs().sum() > 0
    assert adapted.k_proj.weight.grad is None and not adapted.k_proj.weight.requires_grad
    with pytest.raises(ArgError, match="needs a ViT"):
        apply_lora(Fake(), encoders=("text", "vision"))
    with pytest.raises(ValueError, match="key_padding_mask"):
        adapted(x, x, x, key_padding_mask=torch.zeros(3, 7, dtype=torch.bool))


def test_dropout_only_in_training_and_eval_never_writes_the_frozen_weights(tiny):
    model = copy.deepcopy(tiny)
    lora = apply_lora(model, dropout=0.25)
    _randomise_B(lora)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    img = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.eval()
        e1, e2 = model.encode_image(img), model.encode_image(img)
        lora.train()
        t1, t2 = model.encode_image(img), model.encode_image(img)
        lora.eval()
        e3 = model.encode_image(img)
    assert torch.equal(e1, e2) and torch.equal(e1, e3)  # deterministic, and train/eval toggles leave no trace
    assert not torch.allclose(t1, t2)  # dropout on the LoRA input in training
    for n, p in model.named_parameters():
        assert torch.equal(p, frozen[n]), n


def test_official_checkpoint_formats_map_onto_our_keys(tiny):
    lora = apply_lora(copy.deepcopy(tiny), encoders=("text", "vision"), position="up")
    layout = lora.layout()
    n_t = len(layout["text"])
    weights = {f"layer_{n}": {"q_proj": {"w_lora_A": torch.full((2, 3), float(n)), "w_lora_B": torch.ones(3, 2)}}
               for n in range(n_t + len(layout["vision"]))}
    saved = official_lora_keys({"weights": weights, "metadata": {"r": 2}}, layout)
    first_t, first_v = min(layout["text"]), min(layout["vision"])
    assert saved[f"text.{first_t}.q_proj.w_lora_A"][0, 0] == 0
    assert saved[f"vision.{first_v}.q_proj.w_lora_A"][0, 0] == n_t  # vision layers follow the text ones
    flat = official_lora_keys({"transformer.resblocks.8.attn.v_proj.w_lora_B": 1,
                               "visual.transformer.resblocks.9.attn.proj.w_lora_A": 2,
                               "clip_model.visual.transformer.resblocks.1.attn.q_proj.w_lora_A": 3}, layout)
    assert flat == {"text.8.v_proj.w_lora_B": 1, "vision.9.proj.w_lora_A": 2, "vision.1.q_proj.w_lora_A": 3}


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------

def _trainer(data_root, out, folder="five", opts=()):
    cfg = make_cfg(data_root, trainer="CLIPLoRA", folder=folder, output_dir=str(out),
                   opts=["TRAINER.CLIPLORA.PREC", "fp32", *opts])
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_config_files_reproduce_the_official_defaults():
    with open(osp.join(CFG_DIR, "vit_b16.yaml")) as f:
        c = yaml.safe_load(f)
    m = c["TRAINER"]["CLIPLORA"]
    assert (m["R"], m["ALPHA"], m["DROPOUT"], m["POSITION"], m["ENCODER"], m["PARAMS"], m["N_ITERS"]) == \
        (2, 1.0, 0.25, "all", "both", ["q", "k", "v"], 500)
    assert (c["OPTIM"]["NAME"], c["OPTIM"]["LR"], c["OPTIM"]["WEIGHT_DECAY"]) == ("adamw", 0.0002, 0.01)
    assert c["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"] == 32
    assert float(m["ETA_MIN"]) == 1e-6 and m["LOGIT_SCALE"] == 100.0 and m["EVAL_LOGITS"] == "cosine"
    assert (500 * 1) % c["OPTIM"]["MAX_EPOCH"] == 0  # every shot count splits evenly into the epochs
    d = CLIPLoRA.CFG_DEFAULTS
    assert (d["R"], d["ALPHA"], d["DROPOUT"], d["N_ITERS"], d["PREC"]) == (2, 1.0, 0.25, 500, "amp")
    assert official_template("UCF101") == "a photo of a person doing {}."
    assert official_template("DescribableTextures") == "a photo of a {}."


def test_training_logits_are_100_cos_and_eval_logits_are_cosines(data_root, tmp_path):
    t = _trainer(data_root, tmp_path)
    assert t.model.template == "a photo of a {}."
    _randomise_B(t.model.lora)
    img = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    t.set_model_mode("eval")
    with torch.no_grad():
        cos = t.model_inference(img)
        f = F.normalize(t.model.image_encoder(img), dim=-1)
        txt = F.normalize(t.model.text_encoder.encode_tokens(t.model.token_ids), dim=-1)
    torch.testing.assert_close(cos, f @ txt.t(), atol=1e-6, rtol=1e-6)
    assert cos.abs().max() <= 1.0 + 1e-6
    t.model.lora.train()
    with torch.no_grad():
        for m in t.model.lora.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        train_logits = t.model(img)
    torch.testing.assert_close(train_logits, 100.0 * cos, atol=1e-4, rtol=1e-5)
    # text features follow the class list (the adapters do not depend on it)
    t.set_classnames(["x", "y"])
    t.set_model_mode("eval")
    with torch.no_grad():
        assert t.model_inference(img).shape == (3, 2)


def test_iteration_budget_is_n_iters_times_shots_with_per_iteration_cosine(data_root, tmp_path, capsys):
    opts = ["DATASET.NUM_SHOTS", "2", "TRAINER.CLIPLORA.N_ITERS", "3", "OPTIM.MAX_EPOCH", "4",
            "OPTIM.NAME", "adamw", "OPTIM.LR", "0.001", "TEST.NO_TEST", "True"]
    t = _trainer(data_root, tmp_path, opts=opts)
    assert t.total_iters == 6 and [t.epoch_iterations(e) for e in range(4)] == [1, 2, 1, 2]
    # said at start: a short OPTIM.MAX_EPOCH does not shorten the budget, and what does
    said = capsys.readouterr().out
    assert "CLIP-LoRA budget: 3 x 2 shots = 6 iterations in 4 epochs of 1/2" in said
    assert "not OPTIM.MAX_EPOCH (which only splits it into epochs): for a shorter run lower " \
           "TRAINER.CLIPLORA.N_ITERS" in said
    steps = []
    orig = t.step

    def counting_step(loss, **kw):
        steps.append(t.epoch)
        return orig(loss, **kw)

    t.step = counting_step
    try:
        t.train()
    finally:
        restore_stdout()
    assert steps == [0, 1, 1, 2, 3, 3]
    assert t.sched.last_epoch == 6 and t.sched.T_max == 6
    assert t.optim.param_groups[0]["lr"] == pytest.approx(1e-6)  # cosine ends at ETA_MIN
    assert isinstance(t.optim, torch.optim.AdamW)
    saved = load_checkpoint(str(tmp_path / "lora" / "model.pth.tar-4"))["state_dict"]
    assert saved and all(".w_lora_" in k for k in saved)
    with pytest.raises(ConfigError, match="cannot fill OPTIM.MAX_EPOCH"):
        _trainer(data_root, tmp_path / "x", opts=["DATASET.NUM_SHOTS", "1", "TRAINER.CLIPLORA.N_ITERS", "2"] +
                 ["OPTIM.MAX_EPOCH", "3"])


def test_without_shots_the_budget_is_max_epoch_passes(data_root, tmp_path):
    t = _trainer(data_root, tmp_path)  # NUM_SHOTS -1: every train image, batch 4, MAX_EPOCH 2
    assert len(t.train_loader_x) >= 2 and t.total_iters == 2 * len(t.train_loader_x) == t.sched.T_max


@pytest.mark.parametrize("key,value,msg", [
    ("ENCODER", "image", "ENCODER must be one of"),
    ("POSITION", "middle", "POSITION must be one of"),
    ("PARAMS", "['q', 'x']", "PARAMS must be letters"),
    ("EVAL_LOGITS", "softmax", "EVAL_LOGITS must be one of"),
    ("TEMPLATE", "a photo", "TEMPLATE must contain"),
])
def test_bad_config_values_name_the_key(data_root, tmp_path, key, value, msg):
    with pytest.raises(ConfigError, match=f"TRAINER.CLIPLORA.{msg}"):
        _trainer(data_root, tmp_path, opts=[f"TRAINER.CLIPLORA.{key}", value])


def test_official_save_lora_file_loads_through_load_model(data_root, tmp_path):
    t = _trainer(data_root, tmp_path / "a")
    layout = t.model.lora.layout()
    order = [(tw, i) for tw in ("text", "vision") for i in sorted(layout[tw])]
    g = torch.Generator().manual_seed(5)
    weights = {}
    for n, (tw, i) in enumerate(order):
        d = getattr(t.model.lora, tw)[str(i)]["q_proj"].w_lora_A.shape[1]
        weights[f"layer_{n}"] = {p: {"w_lora_A": torch.randn(2, d, generator=g), "w_lora_B": torch.randn(d, 2, generator=g)}
                                 for p in ("q_proj", "k_proj", "v_proj")}
    folder = tmp_path / "official" / "lora"
    folder.mkdir(parents=True)
    torch.save({"weights": weights, "metadata": {"r": 2, "alpha": 1, "encoder": "both", "params": ["q", "k", "v"],
                                                 "position": "all"}}, str(folder / "model.pth.tar-1"))
    other = _trainer(data_root, tmp_path / "b", folder="three")
    try:
        other.load_model(str(tmp_path / "official"), epoch=1)
    finally:
        restore_stdout()
    last_t = sorted(layout["text"])[-1]
    n_last = order.index(("text", last_t))
    assert torch.equal(other.model.lora.text[str(last_t)]["k_proj"].w_lora_B, weights[f"layer_{n_last}"]["k_proj"]["w_lora_B"])
    assert torch.equal(other.model.lora.vision["0"]["v_proj"].w_lora_A, weights[f"layer_{len(layout['text'])}"]["v_proj"]["w_lora_A"])


class _Stop(Exception):
    pass


def test_budgeted_run_killed_after_an_epoch_resumes_bit_for_bit(data_root, tmp_path, monkeypatch):
    """Epochs that chain passes over the few-shot set resume exactly (budget 3 x 2 shots in 3 epochs
    of 2 iterations; one pass = 2 batches of 4 out of the 10 few-shot images)."""
    import train as train_mod

    yaml_file = tmp_path / "five.yaml"
    yaml_file.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "five"\n')
    common = ["--root", str(data_root), "--seed", "1", "--trainer", "CLIPLoRA", "--dataset-config-file", str(yaml_file),
              "MODEL.BACKBONE.NAME", "test-vit-tiny", "USE_CUDA", "False", "DATALOADER.NUM_WORKERS", "0",
              "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATASET.NUM_SHOTS", "2", "TRAINER.CLIPLORA.N_ITERS", "3",
              "OPTIM.MAX_EPOCH", "3", "OPTIM.NAME", "adamw", "OPTIM.LR", "0.01", "OPTIM.WARMUP_EPOCH", "0",
              "TEST.NO_TEST", "True", "TRAINER.CLIPLORA.PREC", "fp32"]

    def run(argv):
        try:
            return train_mod.cli(argv)
        finally:
            restore_stdout()

    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    assert run(["--output-dir", full, *common]) == 0
    original = CLIPLoRA.run_epoch

    def run_epoch_then_stop(self):
        if self.epoch == 2:
            raise _Stop()
        return original(self)

    monkeypatch.setattr(CLIPLoRA, "run_epoch", run_epoch_then_stop)
    with pytest.raises(_Stop):
        run(["--output-dir", killed, *common])
    from vlprompt.engine import LAST_CHECKPOINT

    resume_point = load_checkpoint(osp.join(killed, "lora", LAST_CHECKPOINT))
    assert resume_point["epoch"] == 2  # the rerun starts from epoch 3, not from scratch
    monkeypatch.setattr(CLIPLoRA, "run_epoch", original)
    assert run(["--output-dir", killed, *common]) == 0
    a = load_checkpoint(osp.join(full, "lora", "model.pth.tar-3"))
    b = load_checkpoint(osp.join(killed, "lora", "model.pth.tar-3"))
    assert a["state_dict"] and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6  # 3 x 2 iterations stepped
    assert any(v.abs().sum() > 0 for k, v in a["state_dict"].items() if k.endswith("w_lora_B"))  # it learned
