"""Baseline trainers CoOp, CoCoOp, MaPLe, IVLP and VPT (trainers/*.py) on random backbones.

Covers: trainable parameters (names and counts at ViT-B/16 size against specs/methods.md), token
positions that change between layers, frozen "of a" tokens, gradients reaching exactly the learnable
prompts, logits for any class count, CoCoOp's batched pass vs. the per-image loop, eval-time text
caching, a short train + eval on a fabricated dataset, checkpoints (learned state only) reloaded onto
another class list, official-layout checkpoints, config nodes and yaml files, precision paths, errors.
"""
import glob
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401  (registers the trainers and their config nodes)
from tests.helpers import make_cfg, make_image_folder, small_resnet_clip
from trainers.cocoop import CoCoOpCLIP
from trainers.coop import CoOpCLIP
from trainers.ivlp import IVLPCLIP
from trainers.maple import MaPLeCLIP
from trainers.vpt import VPTCLIP
from vlprompt.clip import Precision, build_clip_model, model_dims, tokenize
from vlprompt.config import extend_cfg, get_cfg_default, merge_from_file
from vlprompt.engine import TRAINER_REGISTRY, build_trainer
from vlprompt.utils import load_checkpoint, restore_stdout, save_checkpoint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ["dog", "sea_lion", "golden retriever"]


def method_cfg(node, **overrides):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for k, v in overrides.items():
        setattr(cfg.TRAINER[node], k, v)
    return cfg.TRAINER[node]


@pytest.fixture(scope="module")
def vitb16():
    return build_clip_model("ViT-B/16", random_init=True)


@pytest.fixture(scope="module")
def tiny():
    m = build_clip_model("test-vit-tiny")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def n_learnable(model):
    return sum(p.numel() for p in model.prompt_learner.parameters())


# ------------------------------------------------------------------------------------------------
# trainable parameters at ViT-B/16 size (specs/methods.md §1-3, §6)
# ------------------------------------------------------------------------------------------------


def test_parameter_counts_vit_b16(vitb16):
    d = model_dims(vitb16)
    assert (d["d_text"], d["d_vision"], d["d_embed"]) == (512, 768, 512)
    assert n_learnable(CoOpCLIP(method_cfg("COOP"), CLASSES, vitb16)) == 16 * 512
    assert n_learnable(CoOpCLIP(method_cfg("COOP", CTX_INIT="a photo of a"), CLASSES, vitb16)) == 4 * 512
    assert n_learnable(CoOpCLIP(method_cfg("COOP", CSC=True), CLASSES, vitb16)) == 3 * 16 * 512
    cocoop = CoCoOpCLIP(method_cfg("COCOOP", N_CTX=4, CTX_INIT="a photo of a"), CLASSES, vitb16)
    assert n_learnable(cocoop) == 35_360
    maple = MaPLeCLIP(method_cfg("MAPLE"), CLASSES, vitb16)
    assert n_learnable(maple) == 3_555_072
    assert n_learnable(MaPLeCLIP(method_cfg("MAPLE", PROMPT_DEPTH=3), CLASSES, vitb16)) == 1_185_024
    ivlp = IVLPCLIP(method_cfg("IVLP", PROMPT_DEPTH_TEXT=12, PROMPT_DEPTH_VISION=12), CLASSES, vitb16)
    assert n_learnable(ivlp) == 30_720
    lang = IVLPCLIP(method_cfg("IVLP", N_CTX_TEXT=4, N_CTX_VISION=0, PROMPT_DEPTH_TEXT=12, PROMPT_DEPTH_VISION=0),
                    CLASSES, vitb16)
    assert n_learnable(lang) == 24_576
    vpt = VPTCLIP(method_cfg("VPT", N_CTX_VISION=8, PROMPT_DEPTH_VISION=12), CLASSES, vitb16)
    assert n_learnable(vpt) == 73_728
    # the state dicts hold only learnable tensors (no class buffers, no CLIP weights)
    assert set(maple.prompt_learner.state_dict()) == {n for n, _ in maple.prompt_learner.named_parameters()}
    assert set(vpt.prompt_learner.state_dict()) == {"vision_ctx"} | {f"deep_vision_prompts.{i}" for i in range(11)}


