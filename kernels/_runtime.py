"""Small launch-time helpers shared by the Triton modules (no triton import here)."""

from __future__ import annotations

import os

import torch


def is_interpreted(fn) -> bool:
    """Whether a @triton.jit function was built for Triton's CPU interpreter.

    Triton decides this when the function is decorated (from `TRITON_INTERPRET` at that time),
    so it is a property of the imported module, not of the current environment.
    """
    return type(fn).__name__ == "InterpretedFunction"


def check_device(interpreted: bool, *tensors: torch.Tensor) -> None:
    """One clear sentence when a Triton kernel is asked to run where it cannot."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"Triton kernel operands must be on one device, got {sorted(map(str, devices))}")
    cuda = next(iter(devices)).type == "cuda"
    if interpreted and cuda:
        raise RuntimeError("the Triton kernels were imported with TRITON_INTERPRET=1 and only run on CPU tensors; "
                           "unset TRITON_INTERPRET to run them on the GPU")
    if not interpreted and not cuda:
        raise RuntimeError("Triton kernels need CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before "
                           "importing triton, or use LONGLIVE_KERNELS=auto/torch")


def autotune_enabled() -> bool:
    """`LONGLIVE_AUTOTUNE=0` skips autotuning (one compile, a fixed per-shape default config)."""
    return os.environ.get("LONGLIVE_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")
