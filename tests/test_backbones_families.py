"""Backbone families beyond OpenAI CLIP (issue 16), on small random-weight open_clip models.

``test-siglip-tiny`` / ``test-eva02-tiny`` / ``test-pecore-tiny`` (vlprompt.clip.towers.tiny) have the
tower structure of ViT-B-16-SigLIP, EVA02-B-16 and PE-Core-B-16 at narrow widths; ``test-vit-tiny`` is the
open_clip CLIP reference. Covered: model_dims and tower detection, tokenizer layouts, exactness of the
unprompted passes, token positions of text and vision prompts (shallow and deep), pooling positions,
RoPE prefix handling, gradients, class counts, the QuickGELU tag check, the tag's preprocessing and the
errors for unsupported towers. Every method on every family (one training step, or the refusal):
tests/test_families_methods.py.
"""
import inspect

import pytest
import torch
import torch.nn as nn

from vlprompt.clip import ClassPromptLearner
from vlprompt.clip.backbone import (
    QuickGELUMismatchError,
    apply_backbone_preprocess,
    backbone_preprocess,
    build_clip_model,
    check_quickgelu,
    input_keys_set_in,
    model_dims,
    tower_kinds,
)
from vlprompt.clip.blocks import ArgError, prompt_geometry, require_vit
from vlprompt.clip.prompted import PromptedTextEncoder, PromptedVisionEncoder
from vlprompt.clip.tokenizer import ClipBPETokenizer, NoStartBPETokenizer, OpenClipTokenizer, model_tokenizer, tokenize
from vlprompt.clip.towers import (
    BidirectionalTextEncoder,
    CausalCustomTextEncoder,
    PlainVisionEncoder,
    TimmEvaPromptedEncoder,
    TimmViTPromptedEncoder,
    prompted_encoders,
)

FAMILIES = ["test-siglip-tiny", "test-eva02-tiny", "test-pecore-tiny"]
ALL = FAMILIES + ["test-vit-tiny"]
_CACHE = {}


def model(name):
    if name not in _CACHE:
        _CACHE[name] = build_clip_model(name).requires_grad_(False)  # frozen, as trainers hold it
    return _CACHE[name]


def images(n=2, seed=0):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------
# structure


EXPECTED = {
    "test-siglip-tiny": ("bidirectional", "timm_vit", 64, 48, BidirectionalTextEncoder, TimmViTPromptedEncoder),
    "test-eva02-tiny": ("causal", "timm_eva", 77, 40, CausalCustomTextEncoder, TimmEvaPromptedEncoder),
    "test-pecore-tiny": ("causal", "timm_eva", 32, 40, CausalCustomTextEncoder, TimmEvaPromptedEncoder),
    "test-vit-tiny": ("causal", "clip_vit", 77, 40, PromptedTextEncoder, PromptedVisionEncoder),
}


@pytest.mark.parametrize("name", ALL)
def test_model_dims_and_factory_per_family(name):
    m = model(name)
    text_kind, vision_kind, ctx, d_embed, text_cls, vision_cls = EXPECTED[name]
    d = model_dims(m)
    assert (d["text_kind"], d["vision_kind"]) == (text_kind, vision_kind) == tower_kinds(m)
    assert d["context_length"] == ctx and d["d_embed"] == d_embed
    assert d["d_text"] == 32 and d["d_vision"] == 48 and d["is_vit"]
    assert d["text_layers"] == 12 and d["vision_layers"] == 12
    te, ve = prompted_encoders(m, text=(2, 3), vision=(2, 3))
    assert type(te) is text_cls and type(ve) is vision_cls
    assert te.width == 32 and te.n_layers == 12 and ve.width == 48
    assert te.dtype == torch.float32 and ve.dtype == torch.float32


def test_factory_reads_structure_not_the_name():
    m = model("test-siglip-tiny")
    saved = dict(m.vlprompt_backbone)
    try:
        m.vlprompt_backbone["name"] = "ViT-B/16"  # the name says CLIP; the modules say SigLIP
        te, ve = prompted_encoders(m)
        assert isinstance(te, BidirectionalTextEncoder) and isinstance(ve, TimmViTPromptedEncoder)
    finally:
        m.vlprompt_backbone = saved


# ---------------------------------------------------------------------------------------------------
# tokenizers


