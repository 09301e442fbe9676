"""MMA: the adapters' official names, shapes and init order, the forward against the official computation
(written out on open_clip's blocks: the branch reads ``ln_1`` of the block input and is added to the block
output, layers ADAPTER_START..ADAPTER_END), the 0.001 scale and the gradient scaling, the shared adapter,
configs and the ViT-B/16 parameter count.

Build, forward, step, checkpoint onto another class list and resume are covered for every trainer by
tests/test_contract.py. Small random backbone (``test-vit-tiny``: 12 + 12 blocks, widths 32 / 48) on CPU.
"""
import os.path as osp
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder
from trainers.mma import MMACLIP, AdapterLearner
from vlprompt.clip import build_clip_model, model_dims, tokenize
from vlprompt.config import ConfigError, extend_cfg, get_cfg_default, merge_from_file
from vlprompt.engine import build_trainer
from vlprompt.utils import restore_stdout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CLASSES = ["cat", "sea_lion", "red star"]


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny").requires_grad_(False)


def _model(tiny, start=5, end=12, scale=0.001, perturb=True):
    torch.manual_seed(0)
    model = MMACLIP(tiny, CLASSES, "a photo of a", start=start, end=end, dim=32, scale=scale)
    if perturb:  # biases away from zero, so that every tensor matters
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            for p in model.adapter_learner.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _images(n=3, seed=1):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


class _GS(torch.autograd.Function):  # the official gradient-scale layer, written out again
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def _official_branch(block, seq, shared, scale, x):
    y = _GS.apply(x, scale)
    y = block.ln_1(y)
    y = seq.down(y)
    y = shared(y)
    y = seq.up(y) * scale
    return _GS.apply(y, 1.0 / scale)


def _official(tiny, model, image):
    """The official CustomCLIP forward (``clip/model.py`` ``ModifiedResidualAttentionBlock``) on open_clip's blocks:
    full 77-token text pass, the branch of layer_index l = i + 1 added to the output of block i."""
    a = model.adapter_learner
    s = a.adapter_scale
    ids = tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    x = tiny.token_embedding(ids) + tiny.positional_embedding
    for i, block in enumerate(tiny.transformer.resblocks):
        seq = a.text_adapter[i + 1]
        y = _official_branch(block, seq, a.shared_adapter[i + 1], s, x) if seq is not None else 0
        x = block(x, attn_mask=tiny.attn_mask) + y
    txt = tiny.ln_final(x)[torch.arange(len(CLASSES)), ids.argmax(-1)] @ tiny.text_projection
    v = tiny.visual
    b = image.shape[0]
    z = v.conv1(image).reshape(b, v.conv1.out_channels, -1).permute(0, 2, 1)
    z = torch.cat([v.class_embedding + torch.zeros(b, 1, z.shape[-1]), z], 1) + v.positional_embedding
    z = v.ln_pre(z)
    for i, block in enumerate(v.transformer.resblocks):
        seq = a.visual_adapter[i + 1]
        y = _official_branch(block, seq, a.shared_adapter[i + 1], s, z) if seq is not None else 0
        z = block(z) + y
    img = v.ln_post(z[:, 0]) @ v.proj
    img_n, txt_n = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    return tiny.logit_scale.exp() * img_n @ txt_n.t()


def test_adapters_have_the_official_names_shapes_and_init_order(tiny):
    dims = model_dims(tiny)
    d_t, d_v = dims["d_text"], dims["d_vision"]
    torch.manual_seed(7)
    learner = AdapterLearner(d_t, d_v, 12, 12, start=5, end=12, dim=32, scale=0.001)
    shapes = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
    expected = {}
    for l in range(5, 13):
        for tower, d in (("text_adapter", d_t), ("visual_adapter", d_v)):
            expected.update({f"{tower}.{l}.down.0.weight": (32, d), f"{tower}.{l}.down.0.bias": (32,),
                             f"{tower}.{l}.up.weight": (d, 32), f"{tower}.{l}.up.bias": (d,)})
        expected.update({f"shared_adapter.{l}.0.weight": (32, 32), f"shared_adapter.{l}.0.bias": (32,)})
    assert shapes == expected
    assert len(learner.text_adapter) == 13 and all(learner.text_adapter[l] is None for l in range(5))
    # the official build, written out: per tower the Linears layer by layer, then kaiming_normal_(fan_out) + 0
    torch.manual_seed(7)
    ref = []
    for d, shared in ((d_t, False), (d_v, False), (32, True)):  # the towers keep down/up even at width 32
        mods = []
        for _ in range(5, 13):
            if shared:
                mods.append(nn.Sequential(nn.Linear(32, 32), nn.ReLU()))
            else:
                mods.append(nn.Sequential(OrderedDict([("down", nn.Sequential(nn.Linear(d, 32), nn.ReLU())),
                                                       ("up", nn.Linear(32, d))])))
        for m in nn.ModuleList(mods).modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
        ref += [p for m in mods for p in m.parameters()]
    ours = list(learner.parameters())
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    assert all(p.abs().sum() == 0 for n, p in learner.named_parameters() if n.endswith("bias"))


