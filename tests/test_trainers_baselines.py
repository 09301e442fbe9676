"""Baseline trainers CoOp, CoCoOp, MaPLe, IVLP and VPT (trainers/*.py) on random backbones.

What is method-specific (the generic build / one-step update / checkpoint onto another class list /
kill-and-resume checks of every trainer are in tests/test_contract.py): trainable parameters (names
and counts at ViT-B/16 size against the papers and official code), token positions that change
between layers, frozen "of a" tokens, gradients reaching exactly the learnable prompts, logits for
any class count, CoCoOp's batched pass vs. the per-image loop, eval-time text caching, official
registered model names and checkpoint layouts, config nodes and yaml files, precision paths, errors
naming the config key (through the trainer) or the argument (the blocks themselves).
"""
import glob
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401  (registers the trainers and their config nodes)
from tests.helpers import make_cfg, make_image_folder, method_model, small_resnet_clip
from trainers.coop import CoOpPromptLearner
from trainers.maple import CoupledPrompts
from vlprompt.clip import ArgError, IndependentPrompts, Precision, VisionPrompts, build_clip_model, model_dims, tokenize
from vlprompt.config import ConfigError, extend_cfg, get_cfg_default, merge_from_file
from vlprompt.engine import TRAINER_REGISTRY, build_trainer
from vlprompt.utils import restore_stdout, save_checkpoint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ["dog", "sea_lion", "golden retriever"]


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
# trainable parameters at ViT-B/16 size (CoOp/CoCoOp/MaPLe papers, the official configs)
# ------------------------------------------------------------------------------------------------


def test_parameter_counts_vit_b16(vitb16):
    d = model_dims(vitb16)
    assert (d["d_text"], d["d_vision"], d["d_embed"]) == (512, 768, 512)
    assert n_learnable(method_model("CoOp", vitb16, CLASSES)) == 16 * 512
    assert n_learnable(method_model("CoOp", vitb16, CLASSES, CTX_INIT="a photo of a")) == 4 * 512
    assert n_learnable(method_model("CoOp", vitb16, CLASSES, CSC=True)) == 3 * 16 * 512
    cocoop = method_model("CoCoOp", vitb16, CLASSES, N_CTX=4, CTX_INIT="a photo of a")
    assert n_learnable(cocoop) == 35_360
    maple = method_model("MaPLe", vitb16, CLASSES)
    assert n_learnable(maple) == 3_555_072
    assert n_learnable(method_model("MaPLe", vitb16, CLASSES, PROMPT_DEPTH=3)) == 1_185_024
    ivlp = method_model("IVLP", vitb16, CLASSES, PROMPT_DEPTH_TEXT=12, PROMPT_DEPTH_VISION=12)
    assert n_learnable(ivlp) == 30_720
    lang = method_model("IVLP", vitb16, CLASSES, N_CTX_TEXT=4, N_CTX_VISION=0, PROMPT_DEPTH_TEXT=12,
                        PROMPT_DEPTH_VISION=0)
    assert n_learnable(lang) == 24_576
    vpt = method_model("VPT", vitb16, CLASSES, N_CTX_VISION=8, PROMPT_DEPTH_VISION=12)
    assert n_learnable(vpt) == 73_728
    # the state dicts hold only learnable tensors (no class buffers, no CLIP weights)
    assert set(maple.prompt_learner.state_dict()) == {n for n, _ in maple.prompt_learner.named_parameters()}
    assert set(vpt.prompt_learner.state_dict()) == {"vision_ctx"} | {f"deep_vision_prompts.{i}" for i in range(11)}
    # the shared blocks, built directly from plain arguments, are the same learners
    assert isinstance(maple.prompt_learner, CoupledPrompts) and isinstance(ivlp.prompt_learner, IndependentPrompts)
    assert isinstance(vpt.prompt_learner, VisionPrompts)
    assert (ivlp.prompt_learner.text_geometry, ivlp.prompt_learner.vision_geometry) == ((2, 12), (2, 12))
    assert (lang.prompt_learner.text_geometry, lang.prompt_learner.vision_geometry) == ((4, 12), (0, 0))
    assert not lang.prompts_vision and vpt.fixed_text is not None and vpt.prompts_vision


