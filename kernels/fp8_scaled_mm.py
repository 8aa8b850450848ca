"""FP8 linear layers on the tensor cores: `torch._scaled_mm` with row-wise scales.

The fast twin of `reference.fp8_linear` (same quantisation: activations per token, weights
per output channel, e4m3). Some torch builds run row-wise scaling only on sm_90, or not on
the CPU; `runs_on(device)` settles it once per device with a small probe compared against
the reference, and the dispatch takes the reference where it fails.
"""

from __future__ import annotations

import functools
import logging

import torch

from . import reference

log = logging.getLogger(__name__)


def scaled_product(aq: torch.Tensor, a_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """(aq * a_scale) @ (wq * w_scale)^T + bias: aq [M, K] e4m3 with a scale per row [M, 1],
    wq [N, K] e4m3 with a scale per output channel [N, 1]."""
    return torch._scaled_mm(aq, wq.t(), scale_a=a_scale, scale_b=w_scale.t(), bias=bias, out_dtype=out_dtype)


def fp8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               out_dtype: torch.dtype) -> torch.Tensor:
    aq, a_scale = reference.quantize_rows(x.reshape(-1, x.shape[-1]))
    out = scaled_product(aq, a_scale, weight_q, weight_scale, bias, out_dtype)
    return out.view(*x.shape[:-1], weight_q.shape[0])


@functools.lru_cache(maxsize=None)
def _probe(device: str) -> bool:
    if not hasattr(torch, "_scaled_mm"):
        return False
    gen = torch.Generator().manual_seed(0)
    w, x, b = (torch.randn(*shape, generator=gen) for shape in ((48, 64), (32, 64), (48,)))
    w, x, b = (t.to(device=device, dtype=torch.bfloat16) for t in (w, x, b))
    wq, ws = reference.quantize_rows(w)
    try:
        fast = fp8_linear(x, wq, ws, b, torch.bfloat16).float()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        log.info("FP8: torch._scaled_mm with row-wise scales is unavailable on %s (%s)", device, type(exc).__name__)
        log.debug("FP8 probe on %s failed", device, exc_info=exc)
        return False
    exact = reference.fp8_linear(x, wq, ws, b, torch.float32)
    ok = fast.shape == exact.shape and torch.allclose(fast, exact, atol=0.1, rtol=2e-2)
    if not ok:
        log.warning("FP8: torch._scaled_mm on %s disagrees with the reference; FP8 stays emulated", device)
    return ok


def runs_on(device: torch.device | str) -> bool:
    """Whether this torch runs the row-wise scaled FP8 product on `device` and gets the
    reference's answer (decided once per device)."""
    return _probe(str(torch.device(device)))
