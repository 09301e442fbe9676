"""APLe: frequency adapter, decoupled prompts, token-wise schedule, teacher, checkpoints, end to end.

Small random backbones on CPU (``test-vit-tiny``); one ViT-B/16-sized random model for the
parameter count.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.clip.adapters import FrequencyAdapter, gaussian_frequency_mask

# ------------------------------------------------------------------------------------------------
# adapter
# ------------------------------------------------------------------------------------------------


def _checkerboard(b=2, c=3, h=32, w=32, dtype=torch.float32):
    i = torch.arange(h).view(-1, 1)
    j = torch.arange(w).view(1, -1)
    return ((-1.0) ** (i + j)).to(dtype).expand(b, c, h, w).clone()


def _smooth(b=2, c=3, h=64, w=64, dtype=torch.float64, seed=0):
    """A sum of a few low-frequency cosines per channel (|f| <= 3/h cycles/px)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(h, dtype=dtype).view(-1, 1)
    x = torch.arange(w, dtype=dtype).view(1, -1)
    out = torch.zeros(b, c, h, w, dtype=dtype)
    for bi in range(b):
        for ci in range(c):
            for _ in range(3):
                ky, kx = torch.randint(0, 4, (2,), generator=g).tolist()
                amp, phase = torch.rand(2, generator=g, dtype=dtype).tolist()
                out[bi, ci] += amp * torch.cos(2 * math.pi * (ky * y / h + kx * x / w) + 6.0 * phase)
    return out


