"""Kernels of the generator's hot path, each with a torch reference and one dispatch point.

Public entry points (see `kernels.reference` for the exact maths and shapes):
`attention`, `rms_norm_rope`, `modulated_layer_norm`, `gated_residual`, for the VAE
`rms_norm_channels`, and for FP8 linear layers `fp8_linear` (with `fp8_tensor_cores`).

The Triton implementations live in `kernels.triton_attention` and `kernels.triton_fused`
(named apart from the entry points, so importing them never shadows a function here); the
FP8 product in `kernels.fp8_scaled_mm`.
"""

from __future__ import annotations

import torch

from . import reference
from .dispatch import mode, pick, set_default_mode, use_triton

__all__ = ["attention", "rms_norm_rope", "modulated_layer_norm", "gated_residual", "rms_norm_channels",
           "fp8_linear", "fp8_tensor_cores", "reference", "mode", "set_default_mode", "use_triton"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return pick("attention", q, "triton_attention")(q, k, v)


def rms_norm_rope(x, weight, cos, sin, num_heads: int, eps: float) -> torch.Tensor:
    return pick("rms_norm_rope", x, "triton_fused")(x, weight, cos, sin, num_heads, eps)


def modulated_layer_norm(x, shift, scale, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    return pick("modulated_layer_norm", x, "triton_fused")(x, shift, scale, eps, out_dtype)


def gated_residual(x, y, gate=None) -> torch.Tensor:
    return pick("gated_residual", x, "triton_fused")(x, y, gate)


def rms_norm_channels(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False) -> torch.Tensor:
    return pick("rms_norm_channels", x, "triton_fused")(x, gamma, silu)



def fp8_linear(x, weight_q, weight_scale, bias, out_dtype: torch.dtype) -> torch.Tensor:
    return pick("fp8_linear", x, "fp8_scaled_mm")(x, weight_q, weight_scale, bias, out_dtype)


def fp8_tensor_cores(device: torch.device) -> bool:
    """Whether FP8 linear layers run on FP8 tensor cores (sm_89+) on `device` with this torch;
    elsewhere they still work, emulated by the reference (slower than bf16)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return False
    from . import fp8_scaled_mm
    return fp8_scaled_mm.runs_on(device)
