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

On a CPU, fp16/amp/bf16 fall back to fp32 with a warning printed once per process.
"""
import contextlib
import warnings

import torch

__all__ = ["PRECISIONS", "Precision", "resolve_precision", "convert_clip_to_fp16"]

PRECISIONS = ("fp32", "fp16", "amp", "bf16")
_WARNED = set()


def resolve_precision(prec, device):
    """Effective precision for ``device``: ``prec`` itself, or ``"fp32"`` on a CPU (warned once)."""
    prec = str(prec).lower()
    if prec not in PRECISIONS:
        raise ValueError(f"PREC must be one of {PRECISIONS}, got '{prec}'")
    dev = torch.device(device)
    if prec != "fp32" and dev.type != "cuda":
        if prec not in _WARNED:
            _WARNED.add(prec)
            msg = f"PREC {prec} is not supported on {dev.type}; falling back to fp32"
            warnings.warn(msg)
            print(f"Warning: {msg}")
        return "fp32"
    return prec


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
        device: the training device (CPU -> fp32 fallback).
        allow_cpu: keep fp16/bf16 on a CPU (tests only; CPU fp16 kernels are slow).

    Attributes: ``requested``, ``mode`` (effective), ``device``.
    """

    def __init__(self, prec, device, allow_cpu=False):
        self.requested = str(prec).lower()
        self.device = torch.device(device)
        if allow_cpu:
            if self.requested not in PRECISIONS:
                raise ValueError(f"PREC must be one of {PRECISIONS}, got '{prec}'")
            self.mode = self.requested
        else:
            self.mode = resolve_precision(prec, self.device)

    def __repr__(self):
        return f"Precision(requested={self.requested}, mode={self.mode}, device={self.device})"

    @property
    def autocast_dtype(self):
        """``torch.float16`` for amp, ``torch.bfloat16`` for bf16, else None."""
        return {"amp": torch.float16, "bf16": torch.bfloat16}.get(self.mode)

    def prepare_clip(self, clip_model):
        """Put the frozen CLIP in the dtype this mode needs (fp16 weights for ``fp16``; else fp32)."""
        clip_model.float()
        if self.mode == "fp16":
            convert_clip_to_fp16(clip_model)
        return clip_model

    def autocast(self):
        """Context manager for the forward pass (``torch.autocast`` for amp/bf16, else a no-op)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def make_scaler(self):
        """A ``torch.amp.GradScaler`` for amp, else None."""
        if self.mode == "amp":
            return torch.amp.GradScaler(self.device.type)
        return None