def _reference_loop(img, sigma=0.05, alpha=0.9):
    """Literal per-sample reading of steps (a)-(c) of the public APLe code (docs/METHODS.md, APLe;
    vlprompt/clip/adapters.py), as an oracle for the batched version."""
    outs = []
    for sample in img:  # (C, H, W)
        spec = torch.fft.fft2(sample)
        for d in range(spec.dim()):  # (a) roll every dim, channels included
            spec = torch.roll(spec, spec.shape[d] // 2, d)
        spec = spec.real  # (b) imaginary part dropped
        spec = spec * gaussian_frequency_mask(*sample.shape[-2:], sigma, dtype=spec.dtype)  # (c)
        for d in range(spec.dim()):
            spec = torch.roll(spec, spec.shape[d] // 2, d)
        outs.append(torch.fft.ifft2(spec).real)
    return alpha * img + (1 - alpha) * torch.stack(outs)


@pytest.mark.parametrize("mode", ["paper", "reference_code"])
def test_adapter_keeps_shape_and_dtype(mode):
    ad = FrequencyAdapter(mode=mode)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.randn(3, 3, 20, 24).to(dtype)
        y = ad(x)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y.float()).all()


def test_adapter_paper_passes_constant_image():
    ad = FrequencyAdapter()
    x = torch.full((2, 3, 32, 48), 0.37)
    x[:, 1] = -1.2  # a different constant per channel
    assert torch.allclose(ad(x), x, atol=1e-6)


def test_adapter_paper_attenuates_checkerboard_to_alpha():
    ad = FrequencyAdapter(alpha=0.9)
    x = _checkerboard()
    y = ad(x)
    assert y.abs().max() <= 0.9 * x.abs().max() + 1e-6
    assert torch.allclose(y, 0.9 * x, atol=1e-6)  # exp(-100) gain: nothing of the filtered part left


def test_adapter_paper_matches_complex_fft_formula_and_is_a_lowpass():
    ad = FrequencyAdapter(sigma=0.05, alpha=0.9)
    x = torch.randn(2, 3, 30, 33, dtype=torch.float64)  # odd width exercises rfft's half spectrum
    G = gaussian_frequency_mask(30, 33, 0.05, dtype=torch.float64)
    want = 0.9 * x + 0.1 * torch.fft.ifft2(G * torch.fft.fft2(x)).real
    assert torch.allclose(ad(x), want, atol=1e-12)
    assert G.max() == 1.0 and G[0, 0] == 1.0
    # a horizontal cosine at f = 3/30 cycles/px is scaled by alpha + (1 - alpha) * G(f)
    y = torch.arange(30, dtype=torch.float64).view(-1, 1).expand(30, 33)
    cos = torch.cos(2 * math.pi * 3 * y / 30).expand(1, 3, 30, 33)
    gain = 0.9 + 0.1 * math.exp(-((3 / 30) ** 2) / (2 * 0.05 ** 2))
    assert torch.allclose(ad(cos), gain * cos, atol=1e-12)


def test_adapter_batch_equals_per_sample_and_caches_mask():
    for mode in ("paper", "reference_code"):
        ad = FrequencyAdapter(mode=mode)
        x = torch.randn(4, 3, 16, 16)
        whole = ad(x)
        single = torch.cat([ad(x[i : i + 1]) for i in range(4)])
        assert torch.allclose(whole, single, atol=1e-6)
        assert len(ad._masks) == 1
        ad(torch.randn(1, 3, 16, 16))
        assert len(ad._masks) == 1  # same (H, W, device, dtype): reused
        ad(torch.randn(1, 3, 16, 8))
        assert len(ad._masks) == 2


def test_adapter_reference_code_quirks():
    ad = FrequencyAdapter(mode="reference_code", sigma=0.05, alpha=0.9)
    # batched implementation == literal per-sample reading of (a)-(c); odd sizes too
    for shape in [(2, 3, 32, 32), (2, 3, 15, 20)]:
        x = torch.randn(*shape, dtype=torch.float64)
        assert torch.allclose(ad(x), _reference_loop(x), atol=1e-12)
    # smooth input: the filtered part vanishes, fused ~= 0.9 x (paper mode keeps ~x instead)
    s = _smooth()
    rel = ((ad(s) - 0.9 * s).norm() / s.norm()).item()
    assert rel < 1e-10
    assert ((FrequencyAdapter()(s) - s).norm() / s.norm()).item() < 0.05
    # what survives is the (Nyquist, Nyquist) band, and channel c surfaces in channel (c + 2) mod 3
    for c in range(3):
        x = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
        x[0, c] = _checkerboard(1, 1, dtype=torch.float64)[0, 0]
        f = ad.filtered(x)
        peak = [f[0, k].abs().max().item() for k in range(3)]
        assert peak[(c + 2) % 3] == pytest.approx(1.0, abs=1e-9)
        assert sum(peak) == pytest.approx(1.0, abs=1e-9)


def test_adapter_alpha_one_is_identity_and_bad_settings_raise():
    x = torch.randn(2, 3, 8, 8)
    assert FrequencyAdapter(alpha=1.0)(x) is x
    # the block names its argument (ArgError); the trainer maps it to TRAINER.APLE.<KEY>
    for kwargs, arg in ((dict(mode="lowpass"), "mode"), (dict(sigma=0), "sigma"), (dict(alpha=1.5), "alpha")):
        with pytest.raises(ArgError, match=f"^{arg}: ") as e:
            FrequencyAdapter(**kwargs)
        assert e.value.arg == arg
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        FrequencyAdapter()(torch.randn(3, 8, 8))


# ------------------------------------------------------------------------------------------------
# model, trainer, schedule, checkpoints
# ------------------------------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import os.path as osp  # noqa: E402
import shutil  # noqa: E402

import train as train_mod  # noqa: E402
from tests.helpers import make_cfg, make_image_folder, method_model  # noqa: E402
from trainers.aple import APLe, APLeCLIP, kd_loss, stage_epochs  # noqa: E402
from vlprompt.clip import ArgError, ZeroShotHead, build_clip_model, encode_class_texts, model_dims, tokenize  # noqa: E402
from vlprompt.config import ConfigError, extend_cfg, get_cfg_default, merge_from_file  # noqa: E402
from vlprompt.engine import build_trainer  # noqa: E402
from vlprompt.utils import load_checkpoint, restore_stdout  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(ROOT, "configs", "trainers", "APLe")
B2N_CFG = osp.join(CFG_DIR, "vit_b16_c2_ep5_batch4_2ctx.yaml")
TEXT_KEYS = lambda names: [n for n in names if n.startswith("compound_prompts_text")]  # noqa: E731
VISION_KEYS = lambda names: [n for n in names if n.startswith("compound_prompts_vision")]  # noqa: E731


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("aple_data")
    make_image_folder(str(root / "six"), n_classes=6, n_per_class=10)
    return root


@pytest.fixture(scope="module")
def tiny_clip():
    return build_clip_model("test-vit-tiny")


def aple_model(clip, classnames, n=2, j=9, dataset="", **overrides):
    """APLe's model as the trainer builds it (``TRAINER.APLE.N_CTX = n``, ``PROMPT_DEPTH = j``)."""
    return method_model("APLe", clip, classnames, dataset=dataset, N_CTX=n, PROMPT_DEPTH=j, **overrides)


def build_tiny_trainer(data_root, tmp_path, opts=()):
    opts = ["TRAINER.APLE.PREC", "fp32", "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.5", *opts]
    cfg = make_cfg(data_root, trainer="APLe", folder="six", output_dir=str(tmp_path / "out"), opts=list(opts))
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def first_batch(trainer):
    batch = next(iter(trainer.train_loader_x))
    return trainer.parse_batch_train(batch)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def optim(trainer, name):
    """The named optimiser ``name`` ("vision" or "text") of an APLe trainer."""
    return trainer._optimizers[name][0]


def test_config_node_and_shipped_configs():
    cfg = get_cfg_default()
    extend_cfg(cfg)
    m = cfg.TRAINER.APLE
    assert (m.N_CTX, m.CTX_INIT, m.PREC, m.PROMPT_DEPTH) == (2, "a photo of a", "fp16", 9)
    assert (m.ADAPTER, m.ADAPTER_SIGMA, m.ADAPTER_ALPHA) == ("paper", 0.05, 0.9)
    assert (m.LAMBDA_TEXT, m.LAMBDA_VISION, m.LAMBDA_JOINT, m.KD_TEMPERATURE) == (0.5, 0.4, 0.0, 1.0)
    assert tuple(m.STAGE_ORDER) == ("text", "vision", "joint")
    assert (m.STAGE_SCHEDULE, m.TEXT_LR_SCHEDULE, tuple(m.STAGE_EPOCHS), m.TEACHER_TEMPLATE) == (
        "iteration", "same_as_vision", (), "")
    assert set(APLe.CFG_ARGS.values()) <= set(m)  # every mapped block argument names a real key
    # the ViT-B/16 protocol configs; the toy world's toy*.yaml are checked by test_toy
    files = sorted(f for f in os.listdir(CFG_DIR) if f.startswith("vit_b16"))  # siglip_/eva02_: test_backbones_families
    for name in ["vit_b16_c2_ep5_batch4_2ctx.yaml", "vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml",
                 "vit_b16_c2_ep5_batch4_2ctx_fewshot.yaml", "vit_b16_c4_ep5_batch4_4ctx.yaml",
                 "vit_b16_c8_ep5_batch4_8ctx.yaml", "vit_b16_c16_ep5_batch4_16ctx.yaml"]:
        assert name in files
    for name in files:
        cfg = get_cfg_default()
        extend_cfg(cfg)
        merge_from_file(cfg, osp.join(CFG_DIR, name))
        assert "[R]" in open(osp.join(CFG_DIR, name)).read(), name
        assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 4 and cfg.DATALOADER.TEST.BATCH_SIZE == 100
        assert cfg.MODEL.BACKBONE.NAME == "ViT-B/16" and cfg.TRAIN.PRINT_FREQ == 20
        assert cfg.INPUT.INTERPOLATION == "bicubic" and cfg.OPTIM.WARMUP_CONS_LR == 1e-5
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, B2N_CFG)
    m = cfg.TRAINER.APLE
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, m.N_CTX, m.PROMPT_DEPTH) == (0.0035, 5, 2, 9)


