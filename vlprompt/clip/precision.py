"""Precision policy for prompt learning on a frozen CLIP (``TRAINER.<X>.PREC``).

=======  ==========================================================================================
PREC     meaning
=======  ==========================================================================================
fp32     plain fp32 everywhere.
fp16     frozen CLIP weights in fp16 (open_clip ``convert_weights_to_lp``: Linear/Conv/attention
         weights and the two projections; LayerNorms compute in fp32 like OpenAI CLIP's). Trainable
         parameters stay fp32 master copies and are cast at insertion, so SGD updates happen in fp32
         (the official code updates fp16 prompts in place).
amp      fp32 model, forward under ``torch.autocast(float16)``, loss scaled with
         ``torch.amp.GradScaler``.
bf16     fp32 model, forward under ``torch.autocast(bfloat16)``, no scaler.
=======  ==========================================================================================

On a CPU:

* ``bf16`` runs as CPU bf16 autocast when the CPU has native bf16 instructions (x86 ``avx512_bf16`` /
  ``amx_bf16``, Arm ``bf16``; see :func:`cpu_supports_bf16`), with the frozen CLIP and every trainable
  parameter in fp32 (master copies), and logits/loss in fp32 (the logit head and the loss run
  outside autocast);
* ``amp`` runs the same way (bf16 autocast, no loss scaler: bf16 has fp32's exponent range);
* ``fp16``, and ``bf16``/``amp`` on a CPU without native bf16, fall back to fp32 with a warning
  printed once per process (emulated bf16 is slower than fp32).

``VLPROMPT_CPU_BF16=0`` (or ``1``) overrides the detection.
"""
import contextlib
import functools
import os
import platform
import warnings

import torch
from vlprompt.errors import InvalidValueError

__all__ = ["PRECISIONS", "Precision", "resolve_precision", "convert_clip_to_fp16", "cpu_supports_bf16"]

PRECISIONS = ("fp32", "fp16", "amp", "bf16")
_WARNED = set()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            flags.update(line.split(":", 1)[1].split())
    return flags


@functools.lru_cache(maxsize=None)
def _detect_cpu_bf16():
    if not torch.backends.mkldnn.is_available():
        return False
    flags = _cpu_flags()
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    if machine in ("aarch64", "arm64"):
        return "bf16" in flags
    return False


def cpu_supports_bf16():
    """Whether this CPU computes bf16 natively (so CPU bf16 autocast is faster than fp32).

    ``VLPROMPT_CPU_BF16`` = ``1``/``0`` forces the answer; otherwise oneDNN must be available and the
    CPU flags (``/proc/cpuinfo``) must list ``avx512_bf16`` or ``amx_bf16`` (x86) or ``bf16`` (Arm)."""
    env = os.environ.get("VLPROMPT_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return _detect_cpu_bf16()


def _warn_once(key, msg):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg)
        print(f"Warning: {msg}")


def resolve_precision(prec, device):
    """Effective precision for ``device``: ``prec`` itself, or ``"fp32"`` where it cannot run (warned
    once): on a CPU, ``fp16`` always and ``bf16``/``amp`` without native bf16 (see the module doc)."""
    prec = str(prec).lower()
    if prec not in PRECISIONS:
        raise InvalidValueError(f"PREC must be one of {PRECISIONS}, got '{prec}'")
    dev = torch.device(device)
    if prec == "fp32" or dev.type == "cuda":
        return prec
    if dev.type == "cpu" and prec in ("bf16", "amp"):
        if cpu_supports_bf16():
            return prec
        _warn_once(prec, f"PREC {prec} needs a CPU with native bf16 (avx512_bf16/amx_bf16); falling back to fp32")
        return "fp32"
    _warn_once(prec, f"PREC {prec} is not supported on {dev.type}; falling back to fp32")
    return "fp32"


def convert_clip_to_fp16(clip_model):
    """Convert a CLIP model's weights to fp16 in place (returns it).

    Uses open_clip's ``convert_weights_to_lp`` (the same set of tensors OpenAI CLIP halves), and
    makes every LayerNorm compute in fp32 and cast back (OpenAI CLIP's LayerNorm; open_clip's
    ``LayerNormFp32``), since its weights stay fp32.
    """
    from open_clip.model import convert_weights_to_lp
    from open_clip.transformer import LayerNorm, LayerNormFp32

    convert_weights_to_lp(clip_model, dtype=torch.float16)
    for m in clip_model.modules():
        if type(m) in (LayerNorm, torch.nn.LayerNorm):
            m.__class__ = LayerNormFp32
    return clip_model


class Precision:
    """Resolved precision for one trainer.

    Args:
        prec: one of :data:`PRECISIONS`.
        device: the training device (see :func:`resolve_precision` for what a CPU runs).
        allow_cpu: keep the requested mode on a CPU whatever it supports (tests only; CPU fp16 and
            emulated bf16 kernels are slow).

    Attributes: ``requested``, ``mode`` (effective), ``device``.
    """

    def __init__(self, prec, device, allow_cpu=False):
        self.requested = str(prec).lower()
        self.device = torch.device(device)
        if allow_cpu:
            if self.requested not in PRECISIONS:
                raise InvalidValueError(f"PREC must be one of {PRECISIONS}, got '{prec}'")
            self.mode = self.requested
        else:
            self.mode = resolve_precision(prec, self.device)

    def __repr__(self):
        return f"Precision(requested={self.requested}, mode={self.mode}, device={self.device})"

    @property
    def autocast_dtype(self):
        """``torch.float16`` for amp on CUDA, ``torch.bfloat16`` for bf16 (and for amp on a CPU), else None."""
        if self.mode == "amp":
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return {"bf16": torch.bfloat16}.get(self.mode)

    def prepare_clip(self, clip_model):
        """Put the frozen CLIP in the dtype this mode needs (fp16 weights for ``fp16``; else fp32)."""
        clip_model.float()
        if self.mode == "fp16":
            from .backbone import fp16_weights_supported

            ok, why = fp16_weights_supported(clip_model)
            if not ok:
                from vlprompt.config import ConfigError

                raise ConfigError(why)
            convert_clip_to_fp16(clip_model)
        return clip_model

    def autocast(self):
        """Context manager for the forward pass (``torch.autocast`` for amp/bf16, else a no-op)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def make_scaler(self):
        """A ``torch.amp.GradScaler`` for fp16 autocast (amp on CUDA), else None."""
        if self.autocast_dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None
