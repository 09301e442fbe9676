"""MuDPT / UMuDPT (trainers/mudpt.py): parameter counts at ViT-B/16 width, injection directions and
layers, gradients into every learned tensor, precision, configs, the official config end to end, the
checkpoint layout (and what is refused), errors naming the config key, and the bash scripts (dry
runs). Small random backbones on the CPU. The generic build / one-step update / checkpoint onto
another class list / kill-and-resume checks are in tests/test_contract.py."""
import json
import os
import os.path as osp
import subprocess

import pytest
import torch

import train as train_mod
from tests.helpers import make_cfg, make_image_folder, method_model
from trainers import mudpt as M
from vlprompt.clip import ArgError, DeepPromptedCLIP, build_clip_model, convert_clip_to_fp16, model_dims, tokenize
from vlprompt.config import ConfigError, extend_cfg, get_cfg_default, merge_from_file
from vlprompt.engine import TRAINER_REGISTRY, build_trainer
from vlprompt.utils import load_checkpoint, restore_stdout, save_checkpoint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ["cat", "dog", "sea_lion"]


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 224, 224, generator=g)


# ------------------------------------------------------------------------------------------------
# parameter counts (MuDPT paper, arXiv 2306.11400; the public code's MuDPT / UUMuDPT classes)
# ------------------------------------------------------------------------------------------------


def _linear(i, o):
    return i * o + o


def _block(d):  # ln_1, attention (in_proj + out_proj), ln_2, MLP 4x
    return 2 * d + (3 * d * d + 3 * d) + _linear(d, d) + 2 * d + _linear(d, 4 * d) + _linear(4 * d, d)


def _injection_model(d_in, d_out):  # LN, block, LN, Linear
    return 2 * d_in + _block(d_in) + 2 * d_in + _linear(d_in, d_out)


def expected_params(d_t, d_v, n, j, injection, unidirectional=False):
    total = j * n * d_t + (0 if unidirectional else j * n * d_v)
    if injection == "linear":
        return total + 2 * _linear(d_t, d_v) + _linear(d_v, d_t)
    total += _injection_model(d_t, d_v)
    if not unidirectional:
        total += _injection_model(d_v, d_t)
    return total


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_vit_b16_width():
    clip = build_clip_model("ViT-B/16", random_init=True)
    d = model_dims(clip)
    assert (d["d_text"], d["d_vision"]) == (512, 768)
    cases = [
        # (N, J, injection, unidirectional, published/derived count)
        (4, 9, "linear", False, 1_227_776),  # the public code's linear MuDPT class
        (4, 9, "transformer", False, 11_079_168),  # "about 11.08M" (paper / UUMuDPT)
        (2, 9, "transformer", True, 3_557_632),  # UMuDPT, "about 3.56M"
    ]
    for n, j, injection, uni, count in cases:
        learner = M.MuDPTPromptLearner(clip, CLASSES, n, j, "a photo of a", injection, uni)
        assert n_params(learner) == count == expected_params(512, 768, n, j, injection, uni)
        # checkpoints hold exactly the learned parameters (no class buffers, no CLIP weights)
        assert set(learner.state_dict()) == {k for k, _ in learner.named_parameters()}
        if injection == "transformer":
            assert learner.injection.tv.block.attn.num_heads == 8  # 512 / 64
            assert learner.injection.tv.block.mlp.c_fc.out_features == 2048
            assert learner.injection.tv.proj.out_features == 768
            if not uni:
                assert learner.injection.vt.block.attn.num_heads == 12  # 768 / 64
                assert learner.injection.vt.proj.out_features == 512


def test_widths_and_heads_are_read_from_the_backbone(tiny):
    d = model_dims(tiny)
    for injection in ("linear", "transformer"):
        learner = M.MuDPTPromptLearner(tiny, CLASSES, 3, 5, "", injection)
        assert n_params(learner) == expected_params(d["d_text"], d["d_vision"], 3, 5, injection)
    assert learner.injection.tv.block.attn.num_heads == d["text_heads"]
    assert learner.injection.vt.block.attn.num_heads == d["vision_heads"]


# ------------------------------------------------------------------------------------------------
# injection model: attention axis
# ------------------------------------------------------------------------------------------------