def test_trainable_parameters_vit_b16_size():
    clip = build_clip_model("ViT-B/16", random_init=True)
    model = aple_model(clip, ["cat", "dog"], dataset="OxfordPets")
    pl = model.prompt_learner
    assert sum(p.numel() for p in pl.parameters()) == 23040
    assert sum(p.numel() for p in pl.text_parameters()) == 2 * 9 * 512
    assert sum(p.numel() for p in pl.vision_parameters()) == 2 * 9 * 768
    # the teacher's template: APLe's per-dataset one, unless TRAINER.APLE.TEACHER_TEMPLATE is set
    assert model.teacher_template == "a type of pet, a photo of a {}."
    assert isinstance(model.teacher, ZeroShotHead) and model.teacher.templates == [model.teacher_template]
    own = aple_model(clip, ["cat"], n=1, j=1, dataset="OxfordPets", TEACHER_TEMPLATE="itap of a {}.")
    assert own.teacher.templates == ["itap of a {}."]


@pytest.mark.parametrize("n,j", [(1, 1), (2, 9), (4, 12), (16, 5)])
def test_trainable_parameters_any_n_and_depth(tiny_clip, n, j):
    dims = model_dims(tiny_clip)
    model = aple_model(tiny_clip, ["a", "b", "c"], n, j, dataset="ImageFolder")
    pl = model.prompt_learner
    assert sum(p.numel() for p in pl.parameters()) == n * j * (dims["d_text"] + dims["d_vision"])
    assert len(pl.compound_prompts_text) == len(pl.compound_prompts_vision) == j - 1
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_context_init_and_frozen_words(tiny_clip):
    emb = tiny_clip.token_embedding.weight
    photo = tokenize("a photo of a")[0]
    pl = aple_model(tiny_clip, ["cat"], 2, 9).prompt_learner
    assert pl.prompt_prefix == "a photo of a"
    assert torch.equal(pl.compound_prompts_text_ctx.detach(), emb[photo[1:3]].detach())
    # "of a" stay frozen tokens right after the two learnable slots, then the class name
    want = tokenize("a photo of a cat.")[0]
    assert torch.equal(pl.tokenized_prompts[0], want)
    assert torch.equal(pl.token_suffix[0, :2], emb[want[3:5]].detach())
    pl16 = aple_model(tiny_clip, ["cat"], 16, 3).prompt_learner
    assert pl16.prompt_prefix == " ".join(["X"] * 16)
    assert pl16.compound_prompts_text_ctx.std().item() == pytest.approx(0.02, rel=0.3)
    with pytest.raises(ConfigError, match=r"^TRAINER\.APLE\.PROMPT_DEPTH: .*larger than"):
        aple_model(tiny_clip, ["cat"], 2, 13)
    with pytest.raises(ConfigError, match=r"^TRAINER\.APLE\.N_CTX: "):
        aple_model(tiny_clip, ["cat"], 0, 9)
    with pytest.raises(ArgError, match="^depth: "):  # the model itself names its argument
        APLeCLIP(tiny_clip, ["cat"], n_ctx=2, depth=13)


