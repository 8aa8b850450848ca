"""Plain-torch references for every kernel: the ground truth the Triton kernels are
tested against, and the path taken on the CPU.

Shapes used throughout (B batch, L tokens, F frames, H heads, D head size, C = H*D):
- a token stream is [B, L, C] with L = F * frame_len (frame-major);
- per-frame modulation vectors are [B, F, C];
- attention operands are [B, L, H, D] and may be strided views into a larger cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional softmax(q k^T / sqrt(D)) v over all keys. [B,Lq,H,D] x [B,Lk,H,D] -> [B,Lq,H,D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous()


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
    num_heads: int, eps: float,
) -> torch.Tensor:
    """RMSNorm over the full width C of [B, L, C] (in float32), times `weight`, then RoPE.

    RoPE rotates interleaved channel pairs (x[2i], x[2i+1]) of each head by the angle whose
    cos/sin are given per token and complex slot: cos, sin are [L, D/2]. With cos None, no
    rotation (cross-attention queries and keys). Returns [B, L, H, D] in x's dtype.
    """
    b, n, c = x.shape
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    xf = xf.to(x.dtype).float() * weight.float()
    xf = xf.view(b, n, num_heads, c // num_heads)
    if cos is not None:
        pairs = xf.unflatten(-1, (-1, 2))
        a, bb = pairs[..., 0], pairs[..., 1]
        cs, sn = cos[None, :, None, :], sin[None, :, None, :]
        xf = torch.stack((a * cs - bb * sn, a * sn + bb * cs), dim=-1).flatten(-2)
    return xf.to(x.dtype)


def _per_token(vec: torch.Tensor, frame_len: int) -> torch.Tensor:
    """[B, F, C] per-frame vectors -> [B, F*frame_len, C] view-broadcast per token."""
    b, f, c = vec.shape
    return vec[:, :, None, :].expand(b, f, frame_len, c).reshape(b, f * frame_len, c)


def modulated_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, out_dtype: torch.dtype,
) -> torch.Tensor:
    """LayerNorm without affine over C (float32), then * (1 + scale) + shift per frame.

    x: [B, L, C] (float32 residual stream); shift, scale: [B, F, C] float32. Returns out_dtype.
    """
    frame_len = x.shape[1] // shift.shape[1]
    y = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    y = y * (1 + _per_token(scale, frame_len)) + _per_token(shift, frame_len)
    return y.to(out_dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """x + y * gate (per frame), in x's dtype (float32). gate None means no gate."""
    if gate is None:
        return x + y.to(x.dtype)
    frame_len = x.shape[1] // gate.shape[1]
    return x + y.to(x.dtype) * _per_token(gate, frame_len)


def rms_norm_channels(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """The Wan VAE's RMS_norm over the channels of a channels-first [B, C, ...] tensor.

    y = x / max(||x||_2 over C, 1e-12) * sqrt(C) * gamma (F.normalize's clamp; gamma has C
    elements, shaped [C, 1, 1, 1] or [C, 1, 1]; no bias), then SiLU when `silu`. Computed in
    float32, returned in x's dtype.
    """
    c = x.shape[1]
    g = gamma.reshape(c, *([1] * (x.dim() - 2))).float()
    y = F.normalize(x.float(), dim=1) * (c ** 0.5) * g
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (e4m3 [M, K], float32 scale [M, 1]) with x ~= q * scale (scale = row amax / 448)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp_(min=1e-12)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def fp8_linear(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
               out_dtype: torch.dtype) -> torch.Tensor:
    """An FP8 linear layer: x [..., K] quantised per row to e4m3, times the e4m3 weight
    [N, K] with a scale per output channel [N, 1], plus bias; returns [..., N] in out_dtype.
    The reference dequantises both operands and multiplies in float32."""
    aq, a_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
    out = (aq.float() * a_scale) @ (weight_q.float() * weight_scale).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype).view(*x.shape[:-1], weight_q.shape[0])