def test_injection_model_attends_over_tokens_of_one_layer():
    torch.manual_seed(0)
    inj = M.InjectionModel(32, 48, heads=2).eval()
    x = torch.randn(5, 3, 32)  # (layers, N tokens, width)
    y = x.clone()
    y[2, 1] += torch.randn(32)  # not a constant shift: the input LayerNorm would remove it
    with torch.no_grad():
        a, b = inj(x), inj(y)
    assert a.shape == (5, 3, 48)
    changed = (a - b).abs().amax(dim=-1) > 1e-6  # (layers, tokens)
    assert changed[2].all()  # every token of the perturbed layer (attention over N)
    assert not changed[[0, 1, 3, 4]].any()  # no other layer ("batch" axis = layer)


# ------------------------------------------------------------------------------------------------
# forward: what goes where
# ------------------------------------------------------------------------------------------------


def _capture(blocks):
    ins, handles = {}, []
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_pre_hook(lambda m, a, i=i: ins.__setitem__(i, a[0].detach().clone())))
    return ins, handles


def run_model(model, images):
    """Text features, image features and the inputs of every text / vision block."""
    clip_text = model.text_encoder.transformer.resblocks
    clip_vis = model.image_encoder.visual.transformer.resblocks
    t_ins, h1 = _capture(clip_text)
    v_ins, h2 = _capture(clip_vis)
    try:
        with torch.no_grad():
            t = model.text_features()
            v = model.image_features(images)
    finally:
        for h in h1 + h2:
            h.remove()
    return t, v, t_ins, v_ins


@pytest.mark.parametrize("injection", ["linear", "transformer"])
def test_effective_prompts_at_every_layer(tiny, images, injection):
    torch.manual_seed(1)
    N, J = 2, 4
    model = M.mudpt_clip(tiny, CLASSES, N, J, "a photo of a", injection)
    pl = model.prompt_learner
    _, _, t_ins, v_ins = run_model(model, images)
    with torch.no_grad():
        if injection == "linear":
            inj = pl.injection
            tv0, tv = inj.embed_projection(pl.ctx), inj.deep_projections(pl.deep_prompts)
            vt = inj.visual_ctx_deep_projections(pl.visual_ctx_deep_prompts)
        else:
            stack = pl.injection.tv(torch.cat([pl.ctx[None], pl.deep_prompts]))
            tv0, tv = stack[0], stack[1:]
            vt = pl.injection.vt(pl.visual_ctx_deep_prompts)
        pos = tiny.positional_embedding
        # text input: P_t^0 only (no injection), plus the positional embedding
        torch.testing.assert_close(t_ins[0][:, 1 : 1 + N], (pl.ctx + pos[1 : 1 + N]).expand(3, -1, -1))
        # vision input: P_v^0 + I_tv^0, appended and passed through ln_pre
        torch.testing.assert_close(v_ins[0][:, -N:], tiny.visual.ln_pre(pl.visual_ctx + tv0).expand(2, -1, -1))
        for i in range(1, J):
            torch.testing.assert_close(t_ins[i][:, 1 : 1 + N], (pl.deep_prompts[i - 1] + vt[i - 1]).expand(3, -1, -1))
            torch.testing.assert_close(v_ins[i][:, -N:], (pl.visual_ctx_deep_prompts[i - 1] + tv[i - 1]).expand(2, -1, -1))


def _perturbed(model, name, index=None):
    p = getattr(model.prompt_learner, name)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        target = p if index is None else p[index]
        target.add_(0.5 * torch.randn(target.shape, generator=g))  # not constant: LayerNorms would remove it