def test_prompts_are_decoupled_and_every_deep_prompt_is_used(tiny_clip):
    model = aple_model(tiny_clip, ["cat", "dog"], 2, 9)
    pl = model.prompt_learner
    model.text_features().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pl.text_parameters())
    assert all(p.grad is None for p in pl.vision_parameters())
    pl.zero_grad(set_to_none=True)
    model.image_features(torch.randn(2, 3, 224, 224)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pl.vision_parameters())
    assert all(p.grad is None for p in pl.text_parameters())
    assert not any("proj" in n for n, _ in pl.named_parameters())  # no coupling layers


def test_kd_loss_value_and_vanishing_gradient():
    z = torch.randn(5, 7, requires_grad=True)
    for t in (1.0, 2.0):
        p = F.softmax(z.detach() / t, dim=-1)
        loss = kd_loss(z, p, t)
        (g,) = torch.autograd.grad(loss, z)
        entropy = -(p * p.log()).sum(-1).mean() * t * t
        assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)
        assert g.abs().max().item() < 1e-6
    q = F.softmax(torch.randn(5, 7), dim=-1)
    want = (-(q * F.log_softmax(z, -1)).sum(-1)).mean()
    assert kd_loss(z, q).item() == pytest.approx(want.item(), rel=1e-6)


def test_teacher_is_zero_shot_clip_on_unadapted_images(data_root, tmp_path):
    tr = build_tiny_trainer(data_root, tmp_path)
    model = tr.model
    img, lab = first_batch(tr)
    seen = {}
    for name, enc in (("teacher", model.teacher.image_encoder), ("student", model.image_encoder)):
        orig = enc.forward

        def spy(x, *a, _orig=orig, _name=name, **k):
            seen.setdefault(_name, []).append(x.detach().clone())
            return _orig(x, *a, **k)

        enc.forward = spy
    assert model.teacher.features is None  # lazily: not computed before the first training step
    tr.set_model_mode("train")
    tr.run_stages(img, lab, ["text", "vision", "joint"])
    assert len(seen["teacher"]) == 1 and torch.equal(seen["teacher"][0], img)
    adapted = model.adapter(img)
    assert not torch.allclose(adapted, img)
    assert len(seen["student"]) == 2 and all(torch.equal(x, adapted) for x in seen["student"])
    # the teacher = zero-shot CLIP with APLe's template; its features are not checkpointed
    clip = model.teacher._clip_model
    with torch.no_grad():
        f = F.normalize(clip.encode_image(img).float(), dim=-1)
        w = encode_class_texts(clip, tr.dm.dataset.classnames, "a photo of a {}.")
        want = clip.logit_scale.exp() * f @ w.t()
        assert torch.allclose(model.teacher_logits(img), want, atol=1e-4)
    assert model.teacher.features is not None and model.teacher.features.shape[0] == 6
    assert not any(k.endswith("features") for k in model.state_dict())
    assert not any("teacher" in k or "features" in k for k in tr._models["MultiModalPromptLearner"].state_dict())
    model.set_classnames(["x", "y"])
    assert model.teacher.features is None  # recomputed for the new class list when needed
    assert model.teacher.classnames == ["x", "y"]
    with torch.no_grad():
        assert model.teacher_logits(img).shape == (img.shape[0], 2)


def test_each_stage_updates_only_its_prompts(data_root, tmp_path):
    tr = build_tiny_trainer(data_root, tmp_path)
    pl = tr.model.prompt_learner
    names = [n for n, _ in pl.named_parameters()]
    img, lab = first_batch(tr)
    tr.set_model_mode("train")
    for stages, expect in [(["text"], TEXT_KEYS(names)), (["vision"], VISION_KEYS(names)), (["joint"], names)]:
        pl.zero_grad(set_to_none=True)
        before = snapshot(pl)
        summary = tr.run_stages(img, lab, stages)
        after = snapshot(pl)
        changed = sorted(n for n in names if not torch.equal(before[n], after[n]))
        assert changed == sorted(expect), stages
        # no backward through the encoder of the modality that the stage does not update
        with_grad = sorted(n for n, p in pl.named_parameters() if p.grad is not None)
        assert with_grad == sorted(expect), stages
        assert set(summary) == ({"loss", f"kd_{stages[0]}"} if stages[0] != "joint" else {"loss"})


def _count_calls(module):
    calls = []
    orig = module.forward

    def counted(*a, **k):
        calls.append(torch.is_grad_enabled())
        return orig(*a, **k)

    module.forward = counted
    return calls


