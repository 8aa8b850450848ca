"""FP8 (e4m3) linear layers for the DiT's transformer blocks (`runtime.fp8: true`).

Weights are quantised once, per output channel; activations per token at run time (a
scale per row: amax / 448). On a GPU with FP8 tensor cores (Hopper; Ada where this torch
supports row-wise scales there, which a one-time probe checks) the product runs through
`torch._scaled_mm` with row-wise scales and a bf16 output; elsewhere the same quantisation
is emulated in float32 (quantise, dequantise, matmul), the twin the tests compare against.
The tests also run the `_scaled_mm` call itself on the CPU, which torch 2.13 supports. Only the linear layers inside the blocks are converted; the
embeddings, time path and head stay in the compute dtype.
"""

from __future__ import annotations

import functools
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


def scaled_linear(aq: torch.Tensor, a_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """(aq * a_scale) @ (wq * w_scale)^T + bias on the FP8 tensor cores: aq [M, K] fp8 with a
    scale per row [M, 1]; wq [N, K] fp8 with a scale per output channel [N, 1]."""
    return torch._scaled_mm(aq, wq.t(), scale_a=a_scale, scale_b=w_scale.t(), bias=bias, out_dtype=out_dtype)


def emulated_linear(aq: torch.Tensor, a_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The same product in float32 from the dequantised operands (the CPU twin)."""
    out = (aq.float() * a_scale) @ (wq.float() * w_scale).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


@functools.lru_cache(maxsize=None)
def scaled_mm_works(device: str) -> bool:
    """Whether this torch build runs the row-wise scaled FP8 product on `device` and gets the
    emulation's answer (row-wise scaling needs sm_90 in some builds; a probe settles it)."""
    if not hasattr(torch, "_scaled_mm"):
        return False
    gen = torch.Generator().manual_seed(0)
    w, x, b = (torch.randn(*shape, generator=gen) for shape in ((48, 64), (32, 64), (48,)))
    w, x, b = (t.to(device=device, dtype=torch.bfloat16) for t in (w, x, b))
    (wq, ws), (aq, as_) = quantize_rows(w), quantize_rows(x)
    try:
        fast = scaled_linear(aq, as_, wq, ws, b, torch.bfloat16).float()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        log.info("FP8: torch._scaled_mm with row-wise scales is unavailable on %s (%s)", device, _first_line(exc))
        return False
    exact = emulated_linear(aq, as_, wq, ws, b, torch.float32)
    ok = fast.shape == exact.shape and torch.allclose(fast, exact, atol=0.1, rtol=2e-2)
    if not ok:
        log.warning("FP8: torch._scaled_mm on %s disagrees with the emulation; FP8 stays off", device)
    return ok


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def fp8_matmul_available(device: torch.device) -> bool:
    """FP8 tensor cores (sm_89+) that this torch can drive with row-wise scales."""
    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
            and scaled_mm_works(str(device)))


class Fp8Linear(nn.Module):
    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = weight_q.shape[1], weight_q.shape[0]
        self.register_buffer("weight_q", weight_q)              # [N, K] fp8
        self.register_buffer("weight_scale", weight_scale)      # [N, 1] float32
        self.register_buffer("bias", bias)
        self.out_dtype = out_dtype
        self.use_scaled_mm: bool | None = None   # decided at the first forward, for its device

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
        if self.use_scaled_mm is None:
            self.use_scaled_mm = fp8_matmul_available(a.device)
        product = scaled_linear if self.use_scaled_mm else emulated_linear
        out = product(aq, ascale, self.weight_q, self.weight_scale, self.bias, self.out_dtype)
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