@pytest.mark.parametrize("injection", ["linear", "transformer"])
def test_injection_directions_and_layers(tiny, images, injection):
    torch.manual_seed(2)
    N, J = 2, 4
    model = M.mudpt_clip(tiny, CLASSES, N, J, "a photo of a", injection)
    t0, v0, t_ins0, v_ins0 = run_model(model, images)
    state = {k: v.clone() for k, v in model.prompt_learner.state_dict().items()}

    def reset():
        model.prompt_learner.load_state_dict(state)

    # a deep vision prompt (P_v^2) reaches the text features through text block 2 only
    _perturbed(model, "visual_ctx_deep_prompts", 1)
    t, v, t_ins, _ = run_model(model, images)
    assert not torch.allclose(t, t0)
    for i in (0, 1):  # text input and earlier blocks untouched
        torch.testing.assert_close(t_ins[i], t_ins0[i], rtol=0, atol=0)
    diff = (t_ins[2] - t_ins0[2]).abs().amax(dim=(0, 2))
    assert (diff[1 : 1 + N] > 0).all() and (diff[: 1] == 0).all() and (diff[1 + N :] == 0).all()
    reset()

    # the shallow vision prompt P_v^0 is not injected into text at all
    _perturbed(model, "visual_ctx")
    t, v, _, _ = run_model(model, images)
    torch.testing.assert_close(t, t0, rtol=0, atol=0)
    assert not torch.allclose(v, v0)
    reset()

    # the shallow text prompt P_t^0 changes the vision features (through the vision input)
    _perturbed(model, "ctx")
    t, v, _, v_ins = run_model(model, images)
    assert not torch.allclose(v, v0)
    assert not torch.allclose(v_ins[0][:, -N:], v_ins0[0][:, -N:])
    # ... and not the deep vision prompts (per-layer injection)
    for i in range(1, J):
        torch.testing.assert_close(v_ins[i][:, -N:], v_ins0[i][:, -N:])
    reset()

    # a deep text prompt P_t^1 changes the vision prompt of block 1 only
    _perturbed(model, "deep_prompts", 0)
    t, v, _, v_ins = run_model(model, images)
    assert not torch.allclose(v, v0)
    torch.testing.assert_close(v_ins[0], v_ins0[0], rtol=0, atol=0)
    assert not torch.allclose(v_ins[1][:, -N:], v_ins0[1][:, -N:])
    for i in range(2, J):
        torch.testing.assert_close(v_ins[i][:, -N:], v_ins0[i][:, -N:])
    reset()


def test_umudpt_has_no_independent_vision_parameters(tiny, images):
    torch.manual_seed(3)
    N, J = 2, 4
    model = M.mudpt_clip(tiny, CLASSES, N, J, "a photo of a", "transformer", unidirectional=True)
    pl = model.prompt_learner
    names = {n for n, _ in pl.named_parameters()}
    assert {"ctx", "deep_prompts"} <= names
    assert not any("visual_ctx" in n or n.startswith("injection.vt") for n in names)
    assert pl.injection.vt is None
    d = model_dims(tiny)
    assert n_params(pl) == expected_params(d["d_text"], d["d_vision"], N, J, "transformer", True)
    _, _, t_ins, v_ins = run_model(model, images)
    with torch.no_grad():
        stack = pl.injection.tv(torch.cat([pl.ctx[None], pl.deep_prompts]))
        torch.testing.assert_close(v_ins[0][:, -N:], tiny.visual.ln_pre(stack[0]).expand(2, -1, -1))
        for i in range(1, J):
            torch.testing.assert_close(v_ins[i][:, -N:], stack[i].expand(2, -1, -1))
            torch.testing.assert_close(t_ins[i][:, 1 : 1 + N], pl.deep_prompts[i - 1].expand(3, -1, -1))


def test_ctx_init_keeps_only_the_first_n_words(tiny):
    pl = M.MuDPTPromptLearner(tiny, ["dog"], 2, 3, "a photo of a")
    assert pl.prompt_prefix == "a photo"
    assert pl.tokenized_prompts[0].tolist()[:6] == tokenize("a photo dog.")[0].tolist()[:6]
    with torch.no_grad():
        emb = tiny.token_embedding(tokenize("a photo of a"))[0, 1:3]
    torch.testing.assert_close(pl.ctx.detach(), emb)
    assert M.MuDPTPromptLearner(tiny, ["dog"], 4, 3, "a photo of a").prompt_prefix == "a photo of a"
    with pytest.raises(ArgError, match='^n_ctx: 5 tokens but the init phrase "a photo of a" has only 4 words'):
        M.MuDPTPromptLearner(tiny, ["dog"], 5, 3, "a photo of a")
    # through the trainer the same mistake names the config key
    with pytest.raises(ConfigError, match=r"^TRAINER\.MUDPT\.N_CTX: 5 tokens"):
        method_model("MuDPT", tiny, ["dog"], N_CTX=5, DEEP_PROMPT_DEPTH=3)
    with pytest.raises(ConfigError, match=r"^TRAINER\.UMUDPT\.N_CTX: 5 tokens"):
        method_model("UMuDPT", tiny, ["dog"], N_CTX=5, DEEP_PROMPT_DEPTH=3)
    rnd = M.MuDPTPromptLearner(tiny, ["dog"], 3, 3, "")
    assert rnd.prompt_prefix == "X X X"


