"""The exact speed-ups of the prompted encoders (vlprompt/clip/fast_attention.py, the text encoder's
shared prefix and length groups) equal the plain computation: open_clip's own blocks on every class
padded to the longest EOT. fp32, outputs and gradients to 1e-6, on small random backbones."""
import pytest
import torch

from tests.helpers import small_resnet_clip
from vlprompt.clip import PromptedTextEncoder, PromptedVisionEncoder, build_clip_model, model_dims, tokenize
from vlprompt.clip import fast_attention as fa
from vlprompt.clip import prompted
from vlprompt.clip.prompted import _length_groups

TOL = dict(atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    m = build_clip_model("test-vit-tiny")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _close(a, b, scale=1.0):
    # fp32 sums in another order: 1e-6 relative to the magnitude of the values compared
    torch.testing.assert_close(a, b, atol=1e-6 * max(1.0, scale * float(b.detach().abs().max())), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# one block
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_block_forward_equals_open_clip_block_with_grads(tiny, tower):
    blocks = tiny.transformer.resblocks if tower == "text" else tiny.visual.transformer.resblocks
    block = blocks[3]
    assert fa.fast_block_reason(block) is None
    E = block.attn.embed_dim
    L = 9
    mask = tiny.attn_mask[:L, :L] if tower == "text" else None
    x = torch.randn(4, L, E, generator=_gen(0), requires_grad=True)
    ref = block(x, attn_mask=mask)
    g = torch.randn(ref.shape, generator=_gen(1))
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    out = fa.block_forward(block, x, mask)
    (gx,) = torch.autograd.grad(out, x, g)
    _close(out, ref)
    _close(gx, gx_ref)
    assert not torch.equal(gx, torch.zeros_like(gx))


def test_bool_mask_means_masked_out_like_multihead_attention(tiny):
    block = tiny.transformer.resblocks[0]
    x = torch.randn(2, 6, block.attn.embed_dim, generator=_gen(2))
    bool_mask = torch.ones(6, 6, dtype=torch.bool).triu(1)  # True = not allowed (nn.MultiheadAttention)
    with torch.no_grad():
        _close(fa.block_forward(block, x, bool_mask), block(x, attn_mask=tiny.attn_mask[:6, :6]))


def test_prefix_block_forward_equals_full_causal_block(tiny):
    block = tiny.transformer.resblocks[5]
    E = block.attn.embed_dim
    P = 4
    prefix = torch.randn(1, P, E, generator=_gen(3), requires_grad=True)
    rows = [torch.randn(2, 3, E, generator=_gen(4)), torch.randn(3, 6, E, generator=_gen(5))]
    mask = tiny.attn_mask
    new_prefix, new_rows = fa.prefix_block_forward(
        block, prefix, rows, mask[:P, :P], [mask[P : P + r.shape[1], : P + r.shape[1]] for r in rows]
    )
    for r, nr in zip(rows, new_rows):
        full = torch.cat([prefix.expand(r.shape[0], -1, -1), r], dim=1)
        ref = block(full, attn_mask=mask[: full.shape[1], : full.shape[1]])
        _close(nr, ref[:, P:])
        _close(new_prefix.expand(r.shape[0], -1, -1), ref[:, :P])


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_block_forward_first_rows_only_equal_the_full_blocks_rows_with_grads(tiny, tower):
    blocks = tiny.transformer.resblocks if tower == "text" else tiny.visual.transformer.resblocks
    block = blocks[2]
    E, L, R = block.attn.embed_dim, 9, 6
    mask = tiny.attn_mask[:L, :L] if tower == "text" else None
    x = torch.randn(3, L, E, generator=_gen(6), requires_grad=True)
    ref = block(x, attn_mask=mask)[:, :R]
    out = fa.block_forward(block, x, mask, n_out=R)
    assert out.shape == (3, R, E)
    g = torch.randn(ref.shape, generator=_gen(7))
    _close(out, ref)
    # the dropped rows still serve as keys and values: their gradient is not zero (vision has no mask)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    (gx,) = torch.autograd.grad(out, x, g)
    _close(gx, gx_ref)
    if tower == "vision":
        assert float(gx[:, R:].abs().max()) > 0


def test_rows_block_forward_equals_the_full_blocks_row_per_sequence(tiny):
    block = tiny.transformer.resblocks[4]
    E, P, S = block.attn.embed_dim, 3, 5
    prefix = torch.randn(1, P, E, generator=_gen(8), requires_grad=True)
    x = torch.randn(4, S, E, generator=_gen(9), requires_grad=True)
    pos = torch.tensor([4, 0, 2, 4])
    mask = tiny.attn_mask[: P + S, : P + S]
    full = torch.cat([prefix.expand(4, -1, -1), x], dim=1)
    ref = block(full, attn_mask=mask)[torch.arange(4), P + pos]
    out = fa.rows_block_forward(block, x, pos, mask[P:], prefix)
    assert out.shape == (4, E)
    _close(out, ref)
    g = torch.randn(ref.shape, generator=_gen(10))
    for a, b in zip(torch.autograd.grad(out, (prefix, x), g), torch.autograd.grad(ref, (prefix, x), g)):
        _close(a, b)
    # without a prefix
    ref0 = block(x, attn_mask=mask[:S, :S])[torch.arange(4), pos]
    _close(fa.rows_block_forward(block, x, pos, mask[:S, :S]), ref0)


def test_encoders_compute_only_the_rows_they_read(tiny, monkeypatch):
    """The vision encoder drops the prompt rows before a block that replaces them and computes only the
    class token in the last block; the text encoder computes only the EOT rows in its last block."""
    seen = []
    orig_q = fa._q
    monkeypatch.setattr(fa, "_q", lambda block, h: seen.append(tuple(h.shape[:2])) or orig_q(block, h))
    d = model_dims(tiny)["d_vision"]
    n_layers = model_dims(tiny)["vision_layers"]
    N, B, depth = 2, 3, 3
    images = torch.randn(B, 3, 224, 224, generator=_gen(11))
    ve = PromptedVisionEncoder(tiny, N, depth, fast=True)
    prompts = torch.randn(N, d, generator=_gen(12))
    deep = [torch.randn(N, d, generator=_gen(13))] * (depth - 1)
    with torch.no_grad():
        out = ve(images, prompts, deep)
    L = 1 + (224 // tiny.visual.conv1.kernel_size[0]) ** 2 + N
    # blocks 0 and 1 (their prompt outputs are replaced by blocks 1 and 2), then the last block's class token
    assert seen == [(B, L - N), (B, L - N), (B, 1)], (seen, n_layers)
    seen.clear()
    te = PromptedTextEncoder(tiny, fast=True)
    toks = tokenize(["a photo of a dog.", "a photo of a large black cat.", "x"])
    with torch.no_grad():
        t_out = te.encode_tokens(toks)
    # one (classes of the group, 1) query per length group, in the last block only
    assert sum(n for n, _ in seen) == 3 and all(q == 1 for _, q in seen), seen
    # READ_ROWS_ONLY = False: every row is computed (no query-only projection), same values
    seen.clear()
    monkeypatch.setattr(prompted, "READ_ROWS_ONLY", False)
    with torch.no_grad():
        _close(ve(images, prompts, deep), out)
        _close(te.encode_tokens(toks), t_out)
    assert seen == []


def test_unrecognised_blocks_and_hooks_fall_back(tiny):
    from open_clip.transformer import CustomResidualAttentionBlock

    custom = CustomResidualAttentionBlock(32, 2, qk_norm=True)
    assert "not open_clip's ResidualAttentionBlock" in fa.fast_block_reason(custom)
    block = tiny.transformer.resblocks[0]
    h = block.register_forward_hook(lambda m, a, o: None)
    try:
        assert fa.fast_block_reason(block) == "the block has forward hooks"
        assert "block 0" in fa.blocks_fast_reason(tiny.transformer.resblocks)
        # the encoder then runs the blocks' own forwards: the hook sees the block input
        seen = []
        h2 = block.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
        toks = tokenize(["a photo of a dog.", "a photo of a big cat."])
        te = PromptedTextEncoder(tiny, fast=True)
        with torch.no_grad():
            te.encode_tokens(toks)
        h2.remove()
        assert seen == [torch.Size([2, int(toks.argmax(-1).max()) + 1, 32])]
    finally:
        h.remove()
    assert fa.fast_block_reason(block) is None
    drop = torch.nn.MultiheadAttention(32, 2, dropout=0.1, batch_first=True)
    block2 = type(block)(32, 2)
    block2.attn = drop
    assert fa.fast_block_reason(block2.train()) == "attention dropout in training mode"
    assert fa.fast_block_reason(block2.eval()) is None


# ------------------------------------------------------------------------------------------------
# text encoder: shared prefix, length groups
# ------------------------------------------------------------------------------------------------

NAMES = ["dog", "sea lion", "a very long class name with many words in it", "cat", "x y", "hot air balloon"]


def _text_setup(tiny, n_ctx, frozen_words=""):
    toks = tokenize([f"{'X ' * n_ctx}{frozen_words}{c}." for c in NAMES])
    te = PromptedTextEncoder(tiny, n_prompts=n_ctx, depth=tiny.transformer.layers)
    emb = te.embed(toks)
    return te, emb, toks.argmax(-1)


def _run(te, emb, eot, ctx, deep, fast, **kw):
    """Prompts [SOS | ctx | rest] built from ``ctx`` (N, d) or (K, N, d); returns features and grads."""
    K = emb.shape[0]
    n = ctx.shape[-2]
    c = ctx.unsqueeze(0).expand(K, -1, -1) if ctx.dim() == 2 else ctx
    prompts = torch.cat([emb[:, :1], c, emb[:, 1 + n :]], dim=1)
    te.fast = fast
    out = te(prompts, eot, deep, **kw)
    leaves = [ctx] + [d for d in deep if d is not None and d.requires_grad]
    grads = torch.autograd.grad(out, leaves, torch.randn(out.shape, generator=_gen(9)))
    return out, grads


@pytest.mark.parametrize("depth", [1, 2, 5, 12])
def test_text_fast_paths_equal_plain_with_deep_prompts_and_grads(tiny, depth):
    N = 3
    te, emb, eot = _text_setup(tiny, N, "a photo of a ")
    d = model_dims(tiny)["d_text"]
    ctx = torch.randn(N, d, generator=_gen(10), requires_grad=True)
    deep = [torch.randn(N, d, generator=_gen(11 + i), requires_grad=True) for i in range(depth - 1)]
    if depth > 2:
        deep[1] = None  # a skipped block
    ref, gref = _run(te, emb, eot, ctx, deep, fast=False)
    # detected prefix: SOS + ctx + "a photo of a" (the frozen words are the same for every class)
    with torch.no_grad():
        prompts = torch.cat([emb[:, :1], ctx.expand(len(NAMES), -1, -1), emb[:, 1 + N :]], dim=1)
        assert te.shared_prefix_length(prompts, eot, deep, slice(1, 1 + N)) == 1 + N + 4
    for kw in ({}, {"shared_prefix": 1 + N}, {"shared_prefix": 1 + N + 4}):
        out, g = _run(te, emb, eot, ctx, deep, fast=True, **kw)
        _close(out, ref)
        for a, b in zip(g, gref):
            _close(a, b)
    te.fast = None


def test_text_declared_prefix_is_checked(tiny):
    N = 2
    te, emb, eot = _text_setup(tiny, N)
    d = model_dims(tiny)["d_text"]
    ctx = torch.randn(len(NAMES), N, d, generator=_gen(20))  # class-specific: rows differ at 1..N
    prompts = torch.cat([emb[:, :1], ctx, emb[:, 1 + N :]], dim=1)
    with pytest.raises(ValueError, match="differ at position 1"):
        te(prompts, eot, shared_prefix=1 + N)


def test_csc_with_equal_values_gets_its_own_gradients(tiny):
    """Class-specific contexts initialised to the same values: equal rows, but not one tensor. Nothing is
    shared while gradients flow (each class's context gets only its own class's gradient)."""
    N = 2
    te, emb, eot = _text_setup(tiny, N)
    d = model_dims(tiny)["d_text"]
    ctx = torch.randn(N, d, generator=_gen(21)).repeat(len(NAMES), 1, 1).requires_grad_()
    ref, (gref,) = _run(te, emb, eot, ctx, [], fast=False)
    out, (g,) = _run(te, emb, eot, ctx, [], fast=True)
    _close(out, ref)
    _close(g, gref)
    assert not torch.allclose(g[0], g[1])  # the classes' gradients differ
    # without gradients, equal values are shared (SOS + ctx)
    with torch.no_grad():
        prompts = torch.cat([emb[:, :1], ctx, emb[:, 1 + N :]], dim=1)
        assert te.shared_prefix_length(prompts, eot, [], slice(1, 1 + N)) == 1 + N
        _close(te(prompts, eot), ref)


def test_per_class_deep_prompts_limit_the_prefix(tiny):
    N = 2
    te, emb, eot = _text_setup(tiny, N, "a photo of a ")
    d = model_dims(tiny)["d_text"]
    K = len(NAMES)
    ctx = torch.randn(N, d, generator=_gen(30), requires_grad=True)
    per_class = torch.randn(K, N, d, generator=_gen(31), requires_grad=True)  # differs per class
    expanded = torch.randn(N, d, generator=_gen(32), requires_grad=True)
    deep = [per_class, expanded.unsqueeze(0).expand(K, -1, -1)]
    with torch.no_grad():
        prompts = torch.cat([emb[:, :1], ctx.expand(K, -1, -1), emb[:, 1 + N :]], dim=1)
        assert te.shared_prefix_length(prompts, eot, deep, slice(1, 1 + N)) == 0  # only SOS left: not worth it
        assert te.shared_prefix_length(prompts, eot, deep[1:], slice(1, 1 + N)) == 1 + N + 4  # stride-0 view
    te.fast = False
    out_ref = te(torch.cat([emb[:, :1], ctx.expand(K, -1, -1), emb[:, 1 + N :]], dim=1), eot, deep)
    g_ref = torch.autograd.grad(out_ref.sum(), [ctx, per_class, expanded])
    te.fast = True
    out = te(torch.cat([emb[:, :1], ctx.expand(K, -1, -1), emb[:, 1 + N :]], dim=1), eot, deep, shared_prefix=1 + N)
    g = torch.autograd.grad(out.sum(), [ctx, per_class, expanded])
    te.fast = None
    _close(out, out_ref)
    for a, b in zip(g, g_ref):
        _close(a, b)


def test_per_image_context_cocoop_style(tiny):
    """CoCoOp: a context per image (ctx + meta-net bias), shared by the classes of that image."""
    N = 2
    te, emb, eot = _text_setup(tiny, N, "a photo of a ")
    d = model_dims(tiny)["d_text"]
    base = torch.randn(N, d, generator=_gen(40), requires_grad=True)
    bias = torch.randn(3, 1, d, generator=_gen(41), requires_grad=True)
    for fast in (False, True):
        te.fast = fast
        feats = []
        for b in range(3):
            c = (base + bias[b]).unsqueeze(0).expand(len(NAMES), -1, -1)
            feats.append(te(torch.cat([emb[:, :1], c, emb[:, 1 + N :]], dim=1), eot))
        out = torch.stack(feats)
        g = torch.autograd.grad(out.pow(2).sum(), [base, bias])
        if fast:
            _close(out, ref)
            for a, b_ in zip(g, gref):
                _close(a, b_)
        else:
            ref, gref = out, g
    te.fast = None


def test_length_groups_cover_every_class_once():
    lengths = torch.tensor([5, 9, 5, 7, 12, 9, 6, 30, 7])
    for max_groups in (1, 2, 3, 100):
        groups = _length_groups(lengths, max_groups)
        assert len(groups) <= max_groups
        idx = torch.cat([g for g, _ in groups])
        assert sorted(idx.tolist()) == list(range(len(lengths)))
        for g, n in groups:
            assert int(lengths[g].max()) == n
    assert [n for _, n in _length_groups(lengths, 100)] == [5, 6, 7, 9, 12, 30]
    assert [n for _, n in _length_groups(lengths, 1)] == [30]


@pytest.mark.parametrize("max_groups", [1, 3, 100])
def test_text_length_groups_equal_plain_full_pass(tiny, max_groups):
    te = PromptedTextEncoder(tiny, max_length_groups=max_groups)
    toks = tokenize(NAMES + ["a photo of a dog."])
    emb = te.embed(toks)
    eot = toks.argmax(-1)
    te.fast = False
    with torch.no_grad():
        full = te(emb, eot, truncate=False)
        te.fast = True
        _close(te(emb, eot), full)
        _close(te(emb, eot, truncate=False), full)
        torch.testing.assert_close(te.encode_tokens(toks), tiny.encode_text(toks), atol=1e-5, rtol=1e-5)
    te.fast = None


def test_text_fast_path_with_fp16_weights(tiny):
    from vlprompt.clip import convert_clip_to_fp16

    m = build_clip_model("test-vit-tiny")
    convert_clip_to_fp16(m)
    toks = tokenize(["a photo of a dog.", "a photo of a sea lion."])
    te_fast, te_plain = PromptedTextEncoder(m, fast=True), PromptedTextEncoder(m, fast=False)
    with torch.no_grad():
        a, b = te_fast.encode_tokens(toks), te_plain.encode_tokens(toks)
    assert a.dtype == torch.float16
    # fp16 through every block, summed in another order by each path: on AVX2 kernels one of 80 values
    # differs by 2.4e-3 (AVX-512: below 2e-3); a wrong fast path differs by far more
    torch.testing.assert_close(a.float(), b.float(), atol=4e-3, rtol=4e-3)


# ------------------------------------------------------------------------------------------------
# vision encoder
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth,per_image", [(0, False), (1, False), (3, True), (12, False)])
def test_vision_fast_path_equals_plain_with_grads(tiny, depth, per_image):
    d = model_dims(tiny)["d_vision"]
    N, B = 2, 3
    images = torch.randn(B, 3, 224, 224, generator=_gen(50))
    shape = (B, N, d) if per_image else (N, d)
    prompts = torch.randn(shape, generator=_gen(51), requires_grad=True) if depth else None
    deep = [torch.randn(shape, generator=_gen(52 + i), requires_grad=True) for i in range(max(depth - 1, 0))]
    leaves = ([prompts] if depth else []) + deep
    res = {}
    for fast in (False, True):
        ve = PromptedVisionEncoder(tiny, N if depth else 0, depth, fast=fast)
        out = ve(images, prompts, deep)
        if leaves:
            g = torch.autograd.grad(out, leaves, torch.randn(out.shape, generator=_gen(60)))
        else:
            g = ()
        res[fast] = (out, g)
    _close(res[True][0], res[False][0])
    for a, b in zip(res[True][1], res[False][1]):
        _close(a, b)


def test_resnet_tower_untouched(images=None):
    rn = small_resnet_clip()
    x = torch.randn(1, 3, 224, 224, generator=_gen(70))
    with torch.no_grad():
        torch.testing.assert_close(PromptedVisionEncoder(rn, fast=True)(x), rn.encode_image(x), atol=0, rtol=0)
        # its text tower (open_clip blocks) takes the fast path, equal to encode_text
        toks = tokenize(["a photo of a dog.", "x"])
        torch.testing.assert_close(PromptedTextEncoder(rn, fast=True).encode_tokens(toks), rn.encode_text(toks),
                                   atol=1e-5, rtol=1e-5)
