"""The one device helper: picks the accelerator and the autocast dtype for every command."""

from __future__ import annotations

import contextlib
import os

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` → CUDA when present, else CPU; anything else is passed to torch (e.g. `cuda:1`)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (`auto` or `bf16`), plain float32 otherwise.

    CPU bf16 autocast exists but is slower than float32 on most CPUs, so `auto` keeps CPU in float32.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    if precision in ("auto", "bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
