"""CLIP-LoRA, PromptSRC, TCP and the feature-based methods on the other backbone families, at the tower
level (tests/test_families_methods.py checks that every method trains and evaluates on every family).

* LoRA (vlprompt/clip/lora.py) on timm attention: on a fused ``qkv`` Linear (SigLIP's timm ``Attention``,
  PE-Core's ``AttentionRope``) each adapter acts on its third of the output, exactly three LoRA
  projections on the sliced weight (each with its own dropout); on EVA02's separate q/k/v Linears and
  on every ``proj`` as a LoRA Linear; on the ``CustomTextCLIP`` text towers as on CLIP's. Checked
  against a copy of the model with ``s * B A`` merged into its weights (whole-tower outputs), on every
  family; the same adapters and parameter count on every family of equal widths; refusals.
* CLIP-LoRA tokenizes its template with the model's tokenizer (SigLIP: no start token, 64 tokens).
* PromptSRC's template-ensemble teacher runs the family's text encoder with its tokenizer; the KD
  term uses the checkpoint's own logit scale (not CLIP's 100).
* TCP on SigLIP: the context at slots 0..N-1, the class-aware tokens replace slots 0..3 at the input of
  text block 8 in the bidirectional tower, the pass runs the full 64 tokens.
* The feature store's frozen tower is the family's unprompted image encoder.
"""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.helpers import method_model
from vlprompt.clip import ArgError, build_clip_model, tokenize
from vlprompt.clip.lora import LoRAFusedQKV, LoRALinear, LoRAMultiheadAttention, apply_lora
from vlprompt.clip.prompted import PromptedVisionEncoder
from vlprompt.clip.tokenizer import model_tokenizer
from vlprompt.engine.methods import load_plugins

load_plugins()

FAMILIES = ["test-siglip-tiny", "test-eva02-tiny", "test-pecore-tiny"]
CLASSES = ["dog", "cat", "big red car"]
_CACHE = {}


def model(name):
    """A fresh frozen copy (LoRA changes the model in place)."""
    if name not in _CACHE:
        _CACHE[name] = build_clip_model(name).requires_grad_(False)
    m = _CACHE[name]
    tok = m.__dict__.pop("vlprompt_tokenizer", None)
    try:
        out = copy.deepcopy(m)
    finally:
        if tok is not None:
            object.__setattr__(m, "vlprompt_tokenizer", tok)
    if tok is not None:
        object.__setattr__(out, "vlprompt_tokenizer", tok)
    return out