def test_shared_passes_equal_the_naive_schedule(data_root, tmp_path):
    torch.manual_seed(0)
    a = build_tiny_trainer(data_root, tmp_path / "a")
    torch.manual_seed(0)
    b = build_tiny_trainer(data_root, tmp_path / "b")
    pa, pb = a.model.prompt_learner, b.model.prompt_learner
    for (na, x), (nb, y) in zip(pa.named_parameters(), pb.named_parameters()):
        assert na == nb and torch.equal(x, y)
    img, lab = first_batch(a)
    start = snapshot(pa)
    a.set_model_mode("train")
    b.set_model_mode("train")
    counts = {k: _count_calls(m) for k, m in (("text", a.model.text_encoder), ("image", a.model.image_encoder),
                                               ("teacher", a.model.teacher.image_encoder))}
    for _ in range(2):  # two batches: the optimisers' momentum is exercised too
        a.run_stages(img, lab, ["text", "vision", "joint"])
    # per batch: 2 text + 2 image forwards (all with a graph), 1 teacher forward (no grad)
    assert counts["text"] == [True] * 4 and counts["image"] == [True] * 4
    assert counts["teacher"] == [False] * 2
    # naive: three full student passes per batch, the public code's way
    model = b.model
    text, vision = optim(b, "text"), optim(b, "vision")
    for _ in range(2):
        with torch.no_grad():
            p = F.softmax(model.teacher_logits(img), dim=-1)
        for lam, opts in [(0.5, [text]), (0.4, [vision]), (0.0, [text, vision])]:
            logits = model(img)
            loss = F.cross_entropy(logits, lab) + lam * kd_loss(logits, p)
            text.zero_grad()
            vision.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
    moved = max((start[n] - x).abs().max().item() for n, x in pa.named_parameters())
    assert moved > 1e-3
    for (n, x), (_, y) in zip(pa.named_parameters(), pb.named_parameters()):
        assert torch.allclose(x, y, atol=1e-6, rtol=1e-5), n


def test_two_named_optimisers_and_their_lr_schedules(data_root, tmp_path):
    opts = ["OPTIM.WARMUP_EPOCH", "1", "OPTIM.LR", "0.01", "OPTIM.MAX_EPOCH", "3"]
    tr = build_tiny_trainer(data_root, tmp_path / "s", opts)
    tc = build_tiny_trainer(data_root, tmp_path / "c", opts + ["TRAINER.APLE.TEXT_LR_SCHEDULE", "constant"])
    # "vision" is the model's first optimiser (Dassl's checkpoint slots), "text" a further named one
    assert list(tr._optimizers) == ["vision", "text"]
    assert [o[2:] for o in tr._optimizers.values()] == [("MultiModalPromptLearner", True),
                                                        ("MultiModalPromptLearner", False)]
    assert tr.optim is optim(tr, "vision")
    pl = tr.model.prompt_learner
    for name, params in (("vision", pl.vision_parameters()), ("text", pl.text_parameters())):
        assert [id(p) for g in optim(tr, name).param_groups for p in g["params"]] == [id(p) for p in params]
    assert tc._optimizers["text"][1] is None  # constant: no scheduler for the text prompts
    lr = lambda o: o.param_groups[0]["lr"]  # noqa: E731
    seq_v, seq_t, seq_c = [], [], []
    for _ in range(3):
        seq_v.append(lr(optim(tr, "vision")))
        seq_t.append(lr(optim(tr, "text")))
        seq_c.append(lr(optim(tc, "text")))
        assert lr(optim(tc, "vision")) == seq_v[-1]
        tr.update_lr()
        tc.update_lr()
    assert seq_v[0] == 1e-5 and seq_v[1] == pytest.approx(0.01) and seq_v[2] < 0.01
    assert seq_t == seq_v
    assert seq_c == [0.01] * 3
    assert tr.get_current_lr() == lr(optim(tr, "vision"))


def test_epoch_wise_stage_schedule(data_root, tmp_path):
    assert stage_epochs(["text", "vision", "joint"], 5) == ["text", "text", "vision", "vision", "joint"]
    assert stage_epochs(["text", "vision", "joint"], 5, (1, 1, 3)) == ["text", "vision", "joint", "joint", "joint"]
    with pytest.raises(ValueError, match="STAGE_EPOCHS"):
        stage_epochs(["text", "vision", "joint"], 5, (1, 1))
    with pytest.raises(ValueError, match="too short"):
        stage_epochs(["text", "vision", "joint"], 2)
    tr = build_tiny_trainer(data_root, tmp_path, ["TRAINER.APLE.STAGE_SCHEDULE", "epoch", "OPTIM.MAX_EPOCH", "3"])
    assert [tr.stages_for_epoch(e) for e in range(3)] == [["text"], ["vision"], ["joint"]]
    assert tr.stages_for_epoch(0) != tr.stage_order
    # one stage per epoch: an epoch-0 batch steps only the text optimiser
    pl = tr.model.prompt_learner
    before = snapshot(pl)
    tr.set_model_mode("train")
    tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 1
    summary = tr.forward_backward(next(iter(tr.train_loader_x)))
    changed = sorted(n for n, p in pl.named_parameters() if not torch.equal(before[n], p.detach()))
    assert changed == sorted(TEXT_KEYS(before)) and set(summary) == {"loss", "kd_text"}