def test_bad_settings_raise_clear_errors(tiny):
    # the blocks name their argument (ArgError) ...
    for args, kwargs, arg in (((2, 3, "", "attention"), {}, "injection"),
                              ((2, 3, "", "linear"), dict(unidirectional=True), "unidirectional"),
                              ((2, 13, ""), {}, "depth"),
                              ((0, 3, ""), {}, "n_ctx")):
        with pytest.raises(ArgError, match=f"^{arg}: ") as e:
            M.MuDPTPromptLearner(tiny, CLASSES, *args, **kwargs)
        assert e.value.arg == arg
    # ... and the trainers map it to the config key
    for name, overrides, match in (
        ("MuDPT", dict(INJECTION="attention"), r"^TRAINER\.MUDPT\.INJECTION: must be one of \('transformer', 'linear'\)"),
        ("MuDPT", dict(INJECTION="linear", UNIDIRECTIONAL=True), r"^TRAINER\.MUDPT\.UNIDIRECTIONAL: .*INJECTION transformer"),
        ("MuDPT", dict(DEEP_PROMPT_DEPTH=13), r"^TRAINER\.MUDPT\.DEEP_PROMPT_DEPTH: .*larger than"),
        ("MuDPT", dict(N_CTX=0, CTX_INIT=""), r"^TRAINER\.MUDPT\.N_CTX: "),
        ("UMuDPT", dict(DEEP_PROMPT_DEPTH=13), r"^TRAINER\.UMUDPT\.DEEP_PROMPT_DEPTH: .*larger than"),
    ):
        with pytest.raises(ConfigError, match=match):
            method_model(name, tiny, CLASSES, **overrides)
    # depth 1: shallow prompts only, still injected text -> vision at the input
    m = M.mudpt_clip(tiny, CLASSES, 2, 1, "")
    assert m.prompt_learner.deep_prompts is None
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 224, 224)).shape == (1, 3)


# ------------------------------------------------------------------------------------------------
# precision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("injection", ["linear", "transformer"])
def test_fp16_clip_with_fp32_injection_weights(images, injection):
    ref_clip = build_clip_model("test-vit-tiny")
    torch.manual_seed(4)
    ref = M.mudpt_clip(ref_clip, CLASSES, 2, 4, "a photo of a", injection)
    half_clip = convert_clip_to_fp16(build_clip_model("test-vit-tiny"))
    half = M.mudpt_clip(half_clip, CLASSES, 2, 4, "a photo of a", injection)
    half.prompt_learner.load_state_dict(ref.prompt_learner.state_dict())
    assert half.text_encoder.dtype == torch.float16
    with torch.no_grad():
        expected = ref(images)
    out = half(images)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.05)
    out.logsumexp(-1).sum().backward()
    for name, p in half.prompt_learner.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


def test_bf16_autocast_keeps_fp32_weights_and_logits(tiny, images):
    torch.manual_seed(5)
    model = M.mudpt_clip(tiny, CLASSES, 2, 3, "a photo of a")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    for name, p in model.prompt_learner.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------


def _cfg_from(path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, path)
    return cfg


