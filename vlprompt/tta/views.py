"""The views of one test image, as TPT's official data pipeline makes them (azshue/TPT ``data/datautils.py``,
``AugMixAugmenter``, and ``data/augmix_ops.py``), seeded per image so that a run is reproducible.

* view 0: ``Resize(size, bicubic)`` (shorter side) + ``CenterCrop(size)`` + ``ToTensor`` + normalisation;
* views 1..V-1: each ``RandomResizedCrop(size)`` (scale (0.08, 1), ratio (3/4, 4/3), bilinear) +
  ``RandomHorizontalFlip`` of the **raw** image, then, with AugMix on, the AugMix mix of the official code:
  chain weights ``w ~ Dirichlet(1, 1, 1)``, ``m ~ Beta(1, 1)``, 3 chains of ``randint(1, 4)`` operations drawn
  from {autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y} at
  severity 1, result ``m·x + (1 − m)·Σ wᵢ·chainᵢ`` in normalised-tensor space.

AugMix is on for the fine-grained sets and off for the ImageNet family (the official rule: a test-set id longer
than one letter gets AugMix); ``TTA.AUGMIX`` ``auto`` follows that rule, ``on``/``off`` force it (C-TPT's ``ds``
script passes ``--I_augmix``: AugMix on the ImageNet variants too).

**Randomness (a documented deviation).** The official views draw from the global numpy/torch RNGs inside
DataLoader workers, so they are not reproducible across worker counts. Here every image has its own generators
seeded from ``(TTA.VIEW_SEED, dataset index)``: a torch ``Generator`` for the crop and flip (the same algorithm as
torchvision's ``RandomResizedCrop.get_params``) and a numpy ``RandomState`` for AugMix (the same draws, in the same
order, as the official code), so the views of an image do not depend on the order of the stream or on workers.
"""
import math

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["ViewMaker", "augmix_for_dataset", "AUGMIX_OPS", "IMAGENET_FAMILY"]

#: datasets whose views are crop + flip only under ``TTA.AUGMIX auto`` (the official single-letter set ids)
IMAGENET_FAMILY = ("ImageNet", "ImageNetA", "ImageNetV2", "ImageNetR", "ImageNetSketch")


def augmix_for_dataset(mode, dataset_name):
    """Whether the views of ``dataset_name`` get AugMix under ``TTA.AUGMIX`` = ``mode`` (auto/on/off)."""
    mode = str(mode).lower()
    if mode == "on":
        return True
    if mode == "off":
        return False
    return dataset_name not in IMAGENET_FAMILY


# ------------------------------------------------------------------------------------------------
# AugMix operations (the official ones: level = uniform(0.1, severity), scaled to the operation's range)
# ------------------------------------------------------------------------------------------------


def _int_parameter(level, maxval):
    return int(level * maxval / 10)


def _float_parameter(level, maxval):
    return float(level) * maxval / 10.0


def _sample_level(rng, n):
    return rng.uniform(low=0.1, high=n)


def _autocontrast(img, _, rng, size):
    return ImageOps.autocontrast(img)


def _equalize(img, _, rng, size):
    return ImageOps.equalize(img)


def _posterize(img, level, rng, size):
    level = _int_parameter(_sample_level(rng, level), 4)
    return ImageOps.posterize(img, 4 - level)


def _rotate(img, level, rng, size):
    degrees = _int_parameter(_sample_level(rng, level), 30)
    if rng.uniform() > 0.5:
        degrees = -degrees
    return img.rotate(degrees, resample=Image.BILINEAR)


def _solarize(img, level, rng, size):
    level = _int_parameter(_sample_level(rng, level), 256)
    return ImageOps.solarize(img, 256 - level)


def _affine(img, coeffs, size):
    return img.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR)


def _shear_x(img, level, rng, size):
    level = _float_parameter(_sample_level(rng, level), 0.3)
    if rng.uniform() > 0.5:
        level = -level
    return _affine(img, (1, level, 0, 0, 1, 0), size)


