"""FP8 (e4m3) linear layers for the DiT's transformer blocks (`runtime.fp8: true`).

Weights are quantised once, per output channel; activations per token at run time (a
scale per row: amax / 448). The product is the kernel `kernels.fp8_linear`, dispatched like
every other kernel: on FP8 tensor cores (Hopper; Ada where this torch supports row-wise
scales there) through `torch._scaled_mm`, elsewhere the float32 emulation it is tested
against. Only the linear layers inside the blocks are converted; the embeddings, time path
and head stay in the compute dtype.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

import kernels
from kernels.reference import quantize_rows

log = logging.getLogger(__name__)


class Fp8Linear(nn.Module):
    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = weight_q.shape[1], weight_q.shape[0]
        self.register_buffer("weight_q", weight_q)              # [N, K] e4m3
        self.register_buffer("weight_scale", weight_scale)      # [N, 1] float32
        self.register_buffer("bias", bias)
        self.out_dtype = out_dtype

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Fp8Linear":
        q, s = quantize_rows(lin.weight.data)
        bias = None if lin.bias is None else lin.bias.data.to(lin.weight.dtype)
        return cls(q, s, bias, lin.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Dequantised weight (for code that reads `.weight.dtype` / shape)."""
        return (self.weight_q.float() * self.weight_scale).to(self.out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.fp8_linear(x, self.weight_q, self.weight_scale, self.bias, self.out_dtype)


def convert_blocks_to_fp8(dit: nn.Module) -> int:
    """Replace every nn.Linear inside `dit.blocks` by an Fp8Linear; returns how many."""
    count = 0
    for block in dit.blocks:
        for _, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                    setattr(module, child_name, Fp8Linear.from_linear(child))
                    count += 1
    log.info("FP8: %d linear layers converted", count)
    return count