def test_tokenizer_layouts():
    clip = ClipBPETokenizer(77)
    ids = clip(["a photo of a dog."])
    assert clip.first_slot == 1 and ids[0, 0] == clip.sot and int(clip.eot_positions(ids)[0]) == 7
    nostart = NoStartBPETokenizer(64)
    ids2 = nostart(["a photo of a dog."])
    assert ids2.shape == (1, 64) and nostart.first_slot == 0
    assert torch.equal(ids2[0, :6], ids[0, 1:7]) and ids2[0, 6] == nostart.eot and int(nostart.eot_positions(ids2)[0]) == 6
    assert nostart.count("a photo of") == clip.count("a photo of") == 3
    # the generic wrapper reads the layout from the tokenizer's output (CLIP's here: offline)
    oc = OpenClipTokenizer("ViT-B-16")
    assert oc.first_slot == 1 and oc.eot == clip.eot and oc.count("a photo of a") == 4
    assert torch.equal(oc(["a photo of a dog."]), ids)


@pytest.mark.parametrize("name", ALL)
def test_tokenize_with_the_model(name):
    m = model(name)
    ids = tokenize(["a photo of a cat.", "dog."], model=m)
    assert ids.shape == (2, EXPECTED[name][2])
    tok = model_tokenizer(m)
    assert tok.first_slot == (0 if name == "test-siglip-tiny" else 1)
    with pytest.raises(ValueError, match="context length"):
        tokenize(["word " * 80], model=m)


# ---------------------------------------------------------------------------------------------------
# exactness of the unprompted passes


@pytest.mark.parametrize("name", ALL)
def test_unprompted_passes_equal_open_clip(name):
    m = model(name)
    te, ve = prompted_encoders(m)
    ids = tokenize(["a photo of a dog.", "a cat.", "x"], model=m)
    with torch.no_grad():
        torch.testing.assert_close(te.encode_tokens(ids), m.encode_text(ids), atol=1e-5, rtol=1e-5)
        x = images()
        torch.testing.assert_close(ve(x), m.encode_image(x), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# text prompts: slots, pooling position, deep prompts, class counts


class _Learner(ClassPromptLearner):
    def __init__(self, clip_model, classnames, n_ctx=2):
        super().__init__(clip_model, classnames, " ".join(["X"] * n_ctx), n_ctx)
        self.ctx = nn.Parameter(torch.randn(n_ctx, self.ctx_dim) * 0.02)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_prompt_learner_slots_and_shapes(name, k):
    m = model(name)
    names = [f"class {i}" for i in range(k)]
    pl = _Learner(m, names)
    tok = model_tokenizer(m)
    s = tok.first_slot
    prompts = pl.assemble(pl.ctx)
    assert prompts.shape[:2] == (k, pl.text_length)
    if name == "test-siglip-tiny":
        assert s == 0 and pl.token_prefix.shape[1] == 0 and pl.text_length == 64  # full length, no SOS
    else:
        assert s == 1 and pl.token_prefix.shape[1] == 1 and pl.text_length == int(pl.eot_idx.max()) + 1
    # the learnable slots sit where the tokenizer puts the first word of the prefix
    torch.testing.assert_close(prompts[:, s:s + 2], pl.ctx.unsqueeze(0).expand(k, -1, -1))
    ids = pl.tokenized_prompts
    x_ids = tokenize(["X"], model=m)[0, s]
    assert (ids[:, s:s + 2] == x_ids).all()
    assert (ids[torch.arange(k), pl.eot_idx] == tok.eot).all()
    te, _ = prompted_encoders(m, text=(2, 1))
    feats = te(prompts, pl.eot_idx)
    assert feats.shape == (k, EXPECTED[name][3])
    feats.sum().backward()
    assert pl.ctx.grad is not None and pl.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())


def test_siglip_text_pools_the_last_position_and_attends_to_padding():
    m = model("test-siglip-tiny")
    pl = _Learner(m, ["dog", "cat"])
    te, _ = prompted_encoders(m)
    with torch.no_grad():
        prompts = pl.assemble(pl.ctx)
        base = te(prompts, pl.eot_idx)
        for pos in (63, int(pl.eot_idx[0]) + 1):  # padding after EOS: reaches the pooled token
            p2 = prompts.clone()
            p2[0, pos] += torch.randn(32)  # not a constant shift: LayerNorms would remove that
            out = te(p2, pl.eot_idx)
            assert not torch.allclose(out[0], base[0]) and torch.equal(out[1], base[1])
        # pooled at position T-1 after ln_final: equals a manual full-length pass
        tt = m.text
        x = prompts + tt.positional_embedding
        for blk in tt.transformer.resblocks:
            x = blk(x)
        torch.testing.assert_close(base, tt.text_projection(tt.ln_final(x)[:, -1]))
        with pytest.raises(ValueError, match="full context length 64"):
            te(prompts[:, :20], pl.eot_idx)


