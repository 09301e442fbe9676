"""``build_transform`` (Dassl's ``dassl.data.transforms``): the same choice names, order and
printed lines. The CoOp family uses ``random_resized_crop``, ``random_flip``, ``normalize``."""
import random

import torch
from torchvision.transforms import (
    AutoAugment,
    AutoAugmentPolicy,
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    Normalize,
    RandomApply,
    RandAugment,
    RandomCrop,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)
from torchvision.transforms.functional import InterpolationMode
from vlprompt.errors import InvalidValueError

AVAI_CHOICES = [
    "random_flip",
    "random_resized_crop",
    "normalize",
    "instance_norm",
    "random_crop",
    "random_translation",
    "center_crop",
    "cutout",
    "imagenet_policy",
    "cifar10_policy",
    "svhn_policy",
    "randaugment",
    "gaussian_noise",
    "colorjitter",
    "randomgrayscale",
    "gaussian_blur",
]
NOT_SUPPORTED = {"randaugment_fixmatch", "randaugment2"}

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Random2DTranslation:
    """Resize to 1.125x then random-crop back to (height, width), with probability p."""

    def __init__(self, height, width, p=0.5, interpolation=InterpolationMode.BILINEAR):
        self.height, self.width, self.p, self.interpolation = height, width, p, interpolation

    def __call__(self, img):
        from torchvision.transforms import functional as F

        if random.uniform(0, 1) > self.p:
            return F.resize(img, [self.height, self.width], self.interpolation)
        new_w, new_h = int(round(self.width * 1.125)), int(round(self.height * 1.125))
        img = F.resize(img, [new_h, new_w], self.interpolation)
        x1 = int(round(random.uniform(0, new_w - self.width)))
        y1 = int(round(random.uniform(0, new_h - self.height)))
        return F.crop(img, y1, x1, self.height, self.width)


