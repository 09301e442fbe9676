"""Shared prompt machinery (vlprompt/clip/{prompted,prompt_init,prompt_learner,precision}.py) on small
random backbones: equality with open_clip, truncated text pass, token positions that change between
layers, prompt-init rules, class-list swapping and checkpoint keys, eval caching, precision."""
import warnings

import pytest
import torch

from tests.helpers import small_resnet_clip
from vlprompt.clip import (
    ClassPromptLearner,
    Precision,
    PromptedTextEncoder,
    PromptedVisionEncoder,
    TextFeatureCache,
    build_clip_model,
    check_prompt_config,
    convert_clip_to_fp16,
    count_tokens,
    init_text_context,
    model_dims,
    prompt_strings,
    random_deep_prompts,
    resolve_precision,
    tokenize,
)


@pytest.fixture(scope="module")
def tiny():
    return build_clip_model("test-vit-tiny")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 224, 224, generator=g)


def capture_block_io(blocks):
    """Record the input and output of every block (batch-first tensors)."""
    ins, outs, handles = {}, {}, []
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_pre_hook(lambda m, a, kw=None, i=i: ins.__setitem__(i, a[0].detach().clone())))
        handles.append(b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.detach().clone())))
    return ins, outs, handles


# ------------------------------------------------------------------------------------------------
# equality with open_clip, truncation
# ------------------------------------------------------------------------------------------------


def test_no_prompts_equal_open_clip(tiny, images):
    te, ve = PromptedTextEncoder(tiny), PromptedVisionEncoder(tiny)
    toks = tokenize(["a photo of a dog.", "an extremely long sentence about a sea lion on a rock", "x"])
    with torch.no_grad():
        torch.testing.assert_close(te.encode_tokens(toks), tiny.encode_text(toks), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ve(images), tiny.encode_image(images), atol=1e-6, rtol=1e-6)
    # a ModifiedResNet image tower works without prompts
    rn = small_resnet_clip()
    with torch.no_grad():
        torch.testing.assert_close(PromptedVisionEncoder(rn)(images[:1]), rn.encode_image(images[:1]))


def test_truncated_text_pass_equals_full_pass(tiny):
    d = model_dims(tiny)
    N, J = 3, 7
    te = PromptedTextEncoder(tiny, n_prompts=N, depth=J)
    toks = tokenize(["X X X cat.", "X X X a much longer class name here.", "X X X b."])
    emb = te.embed(toks)
    emb[:, 1 : 1 + N] = torch.randn(N, d["d_text"])
    deep = [torch.randn(N, d["d_text"]) for _ in range(J - 1)]
    eot = toks.argmax(-1)
    with torch.no_grad():
        full = te(emb, eot, deep, truncate=False)
        short = te(emb, eot, deep)
        # also: prompts that are already cut to the needed length
        cut = te(emb[:, : int(eot.max()) + 1], eot, deep)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# which token positions change between layers
# ------------------------------------------------------------------------------------------------


def test_text_deep_prompts_replace_slots_in_blocks_1_to_J_minus_1(tiny):
    d = model_dims(tiny)
    N, J = 2, 4
    te = PromptedTextEncoder(tiny, n_prompts=N, depth=J)
    toks = tokenize(["X X of a dog.", "X X of a big cat."])
    emb = te.embed(toks)
    deep = [torch.randn(N, d["d_text"]) for _ in range(J - 1)]
    ins, outs, hs = capture_block_io(tiny.transformer.resblocks)
    try:
        with torch.no_grad():
            te(emb, toks.argmax(-1), deep)
    finally:
        for h in hs:
            h.remove()
    for i in range(1, d["text_layers"]):
        x_in, prev = ins[i], outs[i - 1]
        if i < J:  # slots 1..N replaced by the block's own prompt, everything else flows on
            torch.testing.assert_close(x_in[:, 1 : 1 + N], deep[i - 1].expand(2, -1, -1))
            torch.testing.assert_close(x_in[:, :1], prev[:, :1])
            torch.testing.assert_close(x_in[:, 1 + N :], prev[:, 1 + N :])
        else:  # blocks >= J: the previous block's prompt outputs flow on
            torch.testing.assert_close(x_in, prev)


def test_vision_prompts_appended_and_replaced(tiny, images):
    d = model_dims(tiny)
    N, J = 3, 5
    ve = PromptedVisionEncoder(tiny, n_prompts=N, depth=J)
    shallow = torch.randn(2, N, d["d_vision"])  # per-image shallow prompts
    deep = [torch.randn(N, d["d_vision"]) for _ in range(J - 1)]
    ins, outs, hs = capture_block_io(tiny.visual.transformer.resblocks)
    try:
        with torch.no_grad():
            out = ve(images, shallow, deep)
    finally:
        for h in hs:
            h.remove()
    n_patch = tiny.visual.positional_embedding.shape[0]
    assert ins[0].shape[1] == n_patch + N  # appended after CLS + patches
    # layer-0 prompts pass through ln_pre, with no positional embedding
    torch.testing.assert_close(ins[0][:, -N:], tiny.visual.ln_pre(shallow))
    for i in range(1, d["vision_layers"]):
        if i < J:
            torch.testing.assert_close(ins[i][:, -N:], deep[i - 1].expand(2, -1, -1))
            torch.testing.assert_close(ins[i][:, :-N], outs[i - 1][:, :-N])
        else:
            torch.testing.assert_close(ins[i], outs[i - 1])
    assert out.shape == (2, d["d_embed"])
    # per-image shallow prompts: image 0 with its own prompts equals a batch of one
    with torch.no_grad():
        one = ve(images[:1], shallow[0], deep)
    torch.testing.assert_close(one, out[:1], atol=1e-5, rtol=1e-5)


