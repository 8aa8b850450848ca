"""Small launch-time helpers shared by the Triton modules (no triton import here)."""

from __future__ import annotations

import os

import torch

# Shared memory one thread block may use (the opt-in maximum, in bytes) per CUDA compute
# capability, as the CUDA programming guide lists it; what Triton checks a kernel against.
SHARED_MEMORY_PER_BLOCK = {
    80: 166912,   # A100
    86: 101376,   # RTX 30xx, A40
    87: 166912,   # Jetson Orin
    89: 101376,   # RTX 40xx, L4, L40S
    90: 232448,   # H100, H200
    100: 232448,  # B200
    120: 101376,  # RTX 50xx
}

# Set by the compile report (`bench.compile_report`) while it compiles the launches for a GPU this process does not have:
# (compute capability, shared memory per block). The launch code then runs on placeholder
# CPU tensors, untuned, and nothing is launched.
_offline: tuple[int, int] | None = None


def offline_target() -> tuple[int, int] | None:
    return _offline


def set_offline_target(target: tuple[int, int] | None) -> None:
    global _offline
    _offline = target


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
    if _offline is not None and not interpreted and not cuda:
        return  # compiling for an absent GPU: CPU placeholders stand in for its tensors
    if interpreted and cuda:
        raise RuntimeError("the Triton kernels were imported with TRITON_INTERPRET=1 and only run on CPU tensors; "
                           "unset TRITON_INTERPRET to run them on the GPU")
    if not interpreted and not cuda:
        raise RuntimeError("Triton kernels need CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before "
                           "importing triton, or use LONGLIVE_KERNELS=auto/torch")


def autotune_enabled() -> bool:
    """`LONGLIVE_AUTOTUNE=0` skips autotuning (one compile, a fixed per-shape default config)."""
    if _offline is not None:
        return False
    return os.environ.get("LONGLIVE_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")