@pytest.mark.parametrize("key,value", [
    ("ADAPTER", "lowpass"),
    ("ADAPTER_SIGMA", "-0.1"),
    ("ADAPTER_ALPHA", "1.5"),
    ("TEXT_LR_SCHEDULE", "cosine"),
    ("STAGE_SCHEDULE", "batch"),
    ("STAGE_ORDER", "('text', 'image')"),
    ("LAMBDA_TEXT", "-1.0"),
    ("KD_TEMPERATURE", "0.0"),
    ("STAGE_EPOCHS", "(1, 1, 3)"),
    ("TEACHER_TEMPLATE", "a photo"),
    ("PROMPT_DEPTH", "13"),
    ("PREC", "fp8"),
])
def test_bad_settings_are_refused(data_root, tmp_path, key, value):
    cfg = make_cfg(data_root, trainer="APLe", folder="six", output_dir=str(tmp_path),
                   opts=[f"TRAINER.APLE.{key}", value])
    with pytest.raises(ConfigError, match=rf"TRAINER\.APLE\.{key}\b"):
        try:
            build_trainer(cfg)
        finally:
            restore_stdout()


@pytest.mark.parametrize("opts", [
    ["TRAINER.APLE.STAGE_SCHEDULE", "epoch", "OPTIM.MAX_EPOCH", "2"],
    ["TRAINER.APLE.STAGE_SCHEDULE", "epoch", "OPTIM.MAX_EPOCH", "5", "TRAINER.APLE.STAGE_EPOCHS", "(1, 1)"],
])
def test_bad_epoch_wise_schedule_is_a_config_error(data_root, tmp_path, opts):
    cfg = make_cfg(data_root, trainer="APLe", folder="six", output_dir=str(tmp_path), opts=opts)
    with pytest.raises(ConfigError, match=r"TRAINER\.APLE\.STAGE_EPOCHS|OPTIM\.MAX_EPOCH"):
        try:
            build_trainer(cfg)
        finally:
            restore_stdout()


def test_eval_forward_applies_the_adapter_and_caches_text(data_root, tmp_path):
    tr = build_tiny_trainer(data_root, tmp_path)
    model = tr.model
    img, _ = first_batch(tr)
    tr.set_model_mode("eval")
    calls = _count_calls(model.text_encoder)
    with torch.no_grad():
        out = tr.model_inference(img)
        out2 = tr.model_inference(img)
        want = model.logits(model.image_features(model.adapter(img)), model.text_features())
        plain = model.logits(model.image_features(img), model.text_features())
    assert torch.allclose(out, want, atol=1e-5) and torch.equal(out, out2)
    assert not torch.allclose(out, plain, atol=1e-5)
    assert len(calls) == 3  # once for both inference calls (cached), twice for `want`/`plain`


# ---- end to end through train.py -------------------------------------------------------------


def run_cli(argv):
    try:
        return train_mod.cli(argv)
    finally:
        restore_stdout()


@pytest.fixture(scope="module")
def dataset_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("aple_cfg") / "six.yaml"
    p.write_text('DATASET:\n  NAME: "ImageFolder"\n  FOLDER: "six"\n')
    return str(p)


TINY_OPTS = ["MODEL.BACKBONE.NAME", "test-vit-tiny", "USE_CUDA", "False", "OPTIM.MAX_EPOCH", "2",
             "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "16", "TRAIN.PRINT_FREQ", "1",
             "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.LR", "0.05", "DATASET.NUM_SHOTS", "4"]


def train_args(data_root, dataset_yaml, out, extra=()):
    return ["--root", str(data_root), "--seed", "1", "--trainer", "APLe", "--dataset-config-file", dataset_yaml,
            "--config-file", B2N_CFG, "--output-dir", str(out), *TINY_OPTS, "DATASET.SUBSAMPLE_CLASSES", "base",
            *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root, dataset_yaml):
    out = tmp_path_factory.mktemp("aple_runs") / "train_base"
    assert run_cli(train_args(data_root, dataset_yaml, out)) == 0
    return out