def test_config_defaults_and_files():
    cfg = get_cfg_default()
    extend_cfg(cfg)
    node = cfg.TRAINER.MUDPT
    assert (node.N_CTX, node.CTX_INIT, node.DEEP_PROMPT_DEPTH) == (2, "a photo of a", 8)
    assert (node.INJECTION, node.UNIDIRECTIONAL, node.PREC) == ("transformer", False, "fp32")
    assert "UMUDPT" in cfg.TRAINER
    folder = osp.join(ROOT, "configs", "trainers", "MuDPT")
    expected = {
        "vit_b16_bz4_ep10_nctx4_depth9.yaml": (4, "transformer"),
        "vit_b16_bz4_ep10_nctx2_depth9.yaml": (2, "transformer"),
        "vit_b16_bz4_ep10_nctx4_depth9_linear.yaml": (4, "linear"),
        "vit_b16_bz4_ep10_nctx4_depth9_cross_datasets.yaml": (4, "transformer"),
    }
    # toy*.yaml: test_toy; siglip_/eva02_*.yaml: test_backbones_families
    assert {f for f in os.listdir(folder) if f.startswith("vit_b16")} == set(expected)
    for fname, (n, injection) in expected.items():
        cfg = _cfg_from(osp.join(folder, fname))
        node = cfg.TRAINER.MUDPT
        assert (node.N_CTX, node.DEEP_PROMPT_DEPTH, node.INJECTION, node.PREC) == (n, 9, injection, "fp32")
        assert node.CTX_INIT == "a photo of a" and not node.UNIDIRECTIONAL
        assert cfg.OPTIM.MAX_EPOCH == 10
    cfg = _cfg_from(osp.join(ROOT, "configs", "trainers", "UMuDPT", "vit_b16_bz4_ep5_nctx2_depth9.yaml"))
    assert (cfg.TRAINER.UMUDPT.N_CTX, cfg.TRAINER.UMUDPT.DEEP_PROMPT_DEPTH, cfg.OPTIM.MAX_EPOCH) == (2, 9, 5)
    for c in (cfg, _cfg_from(osp.join(folder, "vit_b16_bz4_ep10_nctx4_depth9.yaml"))):
        assert c.DATALOADER.TRAIN_X.BATCH_SIZE == 4 and c.DATALOADER.TEST.BATCH_SIZE == 100
        assert (c.OPTIM.NAME, c.OPTIM.LR, c.OPTIM.LR_SCHEDULER) == ("sgd", 0.0025, "cosine")
        assert (c.OPTIM.WARMUP_EPOCH, c.OPTIM.WARMUP_TYPE, c.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
        assert c.MODEL.BACKBONE.NAME == "ViT-B/16" and c.INPUT.INTERPOLATION == "bicubic"
        assert tuple(c.INPUT.SIZE) == (224, 224)
        assert list(c.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]
        assert list(c.INPUT.PIXEL_MEAN) == [0.48145466, 0.4578275, 0.40821073]
        assert list(c.INPUT.PIXEL_STD) == [0.26862954, 0.26130258, 0.27577711]


# ------------------------------------------------------------------------------------------------
# trainers: the variant they build, gradients, the official config end to end, checkpoints
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mudpt_data")
    make_image_folder(str(root / "six"), n_classes=6, n_per_class=6)
    return root


def _yaml(tmp_path, folder):
    p = tmp_path / f"{folder}.yaml"
    p.write_text(f'DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "{folder}"\n')
    return str(p)


def test_trainers_build_their_variant(tiny):
    small = dict(N_CTX=2, DEEP_PROMPT_DEPTH=3)
    models = {
        "MuDPT": method_model("MuDPT", tiny, CLASSES, **small),
        "MuDPT-linear": method_model("MuDPT", tiny, CLASSES, INJECTION="linear", **small),
        "MuDPT-uni": method_model("MuDPT", tiny, CLASSES, UNIDIRECTIONAL=True, **small),
        "UMuDPT": method_model("UMuDPT", tiny, CLASSES, **small),
    }
    want = {"MuDPT": ("transformer", False), "MuDPT-linear": ("linear", False), "MuDPT-uni": ("transformer", True),
            "UMuDPT": ("transformer", True)}
    for name, model in models.items():
        pl = model.prompt_learner
        assert isinstance(model, DeepPromptedCLIP) and isinstance(pl, M.MuDPTPromptLearner), name
        assert (pl.injection_type, pl.unidirectional) == want[name], name
        # both towers prompted with (N, J) = (2, 3)
        assert (model.text_encoder.n_prompts, model.text_encoder.depth) == (2, 3), name
        assert (model.image_encoder.n_prompts, model.image_encoder.depth) == (2, 3), name
    assert isinstance(models["MuDPT-linear"].prompt_learner.injection, M.LinearInjection)
    assert isinstance(models["MuDPT"].prompt_learner.injection, M.TransformerInjection)
    # UMuDPT is MuDPT with UNIDIRECTIONAL True: the same learned tensors
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.prompt_learner.state_dict().items()}  # noqa: E731
    assert shapes(models["UMuDPT"]) == shapes(models["MuDPT-uni"])
    assert M.MuDPT.MODEL_NAME == "MultimodalDeepPromptTuning"  # the official checkpoint folders
    assert M.UMuDPT.MODEL_NAME == "UnifiedMultimodalDeepPromptTuning"