# ------------------------------------------------------------------------------------------------
# forward definitions on the tiny backbone
# ------------------------------------------------------------------------------------------------


def block_inputs(blocks):
    ins, hs = {}, []
    for i, b in enumerate(blocks):
        hs.append(b.register_forward_pre_hook(lambda m, a, i=i: ins.__setitem__(i, a[0].detach().clone())))
    return ins, hs


@pytest.mark.parametrize("kind", ["maple", "ivlp"])
def test_maple_ivlp_token_positions_and_frozen_of_a(tiny, images, kind):
    if kind == "maple":
        model = MaPLeCLIP(method_cfg("MAPLE", N_CTX=2, PROMPT_DEPTH=9), CLASSES, tiny)
        deep_t = list(model.prompt_learner.compound_prompts_text)
        shared, deep_v = model.prompt_learner.vision_prompts()
    else:
        model = IVLPCLIP(method_cfg("IVLP", PROMPT_DEPTH_TEXT=9, PROMPT_DEPTH_VISION=5), CLASSES, tiny)
        deep_t = list(model.prompt_learner.deep_text_prompts)
        shared, deep_v = model.prompt_learner.vision_prompts()
    J_t, J_v = len(deep_t) + 1, len(deep_v) + 1
    model.eval()
    t_in, h1 = block_inputs(tiny.transformer.resblocks)
    v_in, h2 = block_inputs(tiny.visual.transformer.resblocks)
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for h in h1 + h2:
            h.remove()
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    # text input: [SOS, p1, p2, "of", "a", <class>, ".", EOT]: "of a" are frozen token embeddings
    pos = tiny.positional_embedding
    of_a = tiny.token_embedding.weight[tokenize("of a")[0][1:3]]
    torch.testing.assert_close(t_in[0][:, 3:5], (of_a + pos[3:5]).expand(3, -1, -1))
    torch.testing.assert_close(t_in[0][:, 1:3], (model.prompt_learner.ctx + pos[1:3]).expand(3, -1, -1))
    for i in range(1, 12):
        if i < J_t:
            torch.testing.assert_close(t_in[i][:, 1:3], deep_t[i - 1].expand(3, -1, -1))
        else:
            assert not torch.allclose(t_in[i][:, 1:3], deep_t[-1].expand(3, -1, -1))
    # vision: prompts appended (through ln_pre), replaced as the last N tokens of blocks 1..J-1
    torch.testing.assert_close(v_in[0][:, -2:], tiny.visual.ln_pre(shared).expand(2, -1, -1))
    for i in range(1, J_v):
        torch.testing.assert_close(v_in[i][:, -2:], deep_v[i - 1].expand(2, -1, -1))
    if J_v < 12:
        assert not torch.allclose(v_in[J_v][:, -2:], deep_v[-1].expand(2, -1, -1))


def make_models(tiny):
    torch.manual_seed(0)
    models = {
        "CoOp": CoOpCLIP(method_cfg("COOP", N_CTX=4, CLASS_TOKEN_POSITION="middle"), CLASSES, tiny),
        "CoOp-csc": CoOpCLIP(method_cfg("COOP", N_CTX=3, CSC=True, CLASS_TOKEN_POSITION="front"), CLASSES, tiny),
        "CoCoOp": CoCoOpCLIP(method_cfg("COCOOP", N_CTX=4, CTX_INIT="a photo of a", CHUNK_SIZE=4), CLASSES, tiny),
        "MaPLe": MaPLeCLIP(method_cfg("MAPLE", PROMPT_DEPTH=9), CLASSES, tiny),
        "IVLP": IVLPCLIP(method_cfg("IVLP"), CLASSES, tiny),
        "IVLP-lang": IVLPCLIP(method_cfg("IVLP", N_CTX_TEXT=4, N_CTX_VISION=0, PROMPT_DEPTH_VISION=0), CLASSES, tiny),
        "VPT": VPTCLIP(method_cfg("VPT", N_CTX_VISION=3, PROMPT_DEPTH_VISION=4), CLASSES, tiny),
    }
    with torch.no_grad():  # the tiny Meta-Net has 40 // 16 = 2 ReLU units: keep them active
        models["CoCoOp"].prompt_learner.meta_net.linear1.bias.fill_(1.0)
    return models