class Cutout:
    """Zero out ``n_holes`` square patches of side ``length`` of a tensor image."""

    def __init__(self, n_holes=1, length=16):
        self.n_holes, self.length = n_holes, length

    def __call__(self, img):
        h, w = img.shape[1], img.shape[2]
        mask = torch.ones(h, w, dtype=img.dtype)
        for _ in range(self.n_holes):
            y, x = random.randrange(h), random.randrange(w)
            y1, y2 = max(0, y - self.length // 2), min(h, y + self.length // 2)
            x1, x2 = max(0, x - self.length // 2), min(w, x + self.length // 2)
            mask[y1:y2, x1:x2] = 0
        return img * mask.unsqueeze(0)


class GaussianNoise:
    def __init__(self, mean=0.0, std=0.15, p=0.5):
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


class InstanceNormalization:
    def __call__(self, img):
        c = img.shape[0]
        flat = img.reshape(c, -1)
        mean = flat.mean(1).view(c, 1, 1)
        std = flat.std(1).view(c, 1, 1).clamp_min(1e-8)
        return (img - mean) / std


def build_transform(cfg, is_train=True, choices=None):
    """Build the train or test transform of ``cfg.INPUT`` (prints one ``+ ...`` line per step)."""
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    for choice in choices:
        if choice in NOT_SUPPORTED:
            raise InvalidValueError(f"Transform {choice!r} (a Dassl SSL augmentation) is not supported; supported: {AVAI_CHOICES}")
        if choice not in AVAI_CHOICES:
            raise InvalidValueError(f"Invalid transform choice {choice!r}; expected one of {AVAI_CHOICES}")
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise InvalidValueError(f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}, got {cfg.INPUT.INTERPOLATION!r}")
    target_size = f"{cfg.INPUT.SIZE[0]}x{cfg.INPUT.SIZE[1]}"
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if is_train:
        return _build_transform_train(cfg, choices, target_size, normalize)
    return _build_transform_test(cfg, choices, target_size, normalize)


def _build_transform_train(cfg, choices, target_size, normalize):
    print("Building transform_train")
    tfm = []
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = cfg.INPUT.SIZE
    conditions = ["random_crop" not in choices, "random_resized_crop" not in choices]
    if all(conditions):
        print(f"+ resize to {target_size}")
        tfm.append(Resize(input_size, interpolation=interp))
    if "random_translation" in choices:
        print("+ random translation")
        tfm.append(Random2DTranslation(input_size[0], input_size[1], interpolation=interp))
    if "random_crop" in choices:
        crop_padding = cfg.INPUT.CROP_PADDING
        print(f"+ random crop (padding = {crop_padding})")
        tfm.append(RandomCrop(input_size, padding=crop_padding))
    if "random_resized_crop" in choices:
        s_ = cfg.INPUT.RRCROP_SCALE
        print(f"+ random resized crop (size={tuple(input_size)}, scale={tuple(s_)})")
        tfm.append(RandomResizedCrop(input_size, scale=s_, interpolation=interp))
    if "random_flip" in choices:
        print("+ random flip")
        tfm.append(RandomHorizontalFlip())
    if "imagenet_policy" in choices:
        print("+ imagenet policy")
        tfm.append(AutoAugment(AutoAugmentPolicy.IMAGENET))
    if "cifar10_policy" in choices:
        print("+ cifar10 policy")
        tfm.append(AutoAugment(AutoAugmentPolicy.CIFAR10))
    if "svhn_policy" in choices:
        print("+ svhn policy")
        tfm.append(AutoAugment(AutoAugmentPolicy.SVHN))
    if "randaugment" in choices:
        n_, m_ = cfg.INPUT.RANDAUGMENT_N, cfg.INPUT.RANDAUGMENT_M
        print(f"+ randaugment (n={n_}, m={m_})")
        tfm.append(RandAugment(n_, m_))
    if "colorjitter" in choices:
        b_, c_, s_, h_ = (cfg.INPUT.COLORJITTER_B, cfg.INPUT.COLORJITTER_C,
                          cfg.INPUT.COLORJITTER_S, cfg.INPUT.COLORJITTER_H)
        print(f"+ color jitter (brightness={b_}, contrast={c_}, saturation={s_}, hue={h_})")
        tfm.append(ColorJitter(brightness=b_, contrast=c_, saturation=s_, hue=h_))
    if "randomgrayscale" in choices:
        print("+ random gray scale")
        tfm.append(RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        print("+ gaussian blur (kernel={})".format(cfg.INPUT.GB_K))
        gb_k, gb_p = cfg.INPUT.GB_K, cfg.INPUT.GB_P
        tfm.append(RandomApply([GaussianBlur(gb_k)], p=gb_p))
    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "cutout" in choices:
        cutout_n, cutout_len = cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN
        print(f"+ cutout (n_holes={cutout_n}, length={cutout_len})")
        tfm.append(Cutout(cutout_n, cutout_len))
    if "normalize" in choices:
        print(f"+ normalization (mean={list(cfg.INPUT.PIXEL_MEAN)}, std={list(cfg.INPUT.PIXEL_STD)})")
        tfm.append(normalize)
    if "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        tfm.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)


#: test-time resize modes (open_clip's names): "shortest" resizes the smaller edge then center-crops
#: (CLIP's), "squash" resizes both edges to the input size (SigLIP, DFN-5B, PE-Core)
RESIZE_MODES = ("shortest", "squash")


def _build_transform_test(cfg, choices, target_size, normalize):
    print("Building transform_test")
    tfm = []
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = cfg.INPUT.SIZE
    mode = cfg.INPUT.get("RESIZE_MODE", "shortest")  # key added by the config layer; CLIP's behaviour without it
    if mode not in RESIZE_MODES:
        raise InvalidValueError(f"INPUT.RESIZE_MODE must be one of {list(RESIZE_MODES)}, got {mode!r}")
    if mode == "squash":
        print(f"+ resize to {target_size} (squash: aspect ratio not kept)")
        tfm.append(Resize(tuple(input_size), interpolation=interp))
    else:
        print(f"+ resize the smaller edge to {max(input_size)}")
        tfm.append(Resize(max(input_size), interpolation=interp))
        print(f"+ {target_size} center crop")
        tfm.append(CenterCrop(input_size))
    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "normalize" in choices:
        print(f"+ normalization (mean={list(cfg.INPUT.PIXEL_MEAN)}, std={list(cfg.INPUT.PIXEL_STD)})")
        tfm.append(normalize)
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)
