"""Device and precision choice, never hard-coded.

CPU runs stay fp32 (bf16/fp16 matmuls are ~100x slower than fp32 on the CPUs this
project runs on). On CUDA the default is bf16 autocast, fp16 on request.
"""

from __future__ import annotations

import contextlib

import torch

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> cuda if available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(device: torch.device, precision: str | None = None) -> torch.dtype | None:
    """Autocast dtype for ``device`` (``None`` means fp32, no autocast)."""
    if precision in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)} or auto, got {precision!r}")
    dtype = _PRECISIONS[precision]
    if dtype is not None and device.type != "cuda":
        raise ValueError(f"{precision} autocast is only supported on CUDA here; use fp32 on {device.type}")
    return dtype


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