def test_gradients_reach_exactly_the_learnable_prompts(tiny, images):
    for name, model in make_models(tiny).items():
        model.train()
        loss = F.cross_entropy(model(images), torch.tensor([0, 2]))
        loss.backward()
        for pname, p in model.prompt_learner.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (name, pname)
        learnable = {id(p) for p in model.prompt_learner.parameters()}
        for pname, p in model.named_parameters():
            if id(p) not in learnable:
                assert p.grad is None, (name, pname)
        # frozen CLIP stays in eval mode even after model.train()
        assert not tiny.training and not tiny.visual.training and model.prompt_learner.training


def test_logits_for_any_class_count(tiny, images):
    for name, model in make_models(tiny).items():
        if name == "CoOp-csc":
            continue  # class-specific contexts are tied to their class count
        model.eval()
        for classes in (["one"], ["a", "b", "c", "d", "e", "f", "g"]):
            model.set_classnames(classes)
            with torch.no_grad():
                assert model(images).shape == (2, len(classes)), name


def test_coop_class_token_positions(tiny):
    for position in ("end", "middle", "front"):
        model = CoOpCLIP(method_cfg("COOP", N_CTX=4, CLASS_TOKEN_POSITION=position), ["sea_lion", "cat"], tiny)
        pl = model.prompt_learner
        prompts = pl()
        emb = tiny.token_embedding.weight
        name = emb[tokenize("sea lion")[0][1:3]]  # 2 tokens
        ctx = pl.ctx
        expected = {"end": [ctx, name], "middle": [ctx[:2], name, ctx[2:]], "front": [name, ctx]}[position]
        torch.testing.assert_close(prompts[0, 1:7], torch.cat(expected))
        torch.testing.assert_close(prompts[0, 7:], pl.token_suffix[0, 2: 2 + prompts.shape[1] - 7])
        assert int(pl.eot_idx[0]) == 8  # [SOS, 4 ctx, sea, lion, ".", EOT]


def test_cocoop_batched_pass_equals_per_image_loop(tiny, images):
    for chunk in (1, 4, 0):
        torch.manual_seed(0)
        model = CoCoOpCLIP(method_cfg("COCOOP", N_CTX=4, CTX_INIT="a photo of a", CHUNK_SIZE=chunk), CLASSES, tiny)
        with torch.no_grad():
            model.prompt_learner.meta_net.linear2.weight.normal_(0, 0.5)  # make the bias matter
        model.train()
        batched = model(images)
        loop = model.forward_loop(images)
        torch.testing.assert_close(batched, loop, atol=1e-4, rtol=1e-4)
        # gradients agree too
        g1 = torch.autograd.grad(batched.sum(), model.prompt_learner.ctx)[0]
        g2 = torch.autograd.grad(model.forward_loop(images).sum(), model.prompt_learner.ctx)[0]
        torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(batched[0], batched[1])


def test_text_features_computed_once_per_evaluation(tiny, images):
    model = MaPLeCLIP(method_cfg("MAPLE"), CLASSES, tiny)
    calls = []
    orig = model.text_encoder.forward
    model.text_encoder.forward = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    model.eval()
    with torch.no_grad():
        first = model(images)
        second = model(images[:1])
    assert len(calls) == 1
    torch.testing.assert_close(second, first[:1])
    opt = torch.optim.SGD(model.prompt_learner.parameters(), lr=1.0)
    model.train()
    F.cross_entropy(model(images), torch.tensor([0, 1])).backward()
    opt.step()
    assert len(calls) == 2  # train mode: computed per batch
    model.eval()
    with torch.no_grad():
        third = model(images)
        model(images)
    assert len(calls) == 3 and not torch.allclose(third, first)