def test_causal_families_ignore_positions_after_eot():
    for name in ("test-eva02-tiny", "test-pecore-tiny"):
        m = model(name)
        pl = _Learner(m, ["dog", "a big cat"])
        te, _ = prompted_encoders(m)
        full = pl.assemble(pl.ctx, length=EXPECTED[name][2])
        with torch.no_grad():
            base = te(full, pl.eot_idx, truncate=False)
            p2 = full.clone()
            p2[:, -1] += torch.randn(32)
            torch.testing.assert_close(te(p2, pl.eot_idx, truncate=False), base)
            torch.testing.assert_close(te(pl.assemble(pl.ctx), pl.eot_idx), base, atol=1e-5, rtol=1e-5)


def _block_inputs(blocks):
    seen = {}
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
             for i, b in enumerate(blocks)]
    return seen, hooks


@pytest.mark.parametrize("name", ALL)
def test_deep_text_prompts_replace_the_slots(name):
    m = model(name)
    pl = _Learner(m, ["dog", "cat"])
    te, _ = prompted_encoders(m, text=(2, 3))
    s = model_tokenizer(m).first_slot
    deep = [torch.randn(2, 32), torch.randn(2, 32)]
    seen, hooks = _block_inputs(te.transformer.resblocks)
    try:
        with torch.no_grad():
            te(pl.assemble(pl.ctx), pl.eot_idx, deep)
    finally:
        for h in hooks:
            h.remove()
    for i in (1, 2):
        torch.testing.assert_close(seen[i][:, s:s + 2], deep[i - 1].unsqueeze(0).expand(2, -1, -1))
    assert not torch.allclose(seen[3][:, s:s + 2], deep[1].unsqueeze(0).expand(2, -1, -1))  # depth 3: flows on


# ---------------------------------------------------------------------------------------------------
# vision prompts


def test_siglip_vision_prompts_are_appended_and_read_by_the_map_head():
    m = model("test-siglip-tiny")
    ve = TimmViTPromptedEncoder(m, 3, 3)
    trunk = m.visual.trunk
    ctx = torch.randn(3, 48)
    deep = [torch.randn(3, 48), torch.randn(3, 48)]
    seen, hooks = _block_inputs(trunk.blocks)
    pooled_in = {}
    hooks.append(trunk.attn_pool.register_forward_pre_hook(lambda mod, args: pooled_in.update(x=args[0].shape)))
    try:
        with torch.no_grad():
            out = ve(images(), ctx, deep)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, 48)
    assert seen[0].shape == (2, 49 + 3, 48)  # no class token: 49 patches, then the prompts
    torch.testing.assert_close(seen[0][:, 49:], ctx.unsqueeze(0).expand(2, -1, -1))  # norm_pre is Identity
    torch.testing.assert_close(seen[1][:, 49:], deep[0].unsqueeze(0).expand(2, -1, -1))
    torch.testing.assert_close(seen[2][:, 49:], deep[1].unsqueeze(0).expand(2, -1, -1))
    assert pooled_in["x"] == (2, 52, 48)  # the MAP head reads every token, prompts included
    # the patch tokens before block 0 are those of the unprompted pass
    x = trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images())))
    torch.testing.assert_close(seen[0][:, :49], x.detach())