def test_train_and_eval_end_to_end_with_checkpoint_contents(finished_run):
    out = finished_run
    log = (out / "log.txt").read_text()
    assert "Token-wise schedule per iteration: text (CE + 0.5 KD) -> vision (CE + 0.4 KD) -> joint (CE)" in log
    assert "Number of trainable parameters: 1,440" in log
    assert "Text prompts: 576 parameters; vision prompts: 864 parameters" in log
    assert "epoch [2/2] batch [3/3]" in log and "kd_text" in log and "kd_vision" in log
    assert "Finish training" in log and "* accuracy:" in log
    res = json.loads((out / "results.json").read_text())
    assert res["trainer"] == "APLe" and res["num_classes"] == 3 and res["epochs"] == 2
    assert res["extra"]["trainable_params"] == 1440
    assert res["extra"]["trainable_params_text"] == 2 * 9 * 32
    assert res["extra"]["trainable_params_vision"] == 2 * 9 * 48
    ckpt = load_checkpoint(str(out / "MultiModalPromptLearner" / "model.pth.tar-2"))
    keys = set(ckpt["state_dict"])
    assert keys == {"compound_prompts_text_ctx", "compound_prompts_vision_shareI"} | {
        f"compound_prompts_{m}.{i}" for m in ("text", "vision") for i in range(8)}
    assert sum(v.numel() for v in ckpt["state_dict"].values()) == 1440
    # both optimisers and schedulers are in the checkpoint: "vision" in Dassl's slots, "text" by name
    assert "extra" not in ckpt and set(ckpt["optimizers"]) == {"text"}
    text = ckpt["optimizers"]["text"]
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == 9
    assert len(text["optimizer"]["param_groups"][0]["params"]) == 9
    assert text["optimizer"]["state"] and ckpt["optimizer"]["state"]
    assert text["scheduler"] == ckpt["scheduler"]  # same_as_vision: identical schedules
    assert ckpt["scheduler"]["_last_lr"] == [0.025]  # cosine, 2 epochs, after the last epoch's step


def test_official_whole_model_checkpoint_layout_loads(tmp_path, finished_run, data_root):
    ckpt = load_checkpoint(str(finished_run / "MultiModalPromptLearner" / "model.pth.tar-2"))
    legacy = {f"prompt_learner.{k}": v.half() for k, v in ckpt["state_dict"].items()}
    legacy["prompt_learner.token_prefix"] = torch.zeros(100, 1, 32)
    legacy["image_encoder.conv1.weight"] = torch.zeros(3)
    os.makedirs(tmp_path / "legacy" / "MultiModalPromptLearner")
    torch.save({"state_dict": legacy, "epoch": 5}, tmp_path / "legacy" / "MultiModalPromptLearner" / "model.pth.tar-5")
    tr = build_tiny_trainer(data_root, tmp_path)
    tr.load_model(str(tmp_path / "legacy"), epoch=5)
    for k, v in tr.model.prompt_learner.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k].half().float()), k


def _assert_same_run(a_dir, b_dir):
    """The prompts, both optimisers' momentum and the test metrics of two runs are identical."""
    a = load_checkpoint(str(a_dir / "MultiModalPromptLearner" / "model.pth.tar-2"))
    b = load_checkpoint(str(b_dir / "MultiModalPromptLearner" / "model.pth.tar-2"))
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in ((a["optimizer"], b["optimizer"]),
                   (a["optimizers"]["text"]["optimizer"], b["optimizers"]["text"]["optimizer"])):
        assert sa["state"]
        for i, st in sa["state"].items():
            assert torch.equal(st["momentum_buffer"], sb["state"][i]["momentum_buffer"]), i
    assert a["optimizers"]["text"]["scheduler"] == b["optimizers"]["text"]["scheduler"]
    ra = json.loads((a_dir / "results.json").read_text())["metrics"]
    rb = json.loads((b_dir / "results.json").read_text())["metrics"]
    assert ra == rb


def test_kill_and_resume_restores_both_optimisers(tmp_path, finished_run, data_root, dataset_yaml, monkeypatch):
    crashed = tmp_path / "crashed"
    orig = APLe.forward_backward

    def dying(self, batch):
        if (self.epoch, self.batch_idx) == (1, 1):
            raise KeyboardInterrupt("simulated crash")
        return orig(self, batch)

    monkeypatch.setattr(APLe, "forward_backward", dying)
    with pytest.raises(KeyboardInterrupt):
        run_cli(train_args(data_root, dataset_yaml, crashed))
    monkeypatch.setattr(APLe, "forward_backward", orig)
    folder = crashed / "MultiModalPromptLearner"
    assert (folder / "checkpoint").read_text().strip() == "model.pth.tar-1"
    saved = load_checkpoint(str(folder / "model.pth.tar-1"))
    assert saved["epoch"] == 1 and saved["optimizers"]["text"]["optimizer"]["state"]

    # a checkpoint without the text optimiser's state is refused, not silently resumed
    broken = tmp_path / "broken" / "MultiModalPromptLearner"
    shutil.copytree(folder, broken)
    c = dict(saved)
    del c["optimizers"]
    torch.save(c, broken / "model.pth.tar-1")
    cfg = make_cfg(data_root, trainer="APLe", folder="six", output_dir=str(tmp_path / "x"),
                   opts=["TRAINER.APLE.PREC", "fp32"])
    tr = build_trainer(cfg)
    restore_stdout()
    with pytest.raises(RuntimeError, match='holds no state for the optimiser "text"'):
        tr.resume_model_if_exist(str(broken.parent))

    # a checkpoint of the layout before named optimisers (text optimiser under "extra") still resumes
    old = tmp_path / "old"
    shutil.copytree(crashed, old)
    c = dict(saved)
    text = c.pop("optimizers")["text"]
    c["extra"] = {"optim_text": text["optimizer"], "sched_text": text["scheduler"]}
    torch.save(c, old / "MultiModalPromptLearner" / "model.pth.tar-1")
    # resume after a crash mid-epoch: the result equals the uninterrupted run's, prompts and both
    # optimisers' states (the new layout's resume is also checked bit for bit by test_contract)
    assert run_cli(train_args(data_root, dataset_yaml, old)) == 0
    log2 = sorted(f for f in os.listdir(old) if f.startswith("log.txt-"))[0]
    text = (old / log2).read_text()
    assert "Previous epoch: 1" in text and "Loaded optimizer text" in text and "Loaded scheduler text" in text
    _assert_same_run(finished_run, old)


