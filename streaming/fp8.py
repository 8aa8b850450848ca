"""FP8 (e4m3) linear layers for the DiT's transformer blocks (`runtime.fp8: true`).

Weights are quantised once, per output channel; activations per token at run time (a
scale per row: amax / 448). On a Hopper GPU the product runs on the FP8 tensor cores
through `torch._scaled_mm` with row-wise scales and a bf16 output; elsewhere the same
quantisation is emulated in float32 (quantise, dequantise, matmul), which is the CPU twin
the tests compare against. Only the linear layers inside the blocks are converted; the
embeddings, time path and head stay in the compute dtype.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (fp8 [M, K], float32 scale [M, 1]) with x ~= q * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp_(min=1e-12)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def hopper_fp8_available(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
            and hasattr(torch, "_scaled_mm"))


class Fp8Linear(nn.Module):
    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = weight_q.shape[1], weight_q.shape[0]
        self.register_buffer("weight_q", weight_q)              # [N, K] fp8
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
        shape = x.shape
        a = x.reshape(-1, shape[-1])
        aq, ascale = quantize_rows(a)
        if hopper_fp8_available(a.device):
            out = torch._scaled_mm(aq, self.weight_q.t(), scale_a=ascale, scale_b=self.weight_scale.t(),
                                   bias=self.bias, out_dtype=self.out_dtype)
        else:
            out = (aq.float() * ascale) @ (self.weight_q.float() * self.weight_scale).t()
            if self.bias is not None:
                out = out + self.bias.float()
            out = out.to(self.out_dtype)
        return out.view(*shape[:-1], self.out_features)


def convert_blocks_to_fp8(dit: nn.Module) -> int:
    """Replace every nn.Linear inside `dit.blocks` by an Fp8Linear; returns how many."""
    count = 0
    for block in dit.blocks:
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                    setattr(module, child_name, Fp8Linear.from_linear(child))
                    count += 1
    log.info("FP8: %d linear layers converted", count)
    return count