@pytest.mark.parametrize("fast", [True, False])
def test_forward_equals_the_official_computation_with_gradients(tiny, fast):
    model = _model(tiny)
    model.text_encoder.fast = model.image_encoder.fast = fast
    img = _images()
    ours = model(img)
    ref = _official(tiny, model, img)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)
    params = dict(model.adapter_learner.named_parameters())
    y = torch.tensor([0, 2, 1])
    g_ours = torch.autograd.grad(F.cross_entropy(ours, y), list(params.values()))
    g_ref = torch.autograd.grad(F.cross_entropy(ref, y), list(params.values()))
    for name, a, b in zip(params, g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-4, msg=name)
        assert a.abs().sum() > 0, name  # every adapter tensor gets a gradient (the shared ones from both towers)


def test_branch_is_scaled_forward_and_its_gradients_are_not(tiny):
    """The forward adds ``scale`` x the adapter output; the adapter's parameters get the gradient of the unscaled
    adapter; the gradient sent back into the block input is ``scale`` x that of the unscaled branch."""
    model = _model(tiny)
    a = model.adapter_learner
    block = tiny.transformer.resblocks[6]  # layer_index 7
    x = torch.randn(2, 5, model.dims["d_text"], generator=torch.Generator().manual_seed(2), requires_grad=True)
    g = torch.randn(2, 5, model.dims["d_text"], generator=torch.Generator().manual_seed(4))
    seq, shared = a.text_adapter[7], a.shared_adapter[7]
    params = list(seq.parameters()) + list(shared.parameters())
    y = a.text_branch(6, block, x)
    raw = seq.up(shared(seq.down(block.ln_1(x))))
    torch.testing.assert_close(y, 0.001 * raw, rtol=1e-6, atol=0)
    gy = torch.autograd.grad((y * g).sum(), [x] + params)
    graw = torch.autograd.grad((raw * g).sum(), [x] + params)
    torch.testing.assert_close(gy[0], 0.001 * graw[0], rtol=1e-5, atol=1e-8)  # into x: scaled
    for p_y, p_raw in zip(gy[1:], graw[1:]):  # the adapter's own gradients: as if the scale were 1
        torch.testing.assert_close(p_y, p_raw, rtol=1e-5, atol=1e-5 * float(p_raw.abs().max()))
        assert p_y.abs().sum() > 0


def test_only_the_listed_layers_have_a_branch_and_zero_adapters_give_frozen_clip(tiny):
    model = _model(tiny, start=3, end=9)
    a = model.adapter_learner
    x = torch.randn(1, 4, model.dims["d_text"])
    blocks = tiny.transformer.resblocks
    assert [i for i in range(12) if a.text_branch(i, blocks[i], x) is not None] == list(range(2, 9))
    vblocks = tiny.visual.transformer.resblocks
    xv = torch.randn(1, 4, model.dims["d_vision"])
    assert [i for i in range(12) if a.visual_branch(i, vblocks[i], xv) is not None] == list(range(2, 9))
    with torch.no_grad():  # up-projections zero: the branch adds nothing, the model is zero-shot CLIP
        for tower in (a.text_adapter, a.visual_adapter):
            for seq in tower:
                if seq is not None:
                    seq.up.weight.zero_()
                    seq.up.bias.zero_()
        img = _images(2)
        ids = tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
        txt = F.normalize(tiny.encode_text(ids), dim=-1)
        zs = tiny.logit_scale.exp() * F.normalize(tiny.encode_image(img), dim=-1) @ txt.t()
        torch.testing.assert_close(model(img), zs, atol=1e-4, rtol=1e-5)


def test_the_shared_adapter_is_one_module_for_both_towers(tiny):
    model = _model(tiny)
    shared = model.adapter_learner.shared_adapter[9][0].weight
    g_text = torch.autograd.grad(model.text_features().sum(), shared)[0]
    g_image = torch.autograd.grad(model.image_features(_images(2)).sum(), shared)[0]
    assert g_text.abs().sum() > 0 and g_image.abs().sum() > 0