@pytest.mark.parametrize("name", ["test-eva02-tiny", "test-pecore-tiny"])
def test_eva_vision_prompts_are_prefix_tokens(name):
    m = model(name)
    trunk = m.visual.trunk
    ve = TimmEvaPromptedEncoder(m, 2, 3)
    ctx = torch.randn(2, 48)
    deep = [torch.randn(2, 48), torch.randn(2, 48)]
    seen, hooks = _block_inputs(trunk.blocks)
    npt_seen = []
    hooks.append(trunk.blocks[5].attn.register_forward_pre_hook(
        lambda mod, args, kwargs=None: npt_seen.append(mod.num_prefix_tokens)))
    try:
        with torch.no_grad():
            out = ve(images(), ctx, deep)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, 40)
    assert seen[0].shape == (2, 1 + 2 + 49, 48)  # [CLS | prompts | patches]
    torch.testing.assert_close(seen[0][:, 1:3], trunk.norm_pre(ctx).unsqueeze(0).expand(2, -1, -1))
    torch.testing.assert_close(seen[1][:, 1:3], deep[0].unsqueeze(0).expand(2, -1, -1))
    torch.testing.assert_close(seen[2][:, 1:3], deep[1].unsqueeze(0).expand(2, -1, -1))
    # RoPE skips the prefix (class token + prompts) during the pass; the frozen trunk is restored after
    assert npt_seen == [3]
    assert all(b.attn.num_prefix_tokens == 1 for b in trunk.blocks)
    # appending after the patches instead breaks the rotary embedding (it covers exactly the grid)
    x, rope = trunk._pos_embed(trunk.patch_embed(images()))
    with pytest.raises(RuntimeError):
        trunk.blocks[0](torch.cat([x, ctx.expand(2, -1, -1)], 1), rope=rope)


def test_eva_prefix_count_is_restored_after_an_error():
    m = model("test-eva02-tiny")
    ve = TimmEvaPromptedEncoder(m, 2, 3)
    with pytest.raises(ValueError, match="deep vision prompt for block 1"):
        ve(images(), torch.randn(2, 48), [torch.randn(5, 48)])
    assert all(b.attn.num_prefix_tokens == 1 for b in m.visual.trunk.blocks)


def test_pooling_heads():
    # EVA02 pools the class token; PE-Core's MAP head reads all tokens (class token, prompts, patches)
    eva = model("test-eva02-tiny")
    assert TimmEvaPromptedEncoder(eva, 2, 1).pool == "token"
    pe = model("test-pecore-tiny")
    ve = TimmEvaPromptedEncoder(pe, 2, 1)
    assert ve.pool == "map"
    shape = {}
    h = pe.visual.trunk.attn_pool.register_forward_pre_hook(lambda mod, args: shape.update(x=args[0].shape))
    try:
        with torch.no_grad():
            ve(images(), torch.randn(2, 48))
    finally:
        h.remove()
    assert shape["x"] == (2, 1 + 2 + 49, 48)


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_prompt_gradients_and_per_image_prompts(name):
    m = model(name)
    _, ve = prompted_encoders(m, vision=(2, 2))
    ctx = nn.Parameter(torch.randn(2, 48) * 0.02)
    deep = nn.Parameter(torch.randn(2, 48) * 0.02)
    ve(images(), ctx, [deep]).sum().backward()
    assert ctx.grad.abs().sum() > 0 and deep.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())
    with torch.no_grad():
        per_image = ve(images(), ctx.detach().unsqueeze(0).expand(2, -1, -1).contiguous(), [deep.detach()])
        torch.testing.assert_close(per_image, ve(images(), ctx.detach(), [deep.detach()]))
    with pytest.raises(ValueError, match="width"):
        ve(images(), torch.randn(2, 32))


# ---------------------------------------------------------------------------------------------------
# unsupported towers: clear errors naming the supported families


def test_unsupported_image_tower_errors_name_the_families():
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = open_clip.model.CustomTextCLIP(
            embed_dim=40, vision_cfg=dict(image_size=64, timm_model_name="resnet10t", timm_pool="avg", timm_proj="linear"),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
    d = model_dims(m)
    assert d["vision_kind"] == "other:ResNet" and not d["is_vit"] and "d_vision" not in d
    te, ve = prompted_encoders(m)
    assert isinstance(ve, PlainVisionEncoder) and isinstance(te, CausalCustomTextEncoder)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ve(x), m.encode_image(x))
    with pytest.raises(ValueError, match="timm ViT trunks \\(SigLIP, SigLIP2\\).*timm EVA trunks"):
        prompted_encoders(m, vision=(2, 1))
    with pytest.raises(ArgError, match="ResNet.*EVA02-B-16"):
        require_vit(m)
    with pytest.raises(ArgError, match="supported image towers"):
        prompt_geometry(m, 2, 3)
    assert prompt_geometry(m, 2, 2, towers=("text",)) == (2, 2)  # text-only methods run