def test_official_registered_model_names():
    # the checkpoint sub-folders of the official repositories (their checkpoints load from them)
    want = {"CoOp": "prompt_learner", "CoCoOp": "prompt_learner", "MaPLe": "MultiModalPromptLearner",
            "IVLP": "VLPromptLearner", "VPT": "prompt_learner"}
    assert {name: TRAINER_REGISTRY.get(name).MODEL_NAME for name in want} == want


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
        model = method_model("MaPLe", tiny, CLASSES, N_CTX=2, PROMPT_DEPTH=9)
        deep_t = list(model.prompt_learner.compound_prompts_text)
        shared, deep_v = model.prompt_learner.vision_prompts()
    else:
        model = method_model("IVLP", tiny, CLASSES, PROMPT_DEPTH_TEXT=9, PROMPT_DEPTH_VISION=5)
        deep_t = list(model.prompt_learner.deep_text_prompts)
        shared, deep_v = model.prompt_learner.vision_prompts()
    J_t, J_v = len(deep_t) + 1, len(deep_v) + 1
    assert (J_t, J_v) == ((9, 9) if kind == "maple" else (9, 5))
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
        "CoOp": method_model("CoOp", tiny, CLASSES, N_CTX=4, CLASS_TOKEN_POSITION="middle"),
        "CoOp-csc": method_model("CoOp", tiny, CLASSES, N_CTX=3, CSC=True, CLASS_TOKEN_POSITION="front"),
        "CoCoOp": method_model("CoCoOp", tiny, CLASSES, N_CTX=4, CTX_INIT="a photo of a", CHUNK_SIZE=4),
        "MaPLe": method_model("MaPLe", tiny, CLASSES, PROMPT_DEPTH=9),
        "IVLP": method_model("IVLP", tiny, CLASSES),
        "IVLP-lang": method_model("IVLP", tiny, CLASSES, N_CTX_TEXT=4, N_CTX_VISION=0, PROMPT_DEPTH_VISION=0),
        "VPT": method_model("VPT", tiny, CLASSES, N_CTX_VISION=3, PROMPT_DEPTH_VISION=4),
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
    csc = make_models(tiny)["CoOp-csc"]
    csc.set_classnames(["one"])
    with pytest.raises(RuntimeError, match="learned for 3 classes but the current label space has 1"):
        csc(images)


def test_coop_class_token_positions(tiny):
    for position in ("end", "middle", "front"):
        model = method_model("CoOp", tiny, ["sea_lion", "cat"], N_CTX=4, CLASS_TOKEN_POSITION=position)
        pl = model.prompt_learner
        prompts = pl()
        emb = tiny.token_embedding.weight
        name = emb[tokenize("sea lion")[0][1:3]]  # 2 tokens
        ctx = pl.ctx
        expected = {"end": [ctx, name], "middle": [ctx[:2], name, ctx[2:]], "front": [name, ctx]}[position]
        torch.testing.assert_close(prompts[0, 1:7], torch.cat(expected))
        torch.testing.assert_close(prompts[0, 7:], pl.token_suffix[0, 2: 2 + prompts.shape[1] - 7])
        assert int(pl.eot_idx[0]) == 8  # [SOS, 4 ctx, sea, lion, ".", EOT]
        # the model's text side encodes exactly these prompts
        torch.testing.assert_close(model.text_features(), model.text_encoder(prompts, pl.eot_idx))


def test_cocoop_batched_pass_equals_per_image_loop(tiny, images):
    for chunk in (1, 4, 0):
        torch.manual_seed(0)
        model = method_model("CoCoOp", tiny, CLASSES, N_CTX=4, CTX_INIT="a photo of a", CHUNK_SIZE=chunk)
        assert model.chunk_size == chunk
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
    model = method_model("MaPLe", tiny, CLASSES)
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


