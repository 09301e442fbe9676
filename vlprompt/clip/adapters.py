"""APLe's image adapter: Gaussian filtering in the 2-D frequency domain fused with the input image.

docs/METHODS.md (APLe, image adapter). The adapter acts on the *normalised* image tensor (B, C, H, W) that the
data loader produces, at training and at test time, before the prompted image encoder:

    fused = alpha * x + (1 - alpha) * F^-1( G * F(x) )

Two modes (``TRAINER.APLE.ADAPTER``):

``paper`` (default)
    What the paper describes: ``G(f_y, f_x) = exp(-(f_y^2 + f_x^2) / (2 sigma^2))`` on the FFT
    frequency grid (``fftfreq``, cycles per pixel), peak gain 1 at DC, applied to the (uncentred)
    spectrum of every channel; the real part of the inverse FFT is fused with the image. Because the
    mask is real and even (``G(-f) = G(f)``), ``G * F(x)`` is Hermitian for a real ``x`` and
    ``real(ifft2(G * fft2(x))) == irfft2(G * rfft2(x))``; the half-spectrum form is used (half the
    work, no complex output to discard). A constant image passes unchanged; a (Nyquist, Nyquist)
    checkerboard gets gain ``exp(-0.5 / (2 sigma^2))`` (~4e-44 for sigma 0.05), i.e. it is reduced
    to ``alpha`` of its amplitude.

``reference_code``
    What the public APLe trainer actually computes, quirks included:
    (a) its hand-written "fftshift" rolls *every* dimension of the per-sample (C, H, W) spectrum by
    half its size, the channel dimension too; (b) the complex spectrum is cast to the image's real
    dtype, dropping the imaginary part; (c) the mask is built in the uncentred ``fftfreq`` layout but
    multiplies the *centred* spectrum; then the same shift is applied again and the real part of the
    inverse FFT is taken. Net effect: only a narrow band around the (Nyquist, Nyquist) corner
    survives, so ``F^-1(...) ~ 0`` and ``fused ~ 0.9 x`` on smooth inputs, and what survives of input
    channel ``c`` lands in output channel ``(c + 2) mod C``.

Both modes work on the whole batch with ``torch.fft`` (no per-sample Python loop). The FFT runs in
fp32 (fp64 for fp64 inputs) outside autocast, and the result is cast back to the input dtype. The
masks are cached per (layout, H, W, device, dtype). ``alpha == 1`` returns the input unchanged
(adapter disabled) without any FFT.
"""
import math

import torch
import torch.nn as nn

from .errors import ArgError

__all__ = ["ADAPTER_MODES", "FrequencyAdapter", "gaussian_frequency_mask"]

ADAPTER_MODES = ("paper", "reference_code")


def gaussian_frequency_mask(h, w, sigma, half=False, device=None, dtype=torch.float32):
    """``exp(-(f_y^2 + f_x^2) / (2 sigma^2))`` on the uncentred FFT grid, peak 1 at DC.

    ``f_y = fftfreq(h)``, ``f_x = fftfreq(w)`` (or ``rfftfreq(w)`` with ``half=True``, matching
    ``rfft2``), in cycles per pixel. Returns (h, w) or (h, w // 2 + 1). Built in fp64, then cast.
    """
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64) if half else torch.fft.fftfreq(w, dtype=torch.float64)
    r2 = fy.view(-1, 1) ** 2 + fx.view(1, -1) ** 2
    mask = torch.exp(-r2 / (2.0 * float(sigma) ** 2))
    return mask.to(device=device, dtype=dtype)


class FrequencyAdapter(nn.Module):
    """APLe's Gaussian frequency-domain image adapter (no learnable parameters, no state).

    Args:
        sigma: standard deviation of the Gaussian mask in cycles per pixel (> 0).
        alpha: weight of the original image in the fusion, in [0, 1] (1 disables the adapter).
        mode: ``"paper"`` or ``"reference_code"`` (see the module docstring).

    Input: (B, C, H, W) floating tensor. Output: same shape and dtype.
    """

    def __init__(self, sigma=0.05, alpha=0.9, mode="paper"):
        super().__init__()
        if mode not in ADAPTER_MODES:
            raise ArgError("mode", f"must be one of {ADAPTER_MODES}, got {mode!r}")
        sigma = float(sigma)
        alpha = float(alpha)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ArgError("sigma", f"must be a positive number (cycles/pixel), got {sigma}")
        if not 0.0 <= alpha <= 1.0:
            raise ArgError("alpha", f"must lie in [0, 1], got {alpha}")
        self.sigma = sigma
        self.alpha = alpha
        self.mode = mode
        self._masks = {}

    def extra_repr(self):
        return f"mode={self.mode}, sigma={self.sigma}, alpha={self.alpha}"

    def _mask(self, h, w, half, device, dtype):
        key = (half, h, w, device, dtype)
        mask = self._masks.get(key)
        if mask is None:
            mask = gaussian_frequency_mask(h, w, self.sigma, half=half, device=device, dtype=dtype)
            self._masks[key] = mask
        return mask

    def filtered(self, x):
        """The filtered image ``F^-1(G * F(x))`` alone (fp32, or fp64 for fp64 input)."""
        if x.dim() != 4:
            raise ValueError(f"FrequencyAdapter expects images of shape (B, C, H, W), got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"FrequencyAdapter expects a floating-point image tensor, got {x.dtype}")
        cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        _, c, h, w = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(cdtype)
            if self.mode == "paper":
                mask = self._mask(h, w, True, x.device, cdtype)
                return torch.fft.irfft2(torch.fft.rfft2(xf) * mask, s=(h, w))
            # reference_code: (a) roll C, H, W of each sample by size // 2; (b) keep the real part;
            # (c) uncentred mask on the centred spectrum; same roll again; real part of the inverse.
            mask = self._mask(h, w, False, x.device, cdtype)
            shifts, dims = (c // 2, h // 2, w // 2), (1, 2, 3)
            spec = torch.roll(torch.fft.fft2(xf), shifts=shifts, dims=dims).real
            spec = torch.roll(spec * mask, shifts=shifts, dims=dims)
            return torch.fft.ifft2(spec).real

    def forward(self, x):
        if self.alpha == 1.0:
            return x
        cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        fused = self.alpha * x.to(cdtype) + (1.0 - self.alpha) * self.filtered(x)
        return fused.to(x.dtype)