def test_gradients_reach_prompts_only(tiny, images):
    d = model_dims(tiny)
    te = PromptedTextEncoder(tiny, n_prompts=2, depth=3)
    ve = PromptedVisionEncoder(tiny, n_prompts=2, depth=3)
    for p in tiny.parameters():
        p.requires_grad_(False)
    t_sh = torch.zeros(2, d["d_text"], requires_grad=True)
    t_deep = [torch.zeros(2, d["d_text"], requires_grad=True) for _ in range(2)]
    v_sh = torch.zeros(2, d["d_vision"], requires_grad=True)
    v_deep = [torch.zeros(2, d["d_vision"], requires_grad=True) for _ in range(2)]
    toks = tokenize(["X X dog.", "X X cat."])
    emb = te.embed(toks)
    prompts = torch.cat([emb[:, :1], t_sh.expand(2, -1, -1), emb[:, 3:]], dim=1)
    loss = te(prompts, toks.argmax(-1), t_deep).sum() + ve(images[:1], v_sh, v_deep).sum()
    loss.backward()
    for t in [t_sh, v_sh, *t_deep, *v_deep]:
        assert t.grad is not None and t.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_bad_configs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match="larger than the number of transformer layers"):
        PromptedTextEncoder(tiny, n_prompts=2, depth=13)
    with pytest.raises(ValueError, match="larger than the number of transformer layers"):
        PromptedVisionEncoder(tiny, n_prompts=2, depth=20)
    with pytest.raises(ValueError, match=">= 1"):
        PromptedVisionEncoder(tiny, n_prompts=0, depth=2)
    with pytest.raises(ValueError, match="n_ctx: must be >= 1"):
        init_text_context(tiny, 0, "", rule="maple")
    with pytest.raises(ValueError, match="prompt depth"):
        check_prompt_config(2, -1, 12, "TRAINER.X.PROMPT_DEPTH")
    rn = small_resnet_clip()
    with pytest.raises(ValueError, match="ViT image tower"):
        PromptedVisionEncoder(rn, n_prompts=2, depth=1)
    ve = PromptedVisionEncoder(tiny, n_prompts=2, depth=2)
    with pytest.raises(ValueError, match="width"):
        ve(torch.zeros(1, 3, 224, 224), torch.zeros(2, model_dims(tiny)["d_text"]))
    with pytest.raises(ValueError, match="deep vision prompts"):
        ve(torch.zeros(1, 3, 224, 224), torch.zeros(2, 48), [torch.zeros(2, 48)] * 2)
    te = PromptedTextEncoder(tiny, n_prompts=2, depth=3)
    toks = tokenize(["X X dog."])
    with pytest.raises(ValueError, match="expected 2 tokens"):
        te(te.embed(toks), toks.argmax(-1), [torch.zeros(3, 32)])


# ------------------------------------------------------------------------------------------------
# prompt initialisation rules and class buffers
# ------------------------------------------------------------------------------------------------


def test_init_rules(tiny):
    emb = tiny.token_embedding.weight
    ids = tokenize("a photo of a")[0]
    c = init_text_context(tiny, 16, "a_photo of a", rule="coop")  # coop: N = number of words
    assert c.n_ctx == 4 and c.prefix == "a photo of a" and c.from_phrase
    torch.testing.assert_close(c.vectors, emb[ids[1:5]])
    m = init_text_context(tiny, 2, "a photo of a", rule="maple")  # first N learnable, whole phrase kept
    assert m.n_ctx == 2 and m.prefix == "a photo of a"
    torch.testing.assert_close(m.vectors, emb[ids[1:3]])
    r = init_text_context(tiny, 8, "a photo of a", rule="maple")  # N > 4: random
    assert not r.from_phrase and r.prefix == " ".join(["X"] * 8) and r.vectors.shape == (8, 32)
    assert abs(r.vectors.std().item() - 0.02) < 0.01
    u = init_text_context(tiny, 2, "a photo of a", rule="mudpt")  # first N words, rest dropped
    assert u.prefix == "a photo"
    rnd = init_text_context(tiny, 5, "", rule="coop")
    assert rnd.n_ctx == 5 and rnd.prefix == "X X X X X"
    assert prompt_strings("a photo of a", ["sea_lion"]) == ["a photo of a sea lion."]
    with pytest.raises(ValueError, match="only 4 words"):
        init_text_context(tiny, 6, "a photo of a", rule="mudpt")