def test_bad_inputs_raise_errors_naming_the_config_key(tiny, images):
    # through the trainer (custom_clip): ConfigError (a ValueError) naming TRAINER.<NODE>.<KEY>
    cases = [
        ("MaPLe", dict(PROMPT_DEPTH=13), r"TRAINER\.MAPLE\.PROMPT_DEPTH: .*larger than the number of transformer layers"),
        ("MaPLe", dict(PROMPT_DEPTH=0), r"TRAINER\.MAPLE\.PROMPT_DEPTH: .*between 1 and 12"),
        ("MaPLe", dict(N_CTX=0), r"TRAINER\.MAPLE\.N_CTX: .*>= 1"),
        ("CoOp", dict(N_CTX=0), r"TRAINER\.COOP\.N_CTX: must be >= 1"),
        ("CoOp", dict(CLASS_TOKEN_POSITION="left"), r"TRAINER\.COOP\.CLASS_TOKEN_POSITION: must be one of .*'left'"),
        ("CoCoOp", dict(CHUNK_SIZE=-1), r"TRAINER\.COCOOP\.CHUNK_SIZE: must be >= 0"),
        ("IVLP", dict(PROMPT_DEPTH_VISION=20), r"TRAINER\.IVLP\.PROMPT_DEPTH_VISION: .*larger than"),
        ("IVLP", dict(PROMPT_DEPTH_TEXT=13), r"TRAINER\.IVLP\.PROMPT_DEPTH_TEXT: .*larger than"),
        ("IVLP", dict(N_CTX_TEXT=0), r"TRAINER\.IVLP\.N_CTX_TEXT: "),
        ("VPT", dict(PROMPT_DEPTH_VISION=13), r"TRAINER\.VPT\.PROMPT_DEPTH_VISION: .*larger than"),
        ("VPT", dict(N_CTX_VISION=0), r"TRAINER\.VPT\.N_CTX_VISION: "),
    ]
    for name, overrides, match in cases:
        with pytest.raises(ConfigError, match=match):
            method_model(name, tiny, CLASSES, **overrides)
    assert issubclass(ConfigError, ValueError)
    # the blocks themselves name their argument (ArgError), never a config key
    with pytest.raises(ArgError, match="^depth: ") as e:
        CoupledPrompts(tiny, CLASSES, n_ctx=2, depth=13)
    assert e.value.arg == "depth" and "TRAINER" not in str(e.value)
    with pytest.raises(ArgError) as e:
        CoOpPromptLearner(tiny, CLASSES, class_token_position="left")
    assert e.value.arg == "class_token_position"
    with pytest.raises(ArgError) as e:
        IndependentPrompts(tiny, CLASSES, depth_vision=20)
    assert e.value.arg == "depth_vision"
    # the vision-prompting methods need a ViT image tower
    rn = small_resnet_clip()  # 2 text layers
    for name, overrides in (("MaPLe", {}), ("IVLP", dict(PROMPT_DEPTH_TEXT=2)), ("VPT", {})):
        with pytest.raises(ConfigError, match=f"^{name}: backbone: .*prompts the image tower.*takes no prompts"):
            method_model(name, rn, CLASSES, **overrides)
    # CoOp / CoCoOp run on a ResNet image tower
    for model in (method_model("CoOp", rn, CLASSES, N_CTX=2), method_model("CoCoOp", rn, CLASSES, N_CTX=2)):
        with torch.no_grad():
            assert model.eval()(images[:1]).shape == (1, 3)


def test_ivlp_language_only_runs_on_a_resnet_image_tower(images):
    # deep language prompting prompts no image layer, so (as before the method kit) any image tower works
    model = method_model("IVLP", small_resnet_clip(), CLASSES, PROMPT_DEPTH_TEXT=2, N_CTX_VISION=0,
                         PROMPT_DEPTH_VISION=0)
    with torch.no_grad():
        assert model.eval()(images[:1]).shape == (1, 3)


def test_fp16_weights_with_fp32_prompts(images):
    m = build_clip_model("test-vit-tiny")
    Precision("fp16", "cpu", allow_cpu=True).prepare_clip(m)
    for p in m.parameters():
        p.requires_grad_(False)
    model = method_model("MaPLe", m, CLASSES)
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
    assert dict(t.COCOOP) == dict(N_CTX=16, CTX_INIT="", PREC="fp16", CHUNK_SIZE=2048)  # CHUNK_SIZE: vlprompt's
    assert dict(t.MAPLE) == dict(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9)
    assert dict(t.IVLP) == dict(N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16",
                                PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9)
    assert dict(t.VPT) == dict(N_CTX_VISION=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH_VISION=1)
    for name in ("CoOp", "CoCoOp", "MaPLe", "IVLP", "VPT"):
        assert name in TRAINER_REGISTRY
        cls = TRAINER_REGISTRY.get(name)
        # every block argument a trainer maps names a key of its node (errors name real keys)
        assert set(cls.CFG_ARGS.values()) <= set(t[cls.CFG_NODE]), name


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
    seen = set()
    for f in ours:
        cfg = get_cfg_default()
        extend_cfg(cfg)
        merge_from_file(cfg, f)
        assert cfg.INPUT.SIZE == (224, 224) and cfg.INPUT.INTERPOLATION == "bicubic"
        key = osp.relpath(f, osp.join(ROOT, "configs", "trainers"))[:-5]
        if key in EXPECTED_YAML:
            seen.add(key)
            e = EXPECTED_YAML[key]
            assert cfg.OPTIM.LR == e["lr"] and cfg.OPTIM.MAX_EPOCH == e["ep"], key
            assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == e["bs"], key
            node, k, v = e["node"]
            assert cfg.TRAINER[node][k] == v, key
            assert cfg.TRAINER[node].PREC == "fp16"
    assert seen == set(EXPECTED_YAML)