@pytest.mark.parametrize("trainer,opts", [
    ("MuDPT", ["TRAINER.MUDPT.INJECTION", "transformer"]),
    ("MuDPT", ["TRAINER.MUDPT.INJECTION", "linear"]),
    ("UMuDPT", []),
])
def test_gradients_reach_all_learned_parameters_and_nothing_else(data_root, tmp_path, trainer, opts):
    node = "MUDPT" if trainer == "MuDPT" else "UMUDPT"
    cfg = make_cfg(data_root, trainer=trainer, folder="six", output_dir=tmp_path / "out",
                   opts=[f"TRAINER.{node}.N_CTX", 2, f"TRAINER.{node}.DEEP_PROMPT_DEPTH", 3, "DATASET.NUM_SHOTS", 1] + opts)
    try:
        tr = build_trainer(cfg)
    finally:
        restore_stdout()
    learner = tr.model.prompt_learner
    assert tr.get_model_names() == [tr.MODEL_NAME]
    assert tr._models[tr.MODEL_NAME] is learner
    learned = {id(p) for p in learner.parameters()}
    assert {id(p) for p in tr.model.parameters() if p.requires_grad} == learned
    assert {id(p) for g in tr.optim.param_groups for p in g["params"]} == learned
    tr.set_model_mode("train")
    assert learner.training and not tr.model.text_encoder.transformer.training
    tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 100
    batch = next(iter(tr.train_loader_x))
    summary = tr.forward_backward(batch)
    # the official MuDPT trainer logs the training accuracy, the UMuDPT one only the loss
    assert set(summary) == ({"loss", "acc"} if trainer == "MuDPT" else {"loss"})
    # every prompt and every injection weight (both directions) receives a gradient
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in tr.model.named_parameters():
        if id(p) not in learned:
            assert p.grad is None, name