def test_unsupported_text_tower_error():
    m = model("test-eva02-tiny")
    m.text.pool_type = "first"
    try:
        assert tower_kinds(m)[0].startswith("unsupported")
        with pytest.raises(TypeError, match="supported: open_clip CLIP"):
            prompted_encoders(m)
    finally:
        m.text.pool_type = "argmax"


# ---------------------------------------------------------------------------------------------------
# pretrained tags: QuickGELU and preprocessing


def test_quickgelu_mismatch_is_an_error_naming_the_right_model():
    with pytest.raises(QuickGELUMismatchError, match='MODEL.BACKBONE.NAME "ViT-B-16-quickgelu"'):
        check_quickgelu("ViT-B-16", "dfn2b")
    with pytest.raises(QuickGELUMismatchError, match='"ViT-B-16-quickgelu"'):
        build_clip_model("ViT-B-16", pretrained_tag="metaclip_400m")  # before any download
    with pytest.raises(QuickGELUMismatchError, match='"ViT-B-16"'):
        check_quickgelu("ViT-B-16-quickgelu", "laion2b_s34b_b88k")
    check_quickgelu("ViT-B-16-quickgelu", "dfn2b")
    check_quickgelu("ViT-B/16", "openai")
    check_quickgelu("ViT-B-16-SigLIP", "webli")


def test_tag_preprocessing():
    pre = backbone_preprocess("ViT-L-14", "laion2b_s32b_b82k")
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5]
    pre = backbone_preprocess("ViT-H-14-quickgelu", "dfn5b")
    assert pre["interpolation"] == "bicubic" and pre["resize_mode"] == "squash"
    assert backbone_preprocess("ViT-B/16")["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert backbone_preprocess("ViT-B-16-SigLIP", "webli")["mean"] == [0.5, 0.5, 0.5]
    assert backbone_preprocess("test-vit-tiny") is None


def test_apply_preprocessing_respects_explicit_keys(tmp_path, capsys):
    from vlprompt.config import get_cfg_default

    method_yaml = tmp_path / "m.yaml"
    method_yaml.write_text('INPUT:\n  PIXEL_MEAN: [0.1, 0.2, 0.3]\n  INTERPOLATION: "bilinear"\n'
                           'MODEL:\n  BACKBONE:\n    NAME: "ViT-B/16"\n')
    # the yaml was written for ViT-B/16; the command line switches the backbone: the yaml's INPUT keys do not count
    opts = ["MODEL.BACKBONE.NAME", "ViT-B-16-SigLIP", "MODEL.BACKBONE.PRETRAINED_TAG", "webli", "INPUT.PIXEL_STD", [0.2, 0.2, 0.2]]
    explicit = input_keys_set_in([str(method_yaml), opts])
    assert explicit == {"PIXEL_STD"}
    assert input_keys_set_in([str(method_yaml)]) == {"PIXEL_MEAN", "INTERPOLATION"}
    cfg = get_cfg_default()
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PRETRAINED_TAG = "ViT-B-16-SigLIP", "webli"
    cfg.INPUT.PIXEL_STD = [0.2, 0.2, 0.2]
    used = apply_backbone_preprocess(cfg, explicit)
    assert list(cfg.INPUT.PIXEL_MEAN) == [0.5, 0.5, 0.5] and cfg.INPUT.INTERPOLATION == "bicubic"
    assert list(cfg.INPUT.PIXEL_STD) == [0.2, 0.2, 0.2]
    assert "set in the config" in used["PIXEL_STD"][1] and "webli" in used["PIXEL_MEAN"][1]
    out = capsys.readouterr().out
    assert "INPUT.PIXEL_MEAN = [0.5, 0.5, 0.5] (from pretrained tag 'webli' of ViT-B-16-SigLIP)" in out
    assert "resize_mode=squash" in out or "INPUT.RESIZE_MODE = squash" in out


# ---------------------------------------------------------------------------------------------------
# prompt initialisation with the model's tokenizer


@pytest.fixture
def factory_in_prompted_clip():
    """PromptedCLIP builds its encoders with the tower-type factory and context init uses the model's
    tokenizer (both integrated): checked here, so the family tests fail if either is undone."""
    import vlprompt.clip.blocks as blocks
    import vlprompt.clip.prompt_init as prompt_init

    assert "prompted_encoders" in inspect.getsource(blocks.PromptedCLIP.__init__)
    assert "phrase_vectors" in inspect.getsource(prompt_init._phrase_vectors)


@pytest.mark.parametrize("name", ALL)
def test_phrase_init_uses_the_model_tokenizer(name, factory_in_prompted_clip):
    from vlprompt.clip import init_text_context

    m = model(name)
    init = init_text_context(m, 2, "a photo of a", rule="maple")
    tok = model_tokenizer(m)
    ids = tok(["a photo"])
    s = tok.first_slot
    with torch.no_grad():
        want = m.text.token_embedding(ids[0, s:s + 2]) if hasattr(m, "text") else m.token_embedding(ids[0, s:s + 2])
    torch.testing.assert_close(init.vectors, want)


def test_squash_resize_mode_keeps_the_whole_image():
    from PIL import Image

    from vlprompt.config import get_cfg_default
    from vlprompt.data.transforms.transforms import build_transform

    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 200))  # a blue stripe on the left 5%: cropped away by "shortest"
    cfg = get_cfg_default()
    cfg.INPUT.TRANSFORMS = ()
    crop = build_transform(cfg, is_train=False)(img)
    cfg.INPUT.RESIZE_MODE = "squash"
    squash = build_transform(cfg, is_train=False)(img)
    assert crop.shape == squash.shape == (3, 224, 224)
    assert squash[2, 100, 2] > 0.9 and crop[2, 100, 2] < 0.1
    cfg.INPUT.RESIZE_MODE = "longest"
    with pytest.raises(ValueError, match="INPUT.RESIZE_MODE must be one of"):
        build_transform(cfg, is_train=False)