def test_class_buffers_keep_frozen_words_and_swap(tiny):
    init = init_text_context(tiny, 2, "a photo of a", rule="maple")
    pl = ClassPromptLearner(tiny, ["dog", "sea_lion"], init.prefix, init.n_ctx)
    pl.ctx = torch.nn.Parameter(init.vectors.clone())
    emb = tiny.token_embedding.weight
    of_a = tokenize("of a")[0][1:3]
    # positions 3, 4 of every prompt are the frozen "of a" tokens
    torch.testing.assert_close(pl.token_suffix[:, :2], emb[of_a].expand(2, -1, -1))
    assert pl.name_lens == [1, count_tokens("sea lion")]
    prompts = pl.assemble(pl.ctx)
    assert prompts.shape == (2, pl.text_length, 32)
    assert pl.text_length == int(tokenize(prompt_strings("a photo of a", ["sea lion"]))[0].argmax()) + 1
    # class-derived buffers are not in the state dict
    assert set(pl.state_dict()) == {"ctx"}
    # swap to another class list
    pl.set_classnames(["a", "b", "c", "d_e"])
    assert pl.n_cls == 4 and pl.assemble(pl.ctx).shape[0] == 4 and pl.classnames[-1] == "d e"
    # legacy checkpoints with token_prefix/suffix load, even strictly
    legacy = {"ctx": torch.ones(2, 32), "token_prefix": torch.zeros(7, 1, 32), "token_suffix": torch.zeros(7, 74, 32)}
    pl.load_state_dict(legacy, strict=True)
    assert torch.equal(pl.ctx.data, torch.ones(2, 32))
    assert pl.token_prefix.shape[0] == 4


def test_random_deep_prompts():
    torch.manual_seed(0)
    pl = random_deep_prompts(8, 2, 512)
    assert len(pl) == 8 and pl[0].shape == (2, 512) and pl[0].dtype == torch.float32
    assert abs(torch.cat([p.flatten() for p in pl]).std().item() - 0.02) < 0.002


# ------------------------------------------------------------------------------------------------
# eval-time caching, precision
# ------------------------------------------------------------------------------------------------


def test_text_feature_cache():
    owner = torch.nn.Linear(2, 2)
    cache, calls = TextFeatureCache(), []

    def compute():
        calls.append(1)
        return owner.weight.sum()

    owner.eval()
    with torch.no_grad():
        cache.get(owner, compute)
        cache.get(owner, compute)
    assert len(calls) == 1  # once per evaluation
    opt = torch.optim.SGD(owner.parameters(), lr=0.1)
    owner.weight.grad = torch.ones(2, 2)
    opt.step()  # parameters changed -> recomputed
    with torch.no_grad():
        cache.get(owner, compute)
    assert len(calls) == 2
    owner.load_state_dict({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})
    with torch.no_grad():
        cache.get(owner, compute)
    assert len(calls) == 3
    owner.train()  # train mode: never cached
    with torch.no_grad():
        cache.get(owner, compute)
        cache.get(owner, compute)
    assert len(calls) == 5
    owner.eval()  # grad enabled: never cached (the result must carry a graph)
    cache.get(owner, compute)
    cache.get(owner, compute)
    assert len(calls) == 7


def test_precision_cpu_fallback_and_fp16_conversion(images, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CPU_BF16", "0")  # a CPU without native bf16 (see test_precision_cpu.py)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert resolve_precision("fp16", "cpu") == "fp32"
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="PREC must be one of"):
        resolve_precision("fp8", "cpu")
    p = Precision("amp", "cpu")
    assert p.mode == "fp32" and p.make_scaler() is None and p.autocast_dtype is None
    # fp16 weights (CPU kernels, tests only): close to fp32, LayerNorms compute in fp32
    m = build_clip_model("test-vit-tiny")
    toks = tokenize(["a photo of a dog."])
    with torch.no_grad():
        ref_t, ref_i = m.encode_text(toks), m.encode_image(images[:1])
    Precision("fp16", "cpu", allow_cpu=True).prepare_clip(m)
    assert m.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float16
    assert m.text_projection.dtype == torch.float16 and m.visual.proj.dtype == torch.float16
    assert m.token_embedding.weight.dtype == torch.float32  # fixed embeddings stay fp32
    te, ve = PromptedTextEncoder(m, 2, 2), PromptedVisionEncoder(m, 2, 2)
    with torch.no_grad():
        t = te.encode_tokens(toks)
        v = ve(images[:1], torch.zeros(2, 48), [torch.zeros(2, 48)])
        v0 = PromptedVisionEncoder(m)(images[:1])
    assert t.dtype == torch.float16 and v.dtype == torch.float16
    torch.testing.assert_close(t.float(), ref_t, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(v0.float(), ref_i, atol=2e-2, rtol=2e-2)
    # converting twice is harmless
    convert_clip_to_fp16(m)
    assert m.ln_final.__class__.__name__ == "LayerNormFp32"