def test_bad_inputs_raise_clear_errors(tiny, images):
    with pytest.raises(ValueError, match="larger than the number of transformer layers"):
        MaPLeCLIP(method_cfg("MAPLE", PROMPT_DEPTH=13), CLASSES, tiny)
    with pytest.raises(ValueError, match="between 1 and 12"):
        MaPLeCLIP(method_cfg("MAPLE", PROMPT_DEPTH=0), CLASSES, tiny)
    with pytest.raises(ValueError, match="N_CTX must be >= 1|>= 1"):
        MaPLeCLIP(method_cfg("MAPLE", N_CTX=0), CLASSES, tiny)
    with pytest.raises(ValueError, match="N_CTX must be >= 1"):
        CoOpCLIP(method_cfg("COOP", N_CTX=0), CLASSES, tiny)
    with pytest.raises(ValueError, match="larger than the number of transformer layers"):
        IVLPCLIP(method_cfg("IVLP", PROMPT_DEPTH_VISION=20), CLASSES, tiny)
    with pytest.raises(ValueError, match="larger than the number of transformer layers"):
        VPTCLIP(method_cfg("VPT", PROMPT_DEPTH_VISION=13), CLASSES, tiny)
    rn = small_resnet_clip()
    for cls, node in ((MaPLeCLIP, "MAPLE"), (IVLPCLIP, "IVLP"), (VPTCLIP, "VPT")):
        with pytest.raises(ValueError, match="ViT"):
            cls(method_cfg(node), CLASSES, rn)
    # CoOp / CoCoOp / language-only IVLP run on a ResNet image tower
    for model in (CoOpCLIP(method_cfg("COOP", N_CTX=2), CLASSES, rn),
                  CoCoOpCLIP(method_cfg("COCOOP", N_CTX=2), CLASSES, rn)):
        with torch.no_grad():
            assert model.eval()(images[:1]).shape == (1, 3)


def test_fp16_weights_with_fp32_prompts(images):
    m = build_clip_model("test-vit-tiny")
    Precision("fp16", "cpu", allow_cpu=True).prepare_clip(m)
    for p in m.parameters():
        p.requires_grad_(False)
    model = MaPLeCLIP(method_cfg("MAPLE"), CLASSES, m)
    model.train()
    logits = model(images[:1])
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([1])).backward()
    for p in model.prompt_learner.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# config nodes and yaml files
# ------------------------------------------------------------------------------------------------


def test_config_nodes_match_official_train_py():
    cfg = get_cfg_default()
    extend_cfg(cfg)
    extend_cfg(cfg)  # idempotent, and never fails when the node exists
    t = cfg.TRAINER
    assert dict(t.COOP) == dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end")
    assert {k: t.COCOOP[k] for k in ("N_CTX", "CTX_INIT", "PREC")} == dict(N_CTX=16, CTX_INIT="", PREC="fp16")
    assert dict(t.MAPLE) == dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9)
    assert dict(t.IVLP) == dict(N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16",
                                PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9)
    assert dict(t.VPT) == dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1)
    for name in ("CoOp", "CoCoOp", "MaPLe", "IVLP", "VPT"):
        assert name in TRAINER_REGISTRY


EXPECTED_YAML = {
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx": dict(lr=0.0035, ep=5, bs=4, node=("MAPLE", "PROMPT_DEPTH", 9)),
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets": dict(lr=0.0026, ep=2, bs=4, node=("MAPLE", "PROMPT_DEPTH", 3)),
    "IVLP/vit_b16_c2_ep5_batch4_2+2ctx": dict(lr=0.0035, ep=5, bs=4, node=("IVLP", "PROMPT_DEPTH_VISION", 12)),
    "IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only": dict(lr=0.0025, ep=5, bs=4, node=("IVLP", "N_CTX_TEXT", 4)),
    "VPT/vit_b16_c2_ep5_batch4_4": dict(lr=0.0025, ep=5, bs=4, node=("VPT", "N_CTX_VISION", 8)),
    "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1": dict(lr=0.002, ep=10, bs=1, node=("COCOOP", "CTX_INIT", "a photo of a")),
    "CoCoOp/vit_b16_c16_ep10_batch1": dict(lr=0.002, ep=10, bs=1, node=("COCOOP", "N_CTX", 16)),
    "CoOp/vit_b16_ep50_ctxv1": dict(lr=0.002, ep=50, bs=32, node=("COOP", "CTX_INIT", "a photo of a")),
    "CoOp/rn50": dict(lr=0.002, ep=200, bs=32, node=("COOP", "N_CTX", 16)),
}