def images(n=2, seed=0):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _randomise_B(lora, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if n.endswith("w_lora_B"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _text_blocks(m):
    return (m.text if hasattr(m, "text") else m).transformer.resblocks


def _merge_into(ref, lora):
    """Add ``s * B A`` of every adapter into the weights of ``ref`` (an unadapted copy), in the layout of
    the frozen module: MHA ``in_proj`` rows, a fused timm ``qkv``'s thirds, separate q/k/v Linears."""
    with torch.no_grad():
        for tower, blocks in (("text", _text_blocks(ref)), ("vision", getattr(ref.visual, "trunk", None))):
            for i, ads in getattr(lora, tower).items():
                if tower == "text":
                    attn = blocks[int(i)].attn
                    e = attn.embed_dim
                    for name, a in ads.items():
                        delta = a.scaling * a.merged_BA()
                        if name == "proj":
                            attn.out_proj.weight += delta
                        else:
                            k = ("q_proj", "k_proj", "v_proj").index(name)
                            attn.in_proj_weight[k * e:(k + 1) * e] += delta
                    continue
                attn = blocks.blocks[int(i)].attn
                for name, a in ads.items():
                    delta = a.scaling * a.merged_BA()
                    if name == "proj":
                        attn.proj.weight += delta
                    elif getattr(attn, "qkv", None) is not None:
                        d = attn.qkv.out_features // 3
                        k = ("q_proj", "k_proj", "v_proj").index(name)
                        attn.qkv.weight[k * d:(k + 1) * d] += delta
                    else:
                        getattr(attn, name).weight += delta


# ---------------------------------------------------------------------------------------------------
# LoRA on every family


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_equals_merged_weights_on_every_family(name):
    m = model(name)
    ref = model(name)
    frozen = model(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # A's initialisation: the size of the adapters' effect below
        lora = apply_lora(m, r=2, alpha=1.0, dropout=0.25, params=["q", "k", "v", "o"])
    snapshot = {k: v.clone() for k, v in m.state_dict().items()}  # the frozen tensors (LoRA's are not in it)
    assert not any("lora" in k for k in snapshot)
    ids = tokenize(["a photo of a dog.", "cat"], model=m)
    x = images()
    unit = lambda f: F.normalize(f, dim=-1)  # noqa: E731  (random EVA / PE-Core features are ~1e-5 in size)
    with torch.no_grad():
        lora.train()  # B = 0: the adapted model starts equal to the frozen one, dropout acts on the branch only
        torch.testing.assert_close(unit(m.encode_image(x)), unit(frozen.encode_image(x)), atol=1e-5, rtol=0)
        torch.testing.assert_close(unit(m.encode_text(ids)), unit(frozen.encode_text(ids)), atol=1e-5, rtol=0)
    _randomise_B(lora)
    _merge_into(ref, lora)
    lora.eval()
    with torch.no_grad():
        img, txt = unit(m.encode_image(x)), unit(m.encode_text(ids))
        torch.testing.assert_close(img, unit(ref.encode_image(x)), atol=1e-5, rtol=0)
        torch.testing.assert_close(txt, unit(ref.encode_text(ids)), atol=1e-5, rtol=0)
        # the adapters do act (100x the tolerance of the equalities above)
        assert (img - unit(frozen.encode_image(x))).abs().max() > 1e-3
        assert (txt - unit(frozen.encode_text(ids))).abs().max() > 1e-3
    # the frozen weights were never written (eval merges on the fly)
    for k, v in m.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    # gradients reach every A and B, no frozen weight
    lora.train()
    (m.encode_image(x).sum() + m.encode_text(ids).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.parameters())
    assert all(p.grad is None for p in m.parameters())


def test_fused_qkv_adapters_act_on_their_thirds_with_their_own_dropout():
    for name in ("test-siglip-tiny", "test-pecore-tiny"):
        m = model(name)
        base = copy.deepcopy(m.visual.trunk.blocks[4].attn.qkv)
        lora = apply_lora(m, r=2, alpha=1.0, dropout=0.5, encoders="vision", params=["q", "v"])
        _randomise_B(lora)
        fused = m.visual.trunk.blocks[4].attn.qkv
        assert isinstance(fused, LoRAFusedQKV) and sorted(fused.adapters) == ["q_proj", "v_proj"]
        aq, av = lora.vision["4"]["q_proj"], lora.vision["4"]["v_proj"]
        s = 1.0 / math.sqrt(2)
        assert aq.scaling == pytest.approx(s)
        x = torch.randn(2, 9, 48)
        w, b = base.weight, base.bias
        d = 48
        with torch.no_grad():
            for training in (True, False):
                lora.train(training)
                torch.manual_seed(3)
                out = fused(x)
                torch.manual_seed(3)  # the reference draws the same masks: q's first, then v's
                xq = F.dropout(x, 0.5, training) if training else x
                xv = F.dropout(x, 0.5, training) if training else x
                want = torch.cat([
                    F.linear(x, w[:d], b[:d]) + s * xq @ (aq.w_lora_B @ aq.w_lora_A).t(),
                    F.linear(x, w[d:2 * d], b[d:2 * d]),  # k: not adapted
                    F.linear(x, w[2 * d:], b[2 * d:]) + s * xv @ (av.w_lora_B @ av.w_lora_A).t(),
                ], dim=-1)
                torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        # q and v got different dropout masks in training (each adapter its own)
        lora.train()
        torch.manual_seed(3)
        mq, mv = F.dropout(torch.ones(2, 9, 48), 0.5), F.dropout(torch.ones(2, 9, 48), 0.5)
        assert not torch.equal(mq, mv)


def test_eva02_separate_projections_and_layout_on_every_family():
    m = model("test-eva02-tiny")
    lora = apply_lora(m, params=["q", "k", "v", "o"])
    attn = m.visual.trunk.blocks[0].attn
    assert all(isinstance(getattr(attn, n), LoRALinear) for n in ("q_proj", "k_proj", "v_proj", "proj"))
    assert attn.k_proj.bias is None and attn.q_proj.bias is not None  # EVA02: no k bias, kept as it is
    assert isinstance(_text_blocks(m)[0].attn, LoRAMultiheadAttention)
    # the same adapters at the same keys, with the same count, on every family of these widths
    counts, keys = {}, {}
    for name in FAMILIES + ["test-vit-tiny"]:
        lo = apply_lora(model(name))  # official defaults: q, k, v, all blocks, both towers, r 2
        counts[name] = sum(p.numel() for p in lo.parameters())
        keys[name] = sorted(lo.state_dict())
    assert set(counts.values()) == {12 * 3 * 2 * (32 + 32) + 12 * 3 * 2 * (48 + 48)}
    assert all(k == keys["test-vit-tiny"] for k in keys.values())


def test_lora_refusals():
    rn = model("test-rn-tiny")
    with pytest.raises(ArgError, match="needs a ViT \\(transformer\\) image tower.*ModifiedResNet.*timm EVA trunks"):
        apply_lora(rn)
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in rn.transformer.resblocks)  # left as it was
    lora = apply_lora(rn, encoders="text")  # the text tower of a CLIP ResNet is adapted as any CLIP's
    assert sorted(lora.layout()["text"]) == list(range(12)) and not lora.layout()["vision"]
    m = model("test-siglip-tiny")
    apply_lora(m, encoders="vision")
    with pytest.raises(ArgError, match="already holds LoRA adapters"):
        apply_lora(m, encoders="vision")
    # an EvaAttention that computes its fused qkv from the weight directly (EVA01-CLIP) cannot be wrapped
    from timm.models.eva import EvaAttention

    eva = model("test-eva02-tiny")
    eva.visual.trunk.blocks[2].attn = EvaAttention(48, num_heads=2, qkv_fused=True, qkv_bias=True, scale_norm=False)
    with pytest.raises(ArgError, match="vision block 2: EvaAttention computes its fused qkv.*EVA01"):
        apply_lora(eva, position="bottom")
    assert isinstance(eva.visual.trunk.blocks[0].attn.q_proj, nn.Linear)  # nothing adapted before the error
    assert isinstance(_text_blocks(eva)[0].attn, nn.MultiheadAttention)


@pytest.mark.parametrize("name", ["test-siglip-tiny", "test-eva02-tiny"])
def test_clip_lora_uses_the_model_tokenizer_and_starts_as_zero_shot(name):
    m = model(name)
    frozen = model(name)
    net = method_model("CLIPLoRA", m, CLASSES)
    want = tokenize([f"a photo of a {c}." for c in CLASSES], model=frozen)
    assert torch.equal(net.token_ids, want)
    assert want.shape[1] == (64 if name == "test-siglip-tiny" else 77)
    net.lora.eval()
    x = images()
    with torch.no_grad():
        cos = F.normalize(frozen.encode_image(x), dim=-1) @ F.normalize(frozen.encode_text(want), dim=-1).t()
        torch.testing.assert_close(net(x), cos, atol=1e-5, rtol=1e-5)  # official evaluation: unscaled cosines


# ---------------------------------------------------------------------------------------------------
# PromptSRC's teacher and KD on the families


@pytest.mark.parametrize("name", ["test-siglip-tiny", "test-pecore-tiny"])
def test_promptsrc_teacher_and_kd_scale(name):
    from trainers.promptsrc import EnsembleTeacher, PromptSRC

    m = model(name)
    templates = ["a photo of a {}.", "a sketch of the {}.", "art of a {}."]
    teacher = EnsembleTeacher(m, CLASSES, templates)
    with torch.no_grad():
        raw = torch.stack([m.encode_text(tokenize([t.format(c) for c in CLASSES], model=m)) for t in templates])
    torch.testing.assert_close(teacher.text_features(), F.normalize(raw.mean(0), dim=-1), atol=1e-5, rtol=1e-5)
    # the KD term compares softmaxes of exp(s) * cos with the checkpoint's own s (the tiny SigLIP's is log 10)
    net = method_model("PromptSRC", m, CLASSES, N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH_TEXT=3,
                       PROMPT_DEPTH_VISION=3)
    scale = float(m.logit_scale.exp())
    assert scale == pytest.approx(10.0 if name == "test-siglip-tiny" else 1 / 0.07, rel=1e-4)
    cfg = SimpleNamespace(TEXT_LOSS_WEIGHT=25, IMAGE_LOSS_WEIGHT=10)
    x, y = images(), torch.tensor([0, 2])
    with torch.no_grad():
        terms, logits = PromptSRC.loss_terms(SimpleNamespace(model=net, method_cfg=cfg), x, y)
        zs = scale * F.normalize(net.zero_shot.image_features(x), dim=-1) @ net.zero_shot.text_features().t()
        kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(zs, 1), reduction="sum", log_target=True)
        torch.testing.assert_close(terms["scl_logits"], kl / logits.numel())
        torch.testing.assert_close(logits, scale * F.normalize(net.image_features(x), dim=-1)
                                   @ F.normalize(net.text_features(), dim=-1).t(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# TCP's class-aware tokens in the bidirectional SigLIP text tower


@pytest.mark.parametrize("name", ["test-siglip-tiny", "test-eva02-tiny"])
def test_tcp_class_tokens_enter_block_8_at_the_context_slots(name):
    m = model(name)
    net = method_model("TCP", m, CLASSES)
    pl = net.prompt_learner
    s = model_tokenizer(m).first_slot
    assert s == (0 if name == "test-siglip-tiny" else 1)
    ids = tokenize([f"X X X X {c}." for c in CLASSES], model=m)
    assert torch.equal(pl.tokenized_prompts, ids)
    assert torch.equal(pl.eot_idx, model_tokenizer(m).eot_positions(ids))
    assert pl.text_length == (64 if s == 0 else int(pl.eot_idx.max()) + 1)
    seen = {}
    blocks = _text_blocks(m)
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
             for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            feats = net.text_features()
    finally:
        for h in hooks:
            h.remove()
    assert feats.shape == (3, 40 if name != "test-siglip-tiny" else 48)
    pos = (m.text if hasattr(m, "text") else m).positional_embedding
    with torch.no_grad():
        tokens = pl.class_tokens(net.zero_shot.text_features())
    torch.testing.assert_close(seen[0][:, s:s + 4], pl.ctx.detach().expand(3, -1, -1) + pos[s:s + 4])
    torch.testing.assert_close(seen[8][:, s:s + 4], tokens)  # replaced at the input of block 8 (no pos. emb.)
    assert not torch.allclose(seen[7][:, s:s + 4], tokens)
    assert seen[8].shape[1] == pl.text_length


# ---------------------------------------------------------------------------------------------------
# the feature store's frozen tower


@pytest.mark.parametrize("name", FAMILIES + ["test-rn-tiny"])
def test_feature_store_accepts_the_family_image_encoder(name):
    from vlprompt.clip.towers import prompted_vision_encoder
    from vlprompt.features.extract import frozen_tower

    m = model(name)
    enc = prompted_vision_encoder(m, 0, 0)
    assert isinstance(enc, PromptedVisionEncoder) and enc.depth == 0
    assert frozen_tower(SimpleNamespace(frozen_image_tower=lambda: enc)) is enc
    with torch.no_grad():
        torch.testing.assert_close(enc(images()), m.encode_image(images()), atol=0, rtol=0)
    if name != "test-rn-tiny":
        prompted = prompted_vision_encoder(m, 2, 1)
        with pytest.raises(TypeError, match="no unprompted image tower"):
            frozen_tower(SimpleNamespace(frozen_image_tower=lambda: prompted))
