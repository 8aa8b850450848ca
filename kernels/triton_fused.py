"""Fused row-wise kernels of the DiT block and the VAE norm, one memory pass each.

Exactly the semantics of their references in `kernels.reference`:

- `rms_norm_rope`: RMSNorm over the full width C = H*D (float32), cast to x's dtype, times
  the weight, then RoPE on interleaved channel pairs with per-token cos/sin [L, D/2];
- `modulated_layer_norm`: LayerNorm without affine over C (float32), then
  * (1 + scale) + shift of the token's frame;
- `gated_residual`: x + y * gate of the token's frame (or x + y);
- `rms_norm_channels`: the Wan VAE RMS_norm over the channels of [B, C, ...], then SiLU.

The DiT kernels run one program per token row (C = 1536 at full size fits one tile) and
read their operands through row strides, so the per-frame modulation vectors can be the
strided views `mod.unbind(2)` produces. The VAE norm runs one program per tile of spatial
positions and reduces over the channel axis, read in place whether the channels are the
outer axis (stride T*H*W, channels-first) or the inner one (channels-last).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._runtime import check_device, is_interpreted


def _warps(block: int) -> int:
    return max(1, min(8, block // 256))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[B, L, C] with unit stride along C (a copy only in the rare case it is not)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _frames(vec: torch.Tensor, x: torch.Tensor, what: str) -> tuple[torch.Tensor, int]:
    b, n, c = x.shape
    if vec.dim() != 3 or vec.shape[0] != b or vec.shape[2] != c or vec.shape[1] == 0 or n % vec.shape[1]:
        raise ValueError(f"{what} must be [B, F, C] with F dividing the {n} tokens of x {tuple(x.shape)}, "
                         f"got {tuple(vec.shape)}")
    return _rows(vec), n // vec.shape[1]


# --- RMSNorm + RoPE ---------------------------------------------------------------------------

@triton.jit
def _rms_norm_rope_fwd(X, W, Cos, Sin, Out,
                       stride_xb, stride_xl, stride_cl, stride_sl,
                       L, C, HALF_D, eps,
                       HAS_ROPE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // L
    l = row % L
    j = tl.arange(0, BLOCK)              # pair index over the whole row: channels 2j, 2j+1
    ok = j < C // 2
    x_row = X + b.to(tl.int64) * stride_xb + l.to(tl.int64) * stride_xl
    xa = tl.load(x_row + 2 * j, mask=ok, other=0.0).to(tl.float32)
    xb = tl.load(x_row + 2 * j + 1, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(xa * xa + xb * xb, 0) / C + eps)
    wa = tl.load(W + 2 * j, mask=ok, other=0.0).to(tl.float32)
    wb = tl.load(W + 2 * j + 1, mask=ok, other=0.0).to(tl.float32)
    # the reference rounds the normalized row to x's dtype before the weight
    a = (xa * rstd).to(X.dtype.element_ty).to(tl.float32) * wa
    bb = (xb * rstd).to(X.dtype.element_ty).to(tl.float32) * wb
    if HAS_ROPE:
        slot = j % HALF_D
        cs = tl.load(Cos + l * stride_cl + slot, mask=ok, other=1.0).to(tl.float32)
        sn = tl.load(Sin + l * stride_sl + slot, mask=ok, other=0.0).to(tl.float32)
        a, bb = a * cs - bb * sn, a * sn + bb * cs
    o_row = Out + row.to(tl.int64) * C
    tl.store(o_row + 2 * j, a.to(Out.dtype.element_ty), mask=ok)
    tl.store(o_row + 2 * j + 1, bb.to(Out.dtype.element_ty), mask=ok)


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                  num_heads: int, eps: float) -> torch.Tensor:
    """[B, L, C] -> RMSNorm(C) * weight, RoPE per head with cos/sin [L, D/2] -> [B, L, H, D] in x's dtype."""
    b, n, c = x.shape
    if c % num_heads or (c // num_heads) % 2:
        raise ValueError(f"width {c} does not split into {num_heads} heads of an even size")
    d = c // num_heads
    has_rope = cos is not None
    x = _rows(x)
    weight = weight.contiguous()
    if has_rope:
        if cos.shape != (n, d // 2) or sin.shape != (n, d // 2):
            raise ValueError(f"cos/sin must be [L, D/2] = [{n}, {d // 2}], got {tuple(cos.shape)} {tuple(sin.shape)}")
        cos, sin = _rows(cos), _rows(sin)
        check_device(INTERPRETED, x, weight, cos, sin)
    else:
        cos = sin = x  # never read
        check_device(INTERPRETED, x, weight)
    out = torch.empty((b, n, num_heads, d), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block = triton.next_power_of_2(c // 2)
    _rms_norm_rope_fwd[(b * n,)](x, weight, cos, sin, out, x.stride(0), x.stride(1), cos.stride(0), sin.stride(0),
                                 n, c, d // 2, eps, HAS_ROPE=has_rope, BLOCK=block, num_warps=_warps(block))
    return out


# --- modulated LayerNorm ----------------------------------------------------------------------

@triton.jit
def _modulated_layer_norm_fwd(X, Shift, Scale, Out,
                              stride_xb, stride_xl, stride_hb, stride_hf, stride_cb, stride_cf,
                              L, FRAME_LEN, C, eps,
                              BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // L
    l = row % L
    f = l // FRAME_LEN
    offs = tl.arange(0, BLOCK)
    ok = offs < C
    x = tl.load(X + b.to(tl.int64) * stride_xb + l.to(tl.int64) * stride_xl + offs, mask=ok, other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, 0) / C
    xc = tl.where(ok, x - mean, 0.0)
    rstd = tl.math.rsqrt(tl.sum(xc * xc, 0) / C + eps)
    shift = tl.load(Shift + b * stride_hb + f * stride_hf + offs, mask=ok, other=0.0).to(tl.float32)
    scale = tl.load(Scale + b * stride_cb + f * stride_cf + offs, mask=ok, other=0.0).to(tl.float32)
    y = (xc * rstd) * (1 + scale) + shift
    tl.store(Out + row.to(tl.int64) * C + offs, y.to(Out.dtype.element_ty), mask=ok)


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                         out_dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm(C) of [B, L, C], * (1 + scale) + shift per frame ([B, F, C]) -> out_dtype."""
    b, n, c = x.shape
    x = _rows(x)
    shift, frame_len = _frames(shift, x, "shift")
    scale, _ = _frames(scale, x, "scale")
    if scale.shape != shift.shape:
        raise ValueError(f"shift {tuple(shift.shape)} and scale {tuple(scale.shape)} differ")
    check_device(INTERPRETED, x, shift, scale)
    out = torch.empty((b, n, c), dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    block = triton.next_power_of_2(c)
    _modulated_layer_norm_fwd[(b * n,)](x, shift, scale, out, x.stride(0), x.stride(1),
                                        shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
                                        n, frame_len, c, eps, BLOCK=block, num_warps=_warps(block))
    return out


# --- gated residual ---------------------------------------------------------------------------

@triton.jit
def _gated_residual_fwd(X, Y, G, Out,
                        stride_xb, stride_xl, stride_yb, stride_yl, stride_gb, stride_gf,
                        L, FRAME_LEN, C,
                        HAS_GATE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // L
    l = row % L
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < C
    x = tl.load(X + b.to(tl.int64) * stride_xb + l.to(tl.int64) * stride_xl + offs, mask=ok, other=0.0)
    y = tl.load(Y + b.to(tl.int64) * stride_yb + l.to(tl.int64) * stride_yl + offs, mask=ok, other=0.0)
    y = y.to(X.dtype.element_ty).to(tl.float32)   # the reference casts y to x's dtype first
    if HAS_GATE:
        f = l // FRAME_LEN
        g = tl.load(G + b * stride_gb + f * stride_gf + offs, mask=ok, other=0.0).to(tl.float32)
        y = y * g
    out = x.to(tl.float32) + y
    tl.store(Out + row.to(tl.int64) * C + offs, out.to(Out.dtype.element_ty), mask=ok)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """x + y * gate per frame ([B, F, C]; None = no gate), in x's dtype (promoted with the gate's)."""
    if y.shape != x.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} differ")
    b, n, c = x.shape
    x, y = _rows(x), _rows(y)
    has_gate = gate is not None
    if has_gate:
        gate, frame_len = _frames(gate, x, "gate")
        check_device(INTERPRETED, x, y, gate)
        dtype = torch.promote_types(x.dtype, gate.dtype)
    else:
        gate, frame_len = x, 1  # never read
        check_device(INTERPRETED, x, y)
        dtype = x.dtype
    out = torch.empty((b, n, c), dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    block = min(1024, triton.next_power_of_2(c))
    while block > 128 and c % block:   # C = 1536: three full tiles of 512
        block //= 2
    _gated_residual_fwd[(b * n, triton.cdiv(c, block))](
        x, y, gate, out, x.stride(0), x.stride(1), y.stride(0), y.stride(1), gate.stride(0), gate.stride(1),
        n, frame_len, c, HAS_GATE=has_gate, BLOCK=block, num_warps=_warps(block))
    return out


# --- Wan VAE RMS_norm over channels ------------------------------------------------------------

@triton.jit
def _rms_norm_channels_fwd(X, G, Out, C, S, stride_b, stride_c, stride_s, scale,
                           SILU: tl.constexpr, ONE_PASS: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """x viewed as [B, C, S] with any (dense) strides; X and Out share them. Tiles are
    [BLOCK_C, BLOCK_S] and reduce over the channel axis 0."""
    pid_s = tl.program_id(0)
    b = tl.program_id(1)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    ok_s = offs_s < S
    base = b.to(tl.int64) * stride_b
    col = offs_s[None, :].to(tl.int64) * stride_s
    ch = tl.arange(0, BLOCK_C)
    if ONE_PASS:
        ok = (ch < C)[:, None] & ok_s[None, :]
        offs = base + ch[:, None].to(tl.int64) * stride_c + col
        x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
        inv = scale / tl.maximum(tl.sqrt(tl.sum(x * x, 0)), 1e-12)
        g = tl.load(G + ch, mask=ch < C, other=0.0).to(tl.float32)
        y = x * inv[None, :] * g[:, None]
        if SILU:
            y = y / (1.0 + tl.exp(-y))
        tl.store(Out + offs, y.to(Out.dtype.element_ty), mask=ok)
    else:
        acc = tl.zeros([BLOCK_S], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + ch
            ok = (c < C)[:, None] & ok_s[None, :]
            x = tl.load(X + base + c[:, None].to(tl.int64) * stride_c + col, mask=ok, other=0.0)
            x = x.to(tl.float32)
            acc += tl.sum(x * x, 0)
        inv = scale / tl.maximum(tl.sqrt(acc), 1e-12)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + ch
            ok = (c < C)[:, None] & ok_s[None, :]
            offs = base + c[:, None].to(tl.int64) * stride_c + col
            x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(G + c, mask=c < C, other=0.0).to(tl.float32)
            y = x * inv[None, :] * g[:, None]
            if SILU:
                y = y / (1.0 + tl.exp(-y))
            tl.store(Out + offs, y.to(Out.dtype.element_ty), mask=ok)


def rms_norm_channels(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """Wan VAE RMS_norm over dim 1 of [B, C, ...] (gamma with C elements), then SiLU if asked.

    Two memory layouts are read in place: contiguous channels-first, and channels-last
    (`y.movedim(-1, 1)` of a contiguous [B, ..., C] tensor, as the streaming VAE keeps its
    activations); the output has x's layout. Anything else is made contiguous first.
    """
    if x.dim() < 2:
        raise ValueError(f"x must be [B, C, ...], got {tuple(x.shape)}")
    b, c = x.shape[:2]
    if gamma.numel() != c:
        raise ValueError(f"gamma has {gamma.numel()} elements for {c} channels")
    s = x.numel() // max(1, b * c)
    gamma = gamma.reshape(c).contiguous()
    last = x.movedim(1, -1)
    channels_last = not x.is_contiguous() and last.is_contiguous()
    if channels_last:
        out = torch.empty_like(last).movedim(-1, 1)
        strides = (s * c, 1, c)
    else:
        x = x.contiguous()
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        strides = (c * s, s, 1)
    check_device(INTERPRETED, x, gamma)
    if out.numel() == 0:
        return out
    block_c = triton.next_power_of_2(c)
    if channels_last:            # each position's channels are one contiguous row
        if block_c <= 1024:
            one_pass, block_s = True, max(1, 8192 // block_c)
        else:
            one_pass, block_c, block_s = False, 256, 16
    elif block_c <= 128:         # the whole channel column in registers: one read, one write
        one_pass, block_s = True, max(16, 8192 // block_c)
    else:                        # sum of squares first, then normalize (the re-read mostly hits L2)
        one_pass, block_c, block_s = False, 32, 256
    block_s = min(block_s, max(2, triton.next_power_of_2(s)))
    _rms_norm_channels_fwd[(triton.cdiv(s, block_s), b)](
        x, gamma, out, c, s, *strides, float(c) ** 0.5, SILU=bool(silu), ONE_PASS=one_pass,
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4)
    return out


INTERPRETED = is_interpreted(_rms_norm_rope_fwd)
