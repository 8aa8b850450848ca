"""One dispatch point for every kernel: the fast path on CUDA tensors, the torch reference elsewhere.

The fast paths are the Triton kernels and, for FP8 linear layers, torch's row-wise scaled
`_scaled_mm` on FP8 tensor cores (`kernels.fp8_scaled_mm`).
`LONGLIVE_KERNELS` forces a path: `torch` (always the reference), `triton` (the fast paths
even on CPU tensors, which for Triton needs `TRITON_INTERPRET=1`), `auto` (default). Without it, the config's
`runtime.kernels` (set through `set_default_mode`) decides.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os

import torch

from . import reference

log = logging.getLogger(__name__)

_MODES = ("auto", "triton", "torch")


_default_mode = "auto"


def set_default_mode(value: str) -> None:
    """The path when LONGLIVE_KERNELS is unset (from the config's runtime.kernels)."""
    global _default_mode
    if value not in _MODES:
        raise ValueError(f"kernel mode must be one of {', '.join(_MODES)}, not {value!r}")
    _default_mode = value


def mode() -> str:
    value = os.environ.get("LONGLIVE_KERNELS", "").strip().lower() or _default_mode
    if value not in _MODES:
        raise ValueError(f"LONGLIVE_KERNELS must be one of {', '.join(_MODES)}, not {value!r}")
    return value


@functools.lru_cache(maxsize=None)
def _triton_module(name: str):
    try:
        return importlib.import_module(f"kernels.{name}")
    except ImportError as exc:  # triton missing: the reference serves
        log.info("Triton kernels unavailable (%s); using torch references", exc)
        return None


def use_triton(t: torch.Tensor, forced: str | None = None) -> bool:
    m = forced or mode()
    if m == "torch":
        return False
    if m == "triton":
        return True
    return t.is_cuda


def pick(kernel: str, t: torch.Tensor, fast_module: str):
    """The implementation of `kernel` for tensor `t`: the fast one (a Triton wrapper, or
    torch's FP8 tensor-core product) or the reference. A fast module may say where it runs
    with `runs_on(device)` (decided once per device); elsewhere the reference serves."""
    if use_triton(t):
        mod = _triton_module(fast_module)
        if mod is not None and hasattr(mod, kernel):
            runs_on = getattr(mod, "runs_on", None)
            if runs_on is None or runs_on(t.device):
                return getattr(mod, kernel)
    return getattr(reference, kernel)