def test_fp16_weights_and_autocast_precisions(tiny_clip, data_root, tmp_path):
    from vlprompt.clip import Precision, convert_clip_to_fp16

    clip16 = convert_clip_to_fp16(build_clip_model("test-vit-tiny"))
    model = aple_model(clip16, ["a", "b", "c"])
    x = torch.randn(2, 3, 224, 224)
    z = model(x)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert model.teacher_logits(x).dtype == torch.float32
    z.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.prompt_learner.parameters())
    # bf16 / amp autocast (on a CPU amp is bf16 autocast) through the token-wise step, and the engine's
    # GradScaler path of every stage (a scaler given explicitly: CUDA amp uses one)
    tr = build_tiny_trainer(data_root, tmp_path)
    img, lab = first_batch(tr)
    tr.set_model_mode("train")
    for prec in ("bf16", "amp", "scaler"):
        tr.precision = Precision("fp32" if prec == "scaler" else prec, "cpu", allow_cpu=True)
        tr.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if prec == "scaler" else tr.precision.make_scaler()
        before = snapshot(tr.model.prompt_learner)
        summary = tr.run_stages(img, lab, ["text", "vision", "joint"])
        assert all(math.isfinite(v) for v in summary.values())
        after = snapshot(tr.model.prompt_learner)
        assert all(not torch.equal(before[n], after[n]) for n in before), prec


def test_scripts_follow_the_coop_output_tree():
    import subprocess

    from tests import procs

    env = dict(os.environ, DRY_RUN="1", PYTHON=procs.executable())  # the sweep's planner, forked (tests/procs.py)

    def dry(*args):
        out = subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        return [line.strip() for line in out.strip().splitlines()]

    b2n = dry("scripts/aple/base2new.sh", "/data", "dtd", "2")
    assert len(b2n) == 2
    assert "--output-dir output/base2new/train_base/dtd/shots_16/APLe/vit_b16_c2_ep5_batch4_2ctx/seed2" in b2n[0]
    assert "DATASET.SUBSAMPLE_CLASSES base" in b2n[0]
    assert ("--output-dir output/base2new/test_new/dtd/shots_16/APLe/vit_b16_c2_ep5_batch4_2ctx/seed2 --model-dir "
            "output/base2new/train_base/dtd/shots_16/APLe/vit_b16_c2_ep5_batch4_2ctx/seed2 --load-epoch 5 --eval-only "
            "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new") in b2n[1]
    xd = dry("scripts/aple/cross_dataset.sh", "/data", "1")
    model_dir = "output/imagenet/APLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/seed1"
    assert f"--output-dir {model_dir} DATASET.NUM_SHOTS 16" in xd[0] and "imagenet.yaml" in xd[0]
    assert len(xd) == 11 and all(f"--model-dir {model_dir} --load-epoch 5 --eval-only" in c for c in xd[1:])
    assert "output/evaluation/APLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/eurosat/seed1" in " ".join(xd)
    dg = dry("scripts/aple/domain_generalization.sh", "/data", "1")
    assert [c.split("configs/datasets/")[1].split(".yaml")[0] for c in dg] == [
        "imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    fs = dry("scripts/aple/few_shot.sh", "/data", "eurosat", "3", "TRAINER.APLE.ADAPTER", "reference_code")
    # trailing options are encoded in the config folder (a variant never lands in the default run's folder)
    assert len(fs) == 5 and "few_shot/eurosat/APLe/vit_b16_c2_ep5_batch4_2ctx_fewshot_adapterreference_code/shots_8/seed3" in fs[3]
    assert fs[3].endswith("DATASET.NUM_SHOTS 8 TRAINER.APLE.ADAPTER reference_code")
    pl = dry("scripts/aple/prompt_length.sh", "/data", "dtd", "1")
    assert len(pl) == 8 and "vit_b16_c16_ep5_batch4_16ctx.yaml" in pl[-1]