def _trainer(tmp_path, *opts, folder="five", n_classes=5):
    make_image_folder(str(tmp_path / folder), n_classes=n_classes, n_per_class=4)
    cfg = make_cfg(tmp_path, trainer="MMA", folder=folder, output_dir=str(tmp_path / f"out_{folder}"),
                   opts=["TRAINER.MMADAPTER.PREC", "fp32", *opts])
    cfg.freeze()
    try:
        return build_trainer(cfg)
    finally:
        restore_stdout()


def test_eval_text_features_follow_the_adapters(tmp_path):
    """Officially the evaluation text features are cached once and never refreshed; here they follow the
    adapters (the engine's text cache)."""
    t = _trainer(tmp_path)
    t.set_model_mode("eval")
    img = _images(2)
    with torch.no_grad():
        before = t.model_inference(img)
        for p in t.model.adapter_learner.text_adapter[8].parameters():
            p.add_(0.5)
        after = t.model_inference(img)
        fresh = t.model.logits(t.model.image_features(img), t.model.text_features())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh)


def test_an_official_checkpoint_loads_onto_another_class_list(tmp_path):
    t = _trainer(tmp_path)
    state = {k: v + 0.01 for k, v in t.model.adapter_learner.state_dict().items()}
    official = dict(state, token_embedding=torch.zeros(5, 77, 32), tokenized_prompts=torch.zeros(5, 77))
    d = tmp_path / "official" / "adapter_learner"
    d.mkdir(parents=True)
    torch.save({"state_dict": official, "epoch": 5}, str(d / "model.pth.tar-5"))
    other = _trainer(tmp_path, folder="three", n_classes=3)
    try:
        other.load_model(str(tmp_path / "official"), epoch=5)
    finally:
        restore_stdout()
    for k, v in other.model.adapter_learner.state_dict().items():
        assert torch.equal(v, state[k]), k
    other.set_model_mode("eval")
    with torch.no_grad():
        assert other.model_inference(_images(2)).shape == (2, 3)


@pytest.mark.parametrize("opts, key", [(("TRAINER.MMADAPTER.ADAPTER_START", "0"), "ADAPTER_START"),
                                       (("TRAINER.MMADAPTER.ADAPTER_END", "13"), "ADAPTER_START"),
                                       (("TRAINER.MMADAPTER.ADAPTER_SCALE", "0.0"), "ADAPTER_SCALE")])
def test_bad_settings_name_the_key(tmp_path, opts, key):
    with pytest.raises(ConfigError, match=f"TRAINER.MMADAPTER.{key}"):
        _trainer(tmp_path, *opts)


def test_official_config_values_and_recipes():
    import trainers  # noqa: F401
    from vlprompt.engine.methods import method_spec

    node = get_cfg_default()
    extend_cfg(node)
    m = node.TRAINER.MMADAPTER  # the official train.py defaults
    assert (m.TEXT_CTX_INIT, m.PREC, m.ADAPTER_START, m.ADAPTER_END, m.ADAPTER_DIM, m.ADAPTER_SCALE) == (
        "", "amp", 4, 12, 32, 0.1)
    for name, batch in (("vit_b16_ep5", 16), ("vit_b16_ep5_imnet", 128)):
        cfg = get_cfg_default()
        extend_cfg(cfg)
        merge_from_file(cfg, osp.join(ROOT, "configs", "trainers", "MMA", f"{name}.yaml"))
        m = cfg.TRAINER.MMADAPTER
        assert (m.TEXT_CTX_INIT, m.ADAPTER_START, m.ADAPTER_END, m.ADAPTER_DIM, m.ADAPTER_SCALE, m.PREC) == (
            "a photo of a", 5, 12, 32, 0.001, "amp")
        assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_EPOCH,
                cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == ("sgd", 0.0015, 5, "cosine", 0, batch)
        assert list(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]
    rec = method_spec("MMA").all_recipes()
    assert rec["base2new"] == {"config": "vit_b16_ep5", "per_dataset": {"imagenet": "vit_b16_ep5_imnet"}}
    assert rec["cross_dataset"] == rec["domain_generalization"] == {"config": "vit_b16_ep5_imnet"}
    assert method_spec("MMA").model_name == "adapter_learner"


def test_parameter_count_at_vit_b16():
    learner = AdapterLearner(512, 768, 12, 12, 5, 12, 32, 0.001)  # ViT-B/16: text width 512, image 768, 12 + 12
    n = sum(p.numel() for p in learner.parameters())
    assert n == 8 * ((512 * 32 + 32 + 32 * 512 + 512) + (768 * 32 + 32 + 32 * 768 + 768) + (32 * 32 + 32)) == 674_560