def test_apply_preprocessing_writes_resize_mode_where_the_key_exists(capsys):
    from vlprompt.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PRETRAINED_TAG = "PE-Core-B-16", "meta"
    del cfg.INPUT["RESIZE_MODE"]  # a config tree without the key (ported Dassl trees)
    apply_backbone_preprocess(cfg)
    assert "resize_mode=squash; INPUT.RESIZE_MODE does not exist" in capsys.readouterr().out
    cfg.INPUT.RESIZE_MODE = "shortest"
    used = apply_backbone_preprocess(cfg)
    assert cfg.INPUT.RESIZE_MODE == "squash" and cfg.INPUT.INTERPOLATION == "bilinear"
    assert used["RESIZE_MODE"] == ("squash", "from pretrained tag 'meta' of PE-Core-B-16")


NEW_CONFIGS = sorted(
    f"configs/trainers/{m}/{fam}_{rest}.yaml"
    for m, rest in [("CoOp", "b16_ctxv1"), ("MaPLe", "b16_c2_ep5_batch4_2ctx"), ("APLe", "b16_c2_ep5_batch4_2ctx"),
                    ("MuDPT", "b16_bz4_ep10_nctx4_depth9")]
    for fam in ("siglip", "eva02")
)


@pytest.mark.parametrize("path", NEW_CONFIGS)
def test_family_configs_merge_and_match_the_tag(path):
    import os.path as osp

    from vlprompt.config import get_cfg_default, extend_cfg, merge_from_file
    from vlprompt.engine.methods import load_plugins

    load_plugins()
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, osp.join(root, path))
    bb = cfg.MODEL.BACKBONE
    assert bb.NAME in ("ViT-B-16-SigLIP", "EVA02-B-16") and bb.PRETRAINED_TAG
    check_quickgelu(bb.NAME, bb.PRETRAINED_TAG)
    pre = backbone_preprocess(bb.NAME, bb.PRETRAINED_TAG)
    assert list(cfg.INPUT.PIXEL_MEAN) == pytest.approx(pre["mean"]) and list(cfg.INPUT.PIXEL_STD) == pytest.approx(pre["std"])
    assert cfg.INPUT.INTERPOLATION == pre["interpolation"]
    node = path.split("/")[2].upper()  # configs/trainers/<Method>/...
    assert cfg.TRAINER[node].PREC == "amp"
    text = open(osp.join(root, path)).read()
    assert "HYPER-PARAMETERS ARE OURS" in text


def test_fp16_weights_refused_with_a_reason_for_custom_text_families():
    from vlprompt.clip.backbone import fp16_weights_supported

    assert fp16_weights_supported(model("test-vit-tiny")) == (True, "")
    for name in FAMILIES:
        ok, reason = fp16_weights_supported(model(name))
        assert not ok and "PREC amp or bf16" in reason
