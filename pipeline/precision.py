"""Mixed precision for teacher forward passes and student training on GPUs.

``precision``: ``auto`` (bf16 autocast on a GPU that supports it, else fp16 with a gradient scaler;
full fp32 on the CPU, where autocast measured slower than fp32 for these small models), ``fp32``,
``bf16`` (also on the CPU when asked for) or ``fp16`` (GPU only). The dynamic programs always run
in fp32: ``ChainCRF`` disables autocast around its kernels.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a GPU (device cuda); use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` (a no-op context for fp32)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 training (bf16 and fp32 need none)."""
    if autocast_dtype(precision, device) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None