def test_trainer_yaml_files_merge_and_match_official():
    files = sorted(glob.glob(osp.join(ROOT, "configs", "trainers", "*", "*.yaml")))
    # official ViT-B/16 / RN50 settings only; the toy world's configs (toy*.yaml) are checked by test_toy
    ours = [f for f in files if osp.basename(osp.dirname(f)) in ("CoOp", "CoCoOp", "MaPLe", "IVLP", "VPT")
            and not osp.basename(f).startswith("toy")]
    assert len(ours) >= 24
    for f in ours:
        cfg = get_cfg_default()
        extend_cfg(cfg)
        merge_from_file(cfg, f)
        assert cfg.INPUT.SIZE == (224, 224) and cfg.INPUT.INTERPOLATION == "bicubic"
        key = osp.relpath(f, osp.join(ROOT, "configs", "trainers"))[:-5]
        if key in EXPECTED_YAML:
            e = EXPECTED_YAML[key]
            assert cfg.OPTIM.LR == e["lr"] and cfg.OPTIM.MAX_EPOCH == e["ep"], key
            assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == e["bs"], key
            node, k, v = e["node"]
            assert cfg.TRAINER[node][k] == v, key
            assert cfg.TRAINER[node].PREC == "fp16"


# ------------------------------------------------------------------------------------------------
# engine integration: short train + eval, checkpoints, reload onto another class list
# ------------------------------------------------------------------------------------------------