def _shear_y(img, level, rng, size):
    level = _float_parameter(_sample_level(rng, level), 0.3)
    if rng.uniform() > 0.5:
        level = -level
    return _affine(img, (1, 0, 0, level, 1, 0), size)


def _translate_x(img, level, rng, size):
    level = _int_parameter(_sample_level(rng, level), size / 3)
    if rng.random_sample() > 0.5:
        level = -level
    return _affine(img, (1, 0, level, 0, 1, 0), size)


def _translate_y(img, level, rng, size):
    level = _int_parameter(_sample_level(rng, level), size / 3)
    if rng.random_sample() > 0.5:
        level = -level
    return _affine(img, (1, 0, 0, 0, 1, level), size)


#: the official ``augmentations`` list, in its order (``np.random.choice`` indexes it)
AUGMIX_OPS = (_autocontrast, _equalize, _posterize, _rotate, _solarize, _shear_x, _shear_y, _translate_x,
              _translate_y)


# ------------------------------------------------------------------------------------------------
# crops
# ------------------------------------------------------------------------------------------------


def _rrc_params(width, height, gen, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """torchvision's ``RandomResizedCrop.get_params`` with an explicit generator: (top, left, h, w)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=gen).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=gen).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewMaker:
    """``views(img, index)`` -> (V, 3, size, size) normalised views of a PIL image (see the module docstring).

    Args:
        n_views: V (1: view 0 only).
        size: the crop size (``INPUT.SIZE``).
        mean, std: the normalisation (``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``).
        augmix: AugMix on views 1..V-1.
        seed: ``TTA.VIEW_SEED``.
        severity: AugMix severity (1 in the official code).
    """

    def __init__(self, n_views, size=224, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711), augmix=False, seed=0, severity=1):
        if int(n_views) < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.n_views = int(n_views)
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augmix = bool(augmix)
        self.seed = int(seed)
        self.severity = severity

    def preprocess(self, img):
        """``ToTensor`` + normalisation of a PIL image."""
        x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std

    def center(self, img):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        img = TF.resize(img, self.size, interpolation=InterpolationMode.BICUBIC)
        return TF.center_crop(img, self.size)

    def crop_flip(self, img, gen):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        width, height = img.size
        i, j, h, w = _rrc_params(width, height, gen)
        out = TF.resized_crop(img, i, j, h, w, [self.size, self.size], interpolation=InterpolationMode.BILINEAR)
        if torch.rand(1, generator=gen).item() < 0.5:
            out = TF.hflip(out)
        return out

    def augmix_view(self, img, gen, rng):
        x_orig = self.crop_flip(img, gen)
        x = self.preprocess(x_orig)
        if not self.augmix:
            return x
        w = np.float32(rng.dirichlet([1.0, 1.0, 1.0]))
        m = np.float32(rng.beta(1.0, 1.0))
        mix = torch.zeros_like(x)
        for i in range(3):
            x_aug = x_orig.copy()
            for _ in range(rng.randint(1, 4)):
                op = AUGMIX_OPS[rng.choice(len(AUGMIX_OPS))]
                x_aug = op(x_aug, self.severity, rng, self.size)
            mix += float(w[i]) * self.preprocess(x_aug)
        return float(m) * x + (1 - float(m)) * mix

    def generators(self, index):
        """The per-image generators: (torch Generator for crops/flips, numpy RandomState for AugMix)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        rng = np.random.RandomState((self.seed * 1_000_003 + int(index)) % (2 ** 32))
        return gen, rng

    def __call__(self, img, index=0):
        img = img.convert("RGB")
        views = [self.preprocess(self.center(img))]
        if self.n_views > 1:
            gen, rng = self.generators(index)
            views += [self.augmix_view(img, gen, rng) for _ in range(self.n_views - 1)]
        return torch.stack(views)