def run_cli(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


TINY_OPTS = ["MODEL.BACKBONE.NAME", "test-vit-tiny", "USE_CUDA", "False", "DATALOADER.NUM_WORKERS", "0",
             "DATALOADER.TEST.BATCH_SIZE", "16", "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0", "TRAIN.PRINT_FREQ", "1",
             "OPTIM.LR", "0.05"]


def test_base_classes_end_to_end_with_official_config(data_root, tmp_path):
    """Train on the base classes with the real B2N config (tiny backbone): the official layout of
    the learned state, its size, and the log's accuracy."""
    cfg_file = osp.join(ROOT, "configs", "trainers", "MuDPT", "vit_b16_bz4_ep10_nctx4_depth9.yaml")
    train_dir = tmp_path / "train_base"
    rc = run_cli(["--root", str(data_root), "--seed", "1", "--trainer", "MuDPT", "--dataset-config-file",
                  _yaml(tmp_path, "six"), "--config-file", cfg_file, "--output-dir", str(train_dir),
                  "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base"] + TINY_OPTS)
    assert rc == 0
    ckpt = load_checkpoint(str(train_dir / "MultimodalDeepPromptTuning" / "model.pth.tar-1"))
    keys = set(ckpt["state_dict"])
    assert {"ctx", "deep_prompts", "visual_ctx", "visual_ctx_deep_prompts"} <= keys
    assert all(k.split(".")[0] in ("ctx", "deep_prompts", "visual_ctx", "visual_ctx_deep_prompts", "injection")
               for k in keys)  # learned state only: no CLIP weights, no class buffers
    assert any(k.startswith("injection.tv.") for k in keys) and any(k.startswith("injection.vt.") for k in keys)
    assert ckpt["state_dict"]["deep_prompts"].shape[:2] == (8, 4)
    res = json.loads((train_dir / "results.json").read_text())
    assert res["trainer"] == "MuDPT" and res["num_classes"] == 3
    d = model_dims(build_clip_model("test-vit-tiny"))
    n = expected_params(d["d_text"], d["d_vision"], 4, 9, "transformer")
    assert res["extra"]["trainable_params"] == n == sum(v.numel() for v in ckpt["state_dict"].values())
    log = (train_dir / "log.txt").read_text()
    assert "MuDPT: injection=transformer, N_CTX=4, DEEP_PROMPT_DEPTH=9" in log
    assert "epoch [1/1] batch [1/" in log and "acc" in log and "* accuracy:" in log


def _trainer(data_root, out, name, opts=()):
    node = "MUDPT" if name == "MuDPT" else "UMUDPT"
    cfg = make_cfg(data_root, trainer=name, folder="six", output_dir=out,
                   opts=[f"TRAINER.{node}.N_CTX", 2, f"TRAINER.{node}.DEEP_PROMPT_DEPTH", 3, *opts])
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_checkpoints_of_another_variant_or_the_official_layout_are_refused(data_root, tmp_path):
    umudpt = _trainer(data_root, tmp_path / "u", "UMuDPT")
    umudpt.save_model(0, str(tmp_path / "u"))
    mudpt = _trainer(data_root, tmp_path / "m", "MuDPT")
    # a UMuDPT model (no vision prompts, one-directional injection) does not load silently into MuDPT
    folder = tmp_path / "fake" / "MultimodalDeepPromptTuning"
    os.makedirs(folder)
    os.symlink(tmp_path / "u" / "UnifiedMultimodalDeepPromptTuning" / "model.pth.tar-1", folder / "model.pth.tar-1")
    with pytest.raises(RuntimeError, match=r"missing from the checkpoint: .*'visual_ctx'"):
        mudpt.load_model(str(tmp_path / "fake"), epoch=1)
    # the official repository's whole-model layout changed between its commits: refused with a reason
    sd = {k: v.clone() for k, v in mudpt.model.prompt_learner.state_dict().items()}
    official = {f"mudpt_prompt_learner.{k}": v for k, v in sd.items() if not k.startswith("visual")}
    official["image_encoder.transformer.resblocks.1.visual_ctx"] = sd["visual_ctx"]
    save_checkpoint({"state_dict": official, "epoch": 3}, str(tmp_path / "official" / "MultimodalDeepPromptTuning"))
    with pytest.raises(RuntimeError, match="layout of the official MuDPT repository"):
        mudpt.load_model(str(tmp_path / "official"), epoch=3)
    # a whole-model checkpoint with "prompt_learner." keys (next to frozen CLIP weights) loads
    whole = {f"prompt_learner.{k}": v + 1 for k, v in sd.items()}
    whole["image_encoder.conv1.weight"] = torch.zeros(1)
    save_checkpoint({"state_dict": whole, "epoch": 2}, str(tmp_path / "whole" / "MultimodalDeepPromptTuning"))
    mudpt.load_model(str(tmp_path / "whole"), epoch=2)
    for k, v in mudpt.model.prompt_learner.state_dict().items():
        torch.testing.assert_close(v, sd[k] + 1, rtol=0, atol=0)


def test_trainers_registered_and_bad_settings_refused(data_root, tmp_path):
    assert TRAINER_REGISTRY.get("MuDPT") is M.MuDPT
    assert TRAINER_REGISTRY.get("UMuDPT") is M.UMuDPT
    for trainer, opts, match in [
        ("MuDPT", ["TRAINER.MUDPT.INJECTION", "mlp"], r"TRAINER\.MUDPT\.INJECTION: must be one of"),
        ("MuDPT", ["TRAINER.MUDPT.INJECTION", "linear", "TRAINER.MUDPT.UNIDIRECTIONAL", "True"],
         r"TRAINER\.MUDPT\.UNIDIRECTIONAL: "),
        ("MuDPT", ["TRAINER.MUDPT.PREC", "fp8"], r"TRAINER\.MUDPT\.PREC must be one of"),
        ("UMuDPT", ["TRAINER.UMUDPT.DEEP_PROMPT_DEPTH", "20"], r"TRAINER\.UMUDPT\.DEEP_PROMPT_DEPTH: "),
    ]:
        cfg = make_cfg(data_root, trainer=trainer, folder="six", output_dir=tmp_path, opts=opts)
        with pytest.raises(ConfigError, match=match):
            try:
                build_trainer(cfg)
            finally:
                restore_stdout()


# ------------------------------------------------------------------------------------------------
# scripts (dry runs in a scratch "repository root")
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def scratch_root(tmp_path):
    for name in ("configs",):
        os.symlink(osp.join(ROOT, name), tmp_path / name)
    (tmp_path / "train.py").write_text("raise SystemExit('not run in dry runs')\n")
    return tmp_path


def _script(root, name, *args, env=None):
    from tests import procs

    e = dict(os.environ, DRY_RUN="1", PYTHON=procs.executable())  # the sweep's planner, forked (tests/procs.py)
    e.update(env or {})
    p = subprocess.run(["bash", osp.join(ROOT, "scripts", "mudpt", name), *args], cwd=root, env=e,
                       capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def test_scripts(scratch_root):
    for name in sorted(os.listdir(osp.join(ROOT, "scripts", "mudpt"))):
        if name.endswith(".sh") and name != "config.sh":
            assert "set -euo pipefail" in open(osp.join(ROOT, "scripts", "mudpt", name)).read(), name
    cfg = "vit_b16_bz4_ep10_nctx4_depth9"
    rc, out, _ = _script(scratch_root, "base2new.sh", "/DATA", "oxford_pets", "1")
    assert rc == 0
    tr, te = out.strip().splitlines()
    tail = f"oxford_pets/shots_16/MuDPT/{cfg}/seed1"
    assert f"--output-dir output/base2new/train_base/{tail}" in tr and "DATASET.SUBSAMPLE_CLASSES base" in tr
    assert (f"--output-dir output/base2new/test_new/{tail} --model-dir output/base2new/train_base/{tail} "
            "--load-epoch 10 --eval-only DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new") in te

    rc, out, _ = _script(scratch_root, "cross_dataset.sh", "/DATA", "2", "TRAINER.MUDPT.PREC", "amp")
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == 11
    xcfg = f"{cfg}_cross_datasets_precamp"  # the trailing option is encoded in the config folder
    imagenet_dir = f"output/imagenet/MuDPT/{xcfg}_16shots/seed2"
    assert "configs/datasets/imagenet.yaml" in lines[0] and f"--output-dir {imagenet_dir} " in lines[0]
    targets = []
    for line in lines[1:]:
        assert f"--model-dir {imagenet_dir} --load-epoch 10 --eval-only" in line  # always the ImageNet model
        assert "NUM_SHOTS" not in line and line.strip().endswith("TRAINER.MUDPT.PREC amp")
        targets.append(line.split("configs/datasets/")[1].split(".yaml")[0])
        assert f"output/evaluation/MuDPT/{xcfg}_16shots/{targets[-1]}/seed2" in line
    assert len(set(targets)) == 10 and "imagenet" not in targets

    rc, out, _ = _script(scratch_root, "domain_generalization.sh", "/DATA", "1")
    assert rc == 0
    assert [ln.split("configs/datasets/")[1].split(".yaml")[0] for ln in out.strip().splitlines()] == [
        "imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]

    # few-shot: 1/2/4/8/16 with the same 10-epoch config; finished runs are skipped
    done = scratch_root / "output" / "few_shot" / "dtd" / "MuDPT" / cfg / "shots_4" / "seed3"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    rc, out, err = _script(scratch_root, "few_shot.sh", "/DATA", "dtd", "3")
    runs = [ln for ln in out.splitlines() if " train.py " in ln]
    assert rc == 0 and len(runs) == 4 and "Results exist at" in out + err
    for k, line in zip((1, 2, 8, 16), runs):
        assert f"--output-dir output/few_shot/dtd/MuDPT/{cfg}/shots_{k}/seed3 DATASET.NUM_SHOTS {k}" in line
        assert f"configs/trainers/MuDPT/{cfg}.yaml" in line

    # UMuDPT through the same scripts; load epoch read from its config (5)
    rc, out, _ = _script(scratch_root, "base2new_test.sh", "/DATA", "eurosat", "1",
                         env={"TRAINER": "UMuDPT", "CFG": "vit_b16_bz4_ep5_nctx2_depth9"})
    assert rc == 0 and "--trainer UMuDPT" in out and "--load-epoch 5" in out

    rc, _, err = _script(scratch_root, "few_shot.sh", "/DATA", "nonexistent", "1")
    assert rc == 2 and "unknown dataset" in err
    rc, out, err = _script(scratch_root, "xd_test.sh", "/DATA", "dtd", "1", env={"DRY_RUN": "0"})
    # the evaluation is skipped (exit 1), naming the ImageNet run it needs
    assert rc == 1 and "not complete" in out + err
    assert "imagenet/MuDPT/vit_b16_bz4_ep10_nctx4_depth9_cross_datasets_16shots/seed1" in out + err