TRAINERS = {
    "CoOp": (["TRAINER.COOP.N_CTX", 4], "prompt_learner"),
    "CoCoOp": (["TRAINER.COCOOP.N_CTX", 4, "TRAINER.COCOOP.CTX_INIT", "a photo of a"], "prompt_learner"),
    "MaPLe": ([], "MultiModalPromptLearner"),
    "IVLP": (["TRAINER.IVLP.PROMPT_DEPTH_VISION", 4], "VLPromptLearner"),
    "VPT": (["TRAINER.VPT.N_CTX_VISION", 4, "TRAINER.VPT.PROMPT_DEPTH_VISION", 3], "prompt_learner"),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(str(root / "four"), n_classes=4, n_per_class=5)
    return root


def build(data_root, out, name, subsample, extra=()):
    opts, _ = TRAINERS[name]
    cfg = make_cfg(data_root, trainer=name, folder="four", output_dir=out,
                   opts=list(opts) + ["OPTIM.MAX_EPOCH", 1, "DATASET.SUBSAMPLE_CLASSES", subsample] + list(extra))
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


@pytest.mark.parametrize("name", list(TRAINERS))
def test_train_eval_and_reload_on_new_classes(tmp_path, data_root, name, capsys):
    _, reg = TRAINERS[name]
    out = tmp_path / "base"
    tr = build(data_root, out, name, "base")
    assert tr.get_model_names() == [reg]
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner." + n for n, _ in tr.model.prompt_learner.named_parameters()}
    try:
        tr.train()
    finally:
        restore_stdout()
    assert (out / "results.json").is_file()
    ckpt = load_checkpoint(str(out / reg / "model.pth.tar-1"))
    saved = ckpt["state_dict"]
    assert set(saved) == set(tr.model.prompt_learner.state_dict())  # learned state only
    assert not any("token_" in k or "encoder" in k for k in saved)
    base_classes = list(tr.dm.dataset.classnames)

    # eval-only on the new classes with the base-trained prompts
    tr2 = build(data_root, tmp_path / "new", name, "new")
    assert set(tr2.dm.dataset.classnames).isdisjoint(base_classes)
    capsys.readouterr()
    tr2.load_model(str(out), epoch=1)
    msg = capsys.readouterr().out
    assert f'Loading weights to {reg} from "{out / reg / "model.pth.tar-1"}" (epoch = 1)' in msg
    for k, v in tr2.model.prompt_learner.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    try:
        acc = tr2.test()
    finally:
        restore_stdout()
    assert 0.0 <= acc <= 100.0
    with pytest.raises(FileNotFoundError, match="Model not found"):
        tr2.load_model(str(out), epoch=7)


def test_load_official_layouts_and_reject_mismatched_checkpoints(tmp_path, data_root):
    tr = build(data_root, tmp_path / "m", "MaPLe", "all")
    own = {k: v.clone() for k, v in tr.model.prompt_learner.state_dict().items()}
    # official MaPLe: the whole CustomCLIP under "MultiModalPromptLearner", with class buffers
    legacy = {"prompt_learner." + k: v + 1 for k, v in own.items()}
    legacy["prompt_learner.token_prefix"] = torch.zeros(9, 1, 32)
    legacy["prompt_learner.token_suffix"] = torch.zeros(9, 74, 32)
    legacy["image_encoder.conv1.weight"] = torch.zeros(1)
    legacy["logit_scale"] = torch.zeros(())
    save_checkpoint({"state_dict": legacy, "epoch": 5, "optimizer": None, "scheduler": None, "val_result": None},
                    str(tmp_path / "legacy" / "MultiModalPromptLearner"))
    tr.load_model(str(tmp_path / "legacy"), epoch=5)
    for k, v in tr.model.prompt_learner.state_dict().items():
        torch.testing.assert_close(v, own[k] + 1)
    # official IVLP: prompts inside the encoders
    iv = build(data_root, tmp_path / "i", "IVLP", "all")
    sd = iv.model.prompt_learner.state_dict()
    official = {"prompt_learner.ctx": sd["ctx"] * 0 + 3, "image_encoder.VPT": sd["vision_ctx"] * 0 + 4}
    for i in range(1, 9):
        official[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = sd[f"deep_text_prompts.{i - 1}"] * 0 + 5
    for i in range(1, 4):
        official[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = sd[f"deep_vision_prompts.{i - 1}"] * 0 + 6
    save_checkpoint({"state_dict": official, "epoch": 5}, str(tmp_path / "iv" / "VLPromptLearner"))
    iv.load_model(str(tmp_path / "iv"), epoch=5)
    assert float(iv.model.prompt_learner.deep_vision_prompts[2][0, 0]) == 6.0
    assert float(iv.model.prompt_learner.ctx[0, 0]) == 3.0
    # a checkpoint from other prompt settings fails loudly
    bad = dict(own)
    bad["ctx"] = torch.zeros(4, 32)
    del bad["proj.bias"]
    save_checkpoint({"state_dict": bad, "epoch": 1}, str(tmp_path / "bad" / "MultiModalPromptLearner"))
    with pytest.raises(RuntimeError, match=r"(?s)missing from the checkpoint: \['proj.bias'\].*another shape: ctx"):
        tr.load_model(str(tmp_path / "bad"), epoch=1)


def test_precision_aware_step_and_non_finite_loss(tmp_path, data_root):
    tr = build(data_root, tmp_path / "p", "CoOp", "all")
    tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 3
    before = tr.model.prompt_learner.ctx.detach().clone()
    tr.scaler = torch.amp.GradScaler("cpu")  # the amp path (GradScaler) on CPU
    batch = next(iter(tr.train_loader_x))
    summary = tr.forward_backward(batch)
    assert set(summary) == {"loss", "acc"}
    assert not torch.equal(before, tr.model.prompt_learner.ctx.detach())
    tr.scaler = None
    nan = tr.model.prompt_learner.ctx.sum() * float("nan")
    with pytest.raises(FloatingPointError, match="epoch 1/1, batch 1/3"):
        tr.model_backward_and_update(nan)


# ------------------------------------------------------------------------------------------------
# bash scripts (dry run: the train.py commands and the CoOp output tree)
# ------------------------------------------------------------------------------------------------

SCRIPT_TRAINERS = {"coop": "CoOp", "cocoop": "CoCoOp", "maple": "MaPLe", "ivlp": "IVLP", "vpt": "VPT"}


def dry_run(script, *args, env=None):
    import os
    import subprocess

    e = dict(os.environ, DRY_RUN="1", **(env or {}))
    p = subprocess.run(["bash", f"scripts/{script}", *args], cwd=ROOT, env=e, capture_output=True, text=True)
    return p.returncode, [ln.rstrip() for ln in p.stdout.strip().splitlines()], p.stderr


@pytest.mark.parametrize("method", list(SCRIPT_TRAINERS))
def test_protocol_scripts_dry_run(method):
    trainer = SCRIPT_TRAINERS[method]
    for name in ("base2new", "base2new_train", "base2new_test", "xd_train", "xd_test", "cross_dataset",
                 "domain_generalization", "few_shot"):
        path = osp.join(ROOT, "scripts", method, name + ".sh")
        assert osp.isfile(path), path
        assert "set -euo pipefail" in open(path).read()
    rc, lines, err = dry_run(f"{method}/base2new.sh", "/DATA", "dtd", "2")
    assert rc == 0, err
    assert len(lines) == 2
    assert f"--output-dir output/base2new/train_base/dtd/shots_16/{trainer}/" in lines[0]
    assert "DATASET.SUBSAMPLE_CLASSES base" in lines[0] and f"--trainer {trainer}" in lines[0]
    assert f"--output-dir output/base2new/test_new/dtd/shots_16/{trainer}/" in lines[1]
    assert "--eval-only" in lines[1] and "DATASET.SUBSAMPLE_CLASSES new" in lines[1]
    assert f"--model-dir output/base2new/train_base/dtd/shots_16/{trainer}/" in lines[1]
    rc, lines, err = dry_run(f"{method}/cross_dataset.sh", "/DATA", "1")
    assert rc == 0, err
    assert len(lines) == 11 and f"--output-dir output/imagenet/{trainer}/" in lines[0]
    assert all(f"output/evaluation/{trainer}/" in ln and "--eval-only" in ln for ln in lines[1:])
    rc, lines, err = dry_run(f"{method}/domain_generalization.sh", "/DATA", "1")
    assert rc == 0 and len(lines) == 5 and "imagenet_r/seed1" in lines[-1]
    rc, lines, err = dry_run(f"{method}/few_shot.sh", "/DATA", "eurosat", "3", "OPTIM.MAX_EPOCH", "1")
    assert rc == 0 and len(lines) == 5
    assert all(f"output/few_shot/eurosat/{trainer}/" in ln and ln.endswith("OPTIM.MAX_EPOCH 1") for ln in lines)
    assert "shots_1/seed3" in lines[0] and "DATASET.NUM_SHOTS 16" in lines[-1]
    rc, _, err = dry_run(f"{method}/xd_test.sh", "/DATA", "no_such_dataset", "1")
    assert rc == 2 and "unknown dataset" in err


def test_protocol_script_defaults():
    # MaPLe XD/DG: the cross-dataset config, evaluated at its last epoch (2)
    _, lines, _ = dry_run("maple/xd_test.sh", "/DATA", "imagenet_a", "1")
    assert "vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml" in lines[0] and "--load-epoch 2" in lines[0]
    # VPT: the official script loads epoch 2 of a 5-epoch run; we load the last one
    _, lines, _ = dry_run("vpt/xd_test.sh", "/DATA", "dtd", "1")
    assert "--load-epoch 5" in lines[0]
    # CoOp: ImageNet B2N uses the 50-epoch config; few-shot epochs by shot count (COOP.md)
    _, lines, _ = dry_run("coop/base2new_train.sh", "/DATA", "imagenet", "1")
    assert "CoOp/vit_b16_ep50_ctxv1.yaml" in lines[0]
    _, lines, _ = dry_run("coop/few_shot.sh", "/DATA", "dtd", "1", env={"FS_BACKBONE": "rn50"})
    cfgs = [ln.split("--config-file ")[1].split()[0] for ln in lines]
    assert cfgs == ["configs/trainers/CoOp/rn50_ep50.yaml", "configs/trainers/CoOp/rn50_ep100.yaml",
                    "configs/trainers/CoOp/rn50_ep100.yaml", "configs/trainers/CoOp/rn50.yaml",
                    "configs/trainers/CoOp/rn50.yaml"]
    # IVLP deep language prompting through CFG
    _, lines, _ = dry_run("ivlp/base2new_test.sh", "/DATA", "dtd", "1",
                          env={"CFG": "vit_b16_c2_ep5_batch4_4ctx_language_only"})
    assert "IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only/seed1" in lines[0]


def test_resume_loads_learned_state_strictly(tmp_path, data_root, capsys):
    out = tmp_path / "r"
    tr = build(data_root, out, "CoCoOp", "base")
    try:
        tr.train()
    finally:
        restore_stdout()
    tr2 = build(data_root, out, "CoCoOp", "base", extra=["OPTIM.MAX_EPOCH", 2])
    capsys.readouterr()
    try:
        tr2.train()  # resumes from model.pth.tar-1 (strict load of the learned state), trains epoch 2
    finally:
        restore_stdout()
    log = capsys.readouterr().out
    assert "Found checkpoint" in log and "Previous epoch: 1" in log and "epoch [2/2]" in log
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