# ------------------------------------------------------------------------------------------------
# trainers: official checkpoint layouts, the CoOp step (amp, non-finite loss), errors at build time
# ------------------------------------------------------------------------------------------------

TRAINERS = {
    "CoOp": ["TRAINER.COOP.N_CTX", 4],
    "MaPLe": [],
    "IVLP": ["TRAINER.IVLP.PROMPT_DEPTH_VISION", 4],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_image_folder(str(root / "four"), n_classes=4, n_per_class=5)
    return root


def build(data_root, out, name, subsample="all", extra=()):
    cfg = make_cfg(data_root, trainer=name, folder="four", output_dir=out,
                   opts=list(TRAINERS.get(name, [])) + ["OPTIM.MAX_EPOCH", 1, "DATASET.SUBSAMPLE_CLASSES", subsample]
                   + list(extra))
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_load_official_layouts_and_reject_mismatched_checkpoints(tmp_path, data_root):
    tr = build(data_root, tmp_path / "m", "MaPLe")
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
    iv = build(data_root, tmp_path / "i", "IVLP")
    sd = iv.model.prompt_learner.state_dict()
    official = {"prompt_learner.ctx": sd["ctx"] * 0 + 3, "image_encoder.VPT": sd["vision_ctx"] * 0 + 4}
    for i in range(1, 9):
        official[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = sd[f"deep_text_prompts.{i - 1}"] * 0 + 5
    for i in range(1, 4):
        official[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = sd[f"deep_vision_prompts.{i - 1}"] * 0 + 6
    save_checkpoint({"state_dict": official, "epoch": 5}, str(tmp_path / "iv" / "VLPromptLearner"))
    iv.load_model(str(tmp_path / "iv"), epoch=5)
    pl = iv.model.prompt_learner.requires_grad_(False)
    assert float(pl.ctx[0, 0]) == 3.0 and float(pl.vision_ctx[0, 0]) == 4.0
    assert all(float(p[0, 0]) == 5.0 for p in pl.deep_text_prompts)
    assert all(float(p[0, 0]) == 6.0 for p in pl.deep_vision_prompts)
    # a checkpoint from other prompt settings fails loudly
    bad = dict(own)
    bad["ctx"] = torch.zeros(4, 32)
    del bad["proj.bias"]
    save_checkpoint({"state_dict": bad, "epoch": 1}, str(tmp_path / "bad" / "MultiModalPromptLearner"))
    with pytest.raises(RuntimeError, match=r"(?s)missing from the checkpoint: \['proj.bias'\].*another shape: ctx"):
        tr.load_model(str(tmp_path / "bad"), epoch=1)
    # a missing epoch names the file and what is there
    with pytest.raises(FileNotFoundError, match=r"Model not found at .*model\.pth\.tar-7.*available: \['model\.pth\.tar-1'\]"):
        tr.load_model(str(tmp_path / "bad"), epoch=7)


def test_coop_step_amp_scaler_and_non_finite_loss(tmp_path, data_root):
    tr = build(data_root, tmp_path / "p", "CoOp")
    assert list(tr._optimizers) == ["prompt_learner"]
    tr.epoch, tr.batch_idx, tr.num_batches = 0, 0, 3
    before = tr.model.prompt_learner.ctx.detach().clone()
    tr.scaler = torch.amp.GradScaler("cpu")  # the amp path (GradScaler) on CPU
    batch = next(iter(tr.train_loader_x))
    summary = tr.forward_backward(batch)
    assert set(summary) == {"loss", "acc"}  # CoOp logs the training accuracy (LOG_ACC)
    assert not torch.equal(before, tr.model.prompt_learner.ctx.detach())
    tr.scaler = None
    nan = tr.model.prompt_learner.ctx.sum() * float("nan")
    with pytest.raises(FloatingPointError, match="epoch 1/1, batch 1/3"):
        tr.step(nan)


def test_coop_bad_class_token_position_is_refused_when_the_model_is_built(tmp_path, data_root):
    with pytest.raises(ConfigError, match=r"TRAINER\.COOP\.CLASS_TOKEN_POSITION: must be one of \('end', 'middle', "
                                          r"'front'\), got 'left'"):
        build(data_root, tmp_path / "c", "CoOp", extra=["TRAINER.COOP.CLASS_TOKEN_POSITION", "left"])


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

