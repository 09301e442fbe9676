"""bf16 on a CPU (vlprompt/clip/precision.py): PREC bf16 and amp run as CPU bf16 autocast where the CPU
has native bf16, with fp32 master parameters and fp32 logits/loss; fp32 fallback (with a warning)
elsewhere. Support is forced with VLPROMPT_CPU_BF16 so that both branches run on any machine."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from vlprompt.clip import Precision, build_clip_model, resolve_precision
from vlprompt.clip import precision as prec_mod


def test_detection_override_and_flags(monkeypatch):
    monkeypatch.setenv("VLPROMPT_CPU_BF16", "1")
    assert prec_mod.cpu_supports_bf16() is True
    monkeypatch.setenv("VLPROMPT_CPU_BF16", "0")
    assert prec_mod.cpu_supports_bf16() is False
    monkeypatch.delenv("VLPROMPT_CPU_BF16")
    prec_mod._detect_cpu_bf16.cache_clear()
    monkeypatch.setattr(prec_mod, "_cpu_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setattr(prec_mod.platform, "machine", lambda: "x86_64")
    assert prec_mod.cpu_supports_bf16() is False
    prec_mod._detect_cpu_bf16.cache_clear()
    monkeypatch.setattr(prec_mod, "_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert prec_mod.cpu_supports_bf16() is (torch.backends.mkldnn.is_available())
    prec_mod._detect_cpu_bf16.cache_clear()
    monkeypatch.setattr(prec_mod.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(prec_mod, "_cpu_flags", lambda: {"asimd", "bf16"})
    assert prec_mod.cpu_supports_bf16() is (torch.backends.mkldnn.is_available())
    prec_mod._detect_cpu_bf16.cache_clear()


def test_cpu_bf16_and_amp_resolve_to_bf16_autocast(monkeypatch):
    monkeypatch.setenv("VLPROMPT_CPU_BF16", "1")
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("amp", "cpu") == "amp"
    for prec in ("bf16", "amp"):
        p = Precision(prec, "cpu")
        assert p.mode == prec and p.autocast_dtype == torch.bfloat16
        assert p.make_scaler() is None  # bf16 needs no loss scaling
        with p.autocast():
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert Precision("amp", "cuda", allow_cpu=False).autocast_dtype == torch.float16
    # fp16 weights are never used on a CPU outside tests
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert resolve_precision("fp16", "cpu") == "fp32"


def test_cpu_without_bf16_falls_back_with_a_warning(monkeypatch, capsys):
    monkeypatch.setenv("VLPROMPT_CPU_BF16", "0")
    monkeypatch.setattr(prec_mod, "_WARNED", set())
    with pytest.warns(UserWarning, match="native bf16"):
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert "falling back to fp32" in capsys.readouterr().out
    p = Precision("amp", "cpu")
    assert p.mode == "fp32" and p.autocast_dtype is None and p.make_scaler() is None


def test_bf16_step_keeps_fp32_master_params_logits_and_loss(monkeypatch):
    """A CoOp-style step under CPU bf16 autocast: the frozen CLIP stays fp32, gradients reach the fp32
    context, the logits and the loss are fp32, and the features agree with fp32 (cosine > 0.99)."""
    from vlprompt.clip import PromptedTextEncoder, PromptedVisionEncoder, tokenize
    from vlprompt.clip.prompted import normalized_logits

    monkeypatch.setenv("VLPROMPT_CPU_BF16", "1")
    p = Precision("bf16", "cpu")
    m = p.prepare_clip(build_clip_model("test-vit-tiny"))
    for t in m.parameters():
        t.requires_grad_(False)
    assert all(t.dtype == torch.float32 for t in m.parameters())
    te, ve = PromptedTextEncoder(m), PromptedVisionEncoder(m, 2, 2)
    toks = tokenize(["X X dog.", "X X sea lion.", "X X cat."])
    emb = te.embed(toks)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(2, emb.shape[-1], generator=g, requires_grad=True)
    vctx = torch.randn(2, ve.width, generator=g, requires_grad=True)
    images = torch.randn(2, 3, 224, 224, generator=g)
    label = torch.tensor([0, 2])

    def step(autocast):
        ctx.grad = vctx.grad = None
        with autocast:
            prompts = torch.cat([emb[:, :1], ctx.expand(3, -1, -1), emb[:, 3:]], dim=1)
            t = te(prompts, toks.argmax(-1))
            f = ve(images, vctx, [vctx * 0.5])
            logits = normalized_logits(f, t, m.logit_scale)
            loss = F.cross_entropy(logits, label)
        loss.backward()
        return t, f, logits, loss

    t16, f16, logits, loss = step(p.autocast())
    assert t16.dtype == torch.bfloat16 and f16.dtype == torch.bfloat16  # the encoders did run in bf16
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert ctx.grad.dtype == torch.float32 and vctx.grad.dtype == torch.float32
    assert ctx.grad.abs().sum() > 0 and vctx.grad.abs().sum() > 0
    g16 = ctx.grad.clone()
    t32, f32, logits32, loss32 = step(torch.autocast("cpu", enabled=False))
    assert F.cosine_similarity(t16.float(), t32, dim=-1).min() > 0.99
    assert F.cosine_similarity(f16.float(), f32, dim=-1).min() > 0.99
    assert abs(loss.item() - loss32.item()) < 0.05 * max(1.0, loss32.item())
    assert F.cosine_similarity(g16.flatten(), ctx.grad.flatten(), dim=0) > 0.9
