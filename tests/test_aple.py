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
    """Literal per-sample reading of spec §5.3 (a)-(c), as an oracle for the batched version."""
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
    with pytest.raises(ValueError, match="ADAPTER"):
        FrequencyAdapter(mode="lowpass")
    with pytest.raises(ValueError, match="SIGMA"):
        FrequencyAdapter(sigma=0)
    with pytest.raises(ValueError, match="ALPHA"):
        FrequencyAdapter(alpha=1.5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        FrequencyAdapter()(torch.randn(3, 8, 8))
