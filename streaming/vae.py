"""The Wan2.1 VAE decoder, streaming one block of latent frames at a time.

What it computes (the official `WanVAE_.decode`, decoder side only)
---------------------------------------------------------------------
Latents from the DiT are normalised; they are first mapped back with the official
per-channel constants, ``z / (1 / std) + mean``, then a 1x1x1 conv (``conv2``) runs and
the decoder turns every latent frame into pixels:

    conv1 -> middle (residual, single-head spatial attention, residual)
          -> upsamples: per stage ``num_res_blocks + 1`` residual blocks, then a
             resample (nearest 2x + 3x3 conv halving the channels; stages with temporal
             upsampling first run ``time_conv``, a (3,1,1) conv doubling the channels
             that become two frames) -> head (norm, SiLU, conv to RGB)

The norm is ``x / ||x||_channels * sqrt(C) * gamma`` (no bias). Every 3x3x3 conv is
*causal* in time: it sees the current frame and the two before it, zeros before the first
frame. The first latent frame of a stream skips ``time_conv`` and gives a single video
frame; every later latent frame gives ``temporal_factor`` (4) frames, so F latents give
1 + 4(F - 1) frames. Output is clamped to [-1, 1].

Streaming design
----------------
Because every temporal mixing is a causal conv, decoding is exactly a recurrence. The
official code keeps, per causal conv, the last two frames of its input and re-runs the
conv over them with the next frame. Here each causal conv keeps the equivalent *carry*:
the products of its kernel with its last inputs that belong to its next two output
frames (``W0 x[t-1] + W1 x[t]`` and ``W0 x[t]``), so nothing is re-convolved and no input
is concatenated. The carries and a "first frame done" flag form a `DecoderState`; a block
of latents continues the stream where the previous block stopped, with no seam, and
`StreamingVAEDecoder.state()` / `set_state()` copy it for rewinds.

A call decodes ``frames_per_pass`` latent frames per pass through the network: 1 on CPU
(the official order; small tensors stay in cache and avoid fresh page-faulting
allocations), the whole block on GPU (fewer, larger kernels). Both compute the same thing.

Layout and kernels (the hot path)
---------------------------------
Activations are contiguous ``[B, T, H, W, C]`` tensors (channels last, frames as batch):
every spatial op is a 2D op over ``B*T`` images in channels-last memory, which oneDNN
(CPU) and cuDNN (GPU, bf16) handle well, while 3D convs are slow on CPU. On the CPU,
`vae.threads` (when set) is torch's intra-op thread count for the length of a decode call:
these convolutions split well over cores even where a toy DiT's small ops do not.

- causal 3x3x3 conv = one 2D conv producing all three time taps (3 * C_out channels),
  then two shifted adds and the carry;
- 1x1x1 convs and ``time_conv`` ((3,1,1)) are matrix products on the channel axis;
- nearest 2x upsample + 3x3 conv = one 2x2 conv on the low-resolution input with four
  sub-pixel phases (2.25x fewer multiply-adds; the 4x upsampled input is never made);
- the RMS norm and SiLU run in place on the channel axis.

Parameters keep the official names and shapes (``decoder.conv1``, ``decoder.middle.N``,
``decoder.upsamples.N.{residual,shortcut,resample,time_conv}``, ``decoder.head.{0,2}``,
``conv2``), so ``Wan2.1_VAE.pth`` loads as it is; `WanVAEDecoder.pack()` derives the
compute-layout weights once after loading.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels

from .config import Config, ConfigError, VAEConfig
from .weights import WeightFiles, WeightsError, check_state, read_checkpoint

log = logging.getLogger(__name__)

# the official Wan2.1 latent statistics (16 channels)
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

CACHE_T = 2          # temporal kernel 3: each causal conv reaches 2 frames back
NORM_EPS = 1e-12     # F.normalize's floor on the channel norm
SMALL_C = 8          # at most this many channels: norm as a loop over channels (faster on CPU)
ENCODER_PREFIXES = ("encoder.", "conv1.")
DECODER_PREFIXES = ("decoder.", "conv2.")


# -- state ----------------------------------------------------------------------------
@dataclass
class DecoderState:
    """Everything needed to continue a stream: one cache per temporal causal conv (its
    carry: the products already computed for its next two output frames,
    ``[B, 2, H, W, C_out]``; None before its first frame, i.e. zeros) and whether the
    stream's first latent frame has been decoded."""

    caches: list[torch.Tensor | None] = field(default_factory=list)
    started: bool = False

    @classmethod
    def fresh(cls, slots: int) -> "DecoderState":
        return cls([None] * slots, False)

    def clone(self) -> "DecoderState":
        return DecoderState([None if c is None else c.clone() for c in self.caches], self.started)


# -- building blocks (bottom-up) ---------------------------------------------------------
class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma, over the channel (last) axis; no bias.
    `gamma` keeps the official shape: (C, 1, 1, 1) for video, (C, 1, 1) for images."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.dim = dim
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self._scale: torch.Tensor | None = None

    def pack(self) -> None:
        self._scale = (self.gamma.detach().reshape(-1) * math.sqrt(self.dim)).contiguous()

    def forward(self, x: torch.Tensor, silu: bool = False, inplace: bool = False) -> torch.Tensor:
        """`inplace`: the caller no longer needs `x`, so the torch path may overwrite it
        (one full-size temporary fewer; the fused kernel always writes a new tensor)."""
        if kernels.use_triton(x):   # fused norm (+ SiLU) kernel, reading channels-last in place
            return kernels.rms_norm_channels(x.movedim(-1, 1), self.gamma, silu).movedim(1, -1)
        c = x.shape[-1]
        if c <= SMALL_C and x.device.type == "cpu":
            # a strided loop over a few channels beats a reduction over a short inner axis
            ss = x[..., 0] * x[..., 0]
            for i in range(1, c):
                ss.addcmul_(x[..., i], x[..., i])
            inv = ss.add_(NORM_EPS * NORM_EPS).rsqrt_().unsqueeze(-1)
        else:
            inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(NORM_EPS).reciprocal_()
        y = (x.mul_(inv) if inplace else x * inv).mul_(self._scale)
        return F.silu(y, inplace=True) if silu else y


def _spatial(x: torch.Tensor) -> torch.Tensor:
    """[N, H, W, C] contiguous -> the same memory as an [N, C, H, W] channels-last view."""
    return x.permute(0, 3, 1, 2)


def _channels_last(y: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] conv output -> [N, H, W, C] contiguous (a view when already channels last)."""
    return y.permute(0, 2, 3, 1).contiguous()


class CausalConv3d(nn.Module):
    """Conv3d with a (kt, k, k) kernel, zero 'same' spatial padding and causal time padding
    (kt - 1 zero frames before the stream).

    With a temporal kernel of 3, output frame t = W0 x[t-2] + W1 x[t-1] + W2 x[t] + bias.
    One 2D conv (or matmul, for 1x1) computes all three products W_j x[s] for the new
    frames at once (3 * C_out channels); each product is added to the output frame it
    belongs to, and the products that belong to the next two frames (which this call does
    not produce) are kept as the carry in `DecoderState` slot `slot`. This is the same
    arithmetic as caching the last two input frames and re-running the conv over them,
    without stacking or re-convolving any input."""

    def __init__(self, in_dim: int, out_dim: int, kernel: tuple[int, int, int]):
        super().__init__()
        kt, kh, kw = kernel
        if kt not in (1, 1 + CACHE_T) or kh != kw or kh % 2 == 0:
            raise ValueError(f"unsupported causal conv kernel {kernel}")
        self.in_dim, self.out_dim, self.kernel = in_dim, out_dim, kernel
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim, kt, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.slot = -1
        self._w: torch.Tensor | None = None

    @property
    def temporal(self) -> bool:
        return self.kernel[0] > 1

    def pack(self) -> None:
        """Compute-layout weight: the time taps stacked on the output channels (tap-major)."""
        kt, k, _ = self.kernel
        w = self.weight.detach().permute(2, 0, 1, 3, 4).reshape(kt * self.out_dim, self.in_dim, k, k)
        self._w = w[:, :, 0, 0].contiguous() if k == 1 else w.contiguous(memory_format=torch.channels_last)

    def _products(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """[B, T, H, W, C_in] -> [B, T, H, W, kt * C_out]: every tap applied to every frame."""
        b, t, h, w, c = x.shape
        if self.kernel[1] == 1:
            return F.linear(x, self._w, bias)
        y = F.conv2d(_spatial(x.view(b * t, h, w, c)), self._w, bias, padding=self.kernel[1] // 2)
        return _channels_last(y).view(b, t, h, w, -1)

    def forward(self, x: torch.Tensor, state: DecoderState | None = None) -> torch.Tensor:
        """x [B, T, H, W, C_in] -> [B, T, H, W, C_out]; advances this conv's carry."""
        if not self.temporal:
            return self._products(x, self.bias)
        b, t, h, w, _ = x.shape
        co = self.out_dim
        y = self._products(x, None).view(b, t, h, w, CACHE_T + 1, co)
        carry = state.caches[self.slot]
        if t >= CACHE_T:
            # W2 x[s] + W1 x[s-1] + W0 x[s-2] (+ bias, + the carry in the first two frames); the
            # new carry holds the products of the last two frames that belong to the next two
            out = torch.add(y[..., 2, :], self.bias)
            out[:, 1:].add_(y[:, :t - 1, ..., 1, :])
            out[:, 2:].add_(y[:, :t - 2, ..., 0, :])
            if carry is not None:
                out[:, :CACHE_T].add_(carry)
            nxt = y.new_empty(b, CACHE_T, h, w, co)
            torch.add(y[:, t - 1, ..., 1, :], y[:, t - 2, ..., 0, :], out=nxt[:, 0])
            nxt[:, 1].copy_(y[:, t - 1, ..., 0, :])
            state.caches[self.slot] = nxt
            return out
        out = y.new_empty(b, t + CACHE_T, h, w, co)          # t frames + the carry for the next 2
        torch.add(y[..., CACHE_T, :], self.bias, out=out[:, :t])
        out[:, t:].zero_()
        for j in range(CACHE_T):                              # W_j x[s] belongs to frame s + 2 - j
            lag = CACHE_T - j
            out[:, lag:lag + t].add_(y[..., j, :])
        if carry is not None:
            out[:, :CACHE_T].add_(carry)
        state.caches[self.slot] = out[:, t:].clone()
        return out[:, :t] if b == 1 else out[:, :t].contiguous()


class ResidualBlock(nn.Module):
    """norm, SiLU, conv3x3x3, norm, SiLU, (dropout), conv3x3x3, plus a 1x1x1 shortcut when
    the width changes. Indices in `residual` follow the official module (0, 2, 3, 6)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.ModuleList([
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, (3, 3, 3)),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, (3, 3, 3)),
        ])
        self.shortcut = CausalConv3d(in_dim, out_dim, (1, 1, 1)) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, state: DecoderState) -> torch.Tensor:
        r = self.residual
        h = x if self.shortcut is None else self.shortcut(x)
        y = r[2](r[0](x, silu=True, inplace=self.shortcut is not None), state)   # x is kept when it is h
        y = r[6](r[3](y, silu=True, inplace=True), state)
        return y.add_(h)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: DecoderState | None = None) -> torch.Tensor:
        b, t, h, w, c = x.shape
        seq = self.norm(x).view(b * t, 1, h * w, c)
        q, k, v = F.linear(seq, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)
        return out.view(b, t, h, w, c).add_(x)


class Resample(nn.Module):
    """2x spatial upsampling (nearest, then a 3x3 conv to dim // 2 channels); 'upsample3d'
    first doubles the frames with `time_conv` (causal (3,1,1) conv to 2*dim channels, the
    two halves becoming consecutive frames). The stream's very first frame skips it."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in ("upsample2d", "upsample3d"):
            raise ValueError(f"unsupported resample mode {mode!r}")
        self.dim, self.mode = dim, mode
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1)) if mode == "upsample3d" else None
        self._w: torch.Tensor | None = None
        self._b: torch.Tensor | None = None

    def pack(self) -> None:
        """nearest 2x + 3x3 conv == a 2x2 conv on the input (padding 1) with one kernel per
        output phase (a, b): phase a=0 sees rows (h-1, h) with taps (w0, w1+w2), phase a=1
        rows (h, h+1) with taps (w0+w1, w2); likewise for columns."""
        w = self.resample[1].weight.detach()                    # [O, I, 3, 3]
        groups = (((0,), (1, 2)), ((0, 1), (2,)))               # per phase: taps summed into each 2x2 tap
        phases = []
        for a in range(2):
            rows = torch.stack([w[:, :, list(g)].sum(2) for g in groups[a]], 2)         # [O, I, 2, 3]
            for bb in range(2):
                phases.append(torch.stack([rows[..., list(g)].sum(-1) for g in groups[bb]], -1))
        self._w = torch.cat(phases, 0).contiguous(memory_format=torch.channels_last)  # [4O, I, 2, 2]
        self._b = self.resample[1].bias.detach().repeat(4)

    def _upsample_time(self, x: torch.Tensor, state: DecoderState) -> torch.Tensor:
        b, t, h, w, c = x.shape
        if state.started:
            head, x = x[:, :0], x
        else:
            head, x = x[:, :1], x[:, 1:]      # the stream's first frame: no time_conv
        if x.shape[1]:
            y = self.time_conv(x, state).view(b, x.shape[1], h, w, 2, c)
            x = y.permute(0, 1, 4, 2, 3, 5).reshape(b, 2 * x.shape[1], h, w, c)
        return torch.cat([head, x], 1) if head.shape[1] else x

    def forward(self, x: torch.Tensor, state: DecoderState) -> torch.Tensor:
        if self.time_conv is not None:
            x = self._upsample_time(x, state)
        b, t, h, w, c = x.shape
        o = self.dim // 2
        y = _channels_last(F.conv2d(_spatial(x.reshape(b * t, h, w, c)), self._w, self._b, padding=1))
        # y [N, h+1, w+1, 4*o]; output pixel (2i+a, 2j+bb) = phase (a, bb) at (i+a, j+bb)
        out = y.new_empty(b * t, h, 2, w, 2, o)
        for a in range(2):
            for bb in range(2):
                p = 2 * a + bb
                out[:, :, a, :, bb].copy_(y[:, a:a + h, bb:bb + w, p * o:(p + 1) * o])
        return out.view(b, t, 2 * h, 2 * w, o)


class NoNorm(nn.Module):
    """The head's norm left out (`VAEConfig.head_norm` false): the SiLU alone."""

    def forward(self, x: torch.Tensor, silu: bool = False, inplace: bool = False) -> torch.Tensor:
        return F.silu(x, inplace=inplace) if silu else x


class Decoder3d(nn.Module):
    """conv1 -> middle -> upsamples -> head, sized from a `VAEConfig`."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = list(cfg.dim_mult)
        dims = [cfg.dim * m for m in [mult[-1]] + mult[::-1]]
        time_up = list(cfg.temporal_downsample)[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3))
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        ups: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2           # the previous resample halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                ups.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(mult) - 1:
                ups.append(Resample(out_dim, "upsample3d" if time_up[i] else "upsample2d"))
        self.upsamples = nn.ModuleList(ups)
        norm = RMSNorm(dims[-1]) if cfg.head_norm else NoNorm()
        self.head = nn.ModuleList([norm, nn.SiLU(), CausalConv3d(dims[-1], 3, (3, 3, 3))])

    def forward(self, x: torch.Tensor, state: DecoderState) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in self.middle:
            x = layer(x, state)
        for layer in self.upsamples:
            x = layer(x, state)
        return self.head[2](self.head[0](x, silu=True, inplace=True), state)


class WanVAEDecoder(nn.Module):
    """The decoder half of `WanVAE_`: `conv2` (1x1x1 on the latents) + `decoder`.
    State dict keys are the official ones (``conv2.*``, ``decoder.*``)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1))
        self.decoder = Decoder3d(cfg)
        temporal = [m for m in self.modules() if isinstance(m, CausalConv3d) and m.temporal]
        for i, conv in enumerate(temporal):
            conv.slot = i
        self.num_slots = len(temporal)

    def pack(self) -> "WanVAEDecoder":
        """Derive the compute-layout weights; call again after changing parameters."""
        for m in self.modules():
            if isinstance(m, (RMSNorm, CausalConv3d, Resample)):
                m.pack()
        return self

    def forward(self, z: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """De-normalised latents [B, F, h, w, z_dim] -> video [B, T, H, W, 3] (not clamped);
        advances `state`."""
        x = self.decoder(self.conv2(z), state)
        state.started = True
        return x


# -- random weights -----------------------------------------------------------------------
# Seeded random weights (the embedded default) should give pictures with structure and
# colour, neither flat grey nor clamped: convs get a fan-in scaled normal init with this
# gain, the last conv of each residual branch a smaller one (the branch adds to the
# stream), biases a little noise, the RGB head a gain that sets the pixel spread, and
# `time_conv` starts near "repeat the frame" so the 4 frames of a latent do not flicker.
INIT_GAIN = 1.0
INIT_BRANCH_GAIN = 0.5
INIT_HEAD_GAIN = 0.5
INIT_BIAS_STD = 0.05
INIT_TIME_NOISE = 0.2


def init_random(model: WanVAEDecoder, weights_seed: int) -> WanVAEDecoder:
    g = torch.Generator().manual_seed(weights_seed)

    def normal_(p: torch.Tensor, std: float) -> None:
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * std)

    for name, m in model.named_modules():
        if name.endswith("time_conv"):
            # both new frames start as copies of the current one (plus noise): smooth motion
            c = m.in_dim
            normal_(m.weight, INIT_TIME_NOISE / math.sqrt(m.weight[0].numel()))
            with torch.no_grad():
                eye = torch.eye(c).view(c, c, 1, 1)
                m.weight[:c, :, -1] += eye
                m.weight[c:, :, -1] += eye
            normal_(m.bias, INIT_BIAS_STD)
        elif isinstance(m, (CausalConv3d, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            gain = INIT_GAIN
            if name.endswith("residual.6"):
                gain = INIT_BRANCH_GAIN
            if name == "decoder.head.2":
                gain = INIT_HEAD_GAIN
            normal_(m.weight, gain / math.sqrt(fan_in))
            normal_(m.bias, INIT_BIAS_STD)
        elif isinstance(m, RMSNorm):
            with torch.no_grad():
                m.gamma.copy_(1.0 + 0.1 * torch.randn(m.gamma.shape, generator=g))
    return model


# -- streaming wrapper -----------------------------------------------------------------------
class StreamingVAEDecoder:
    """Latent blocks in, video frames out, with the causal feature cache kept across calls.

    `decode` continues the current stream; `reset` starts a new one; `state` / `set_state`
    save and restore it (copies). `decode_video` and `decode_chunks` decode a whole clip on a
    fresh cache and leave the stream untouched.
    """

    def __init__(self, model: WanVAEDecoder, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, frames_per_pass: int | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False).pack()
        self.cfg = model.cfg
        z = self.cfg.z_dim
        mean, std = (LATENT_MEAN, LATENT_STD) if z == len(LATENT_MEAN) else ((0.0,) * z, (1.0,) * z)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.inv_std = 1.0 / self.std          # the official scale is [mean, 1 / std]
        # CPU: one latent frame per pass (the official order) keeps every tensor small, which
        # is faster there; GPU: the whole block in one pass (fewer, larger kernels)
        if frames_per_pass is None and self.device.type == "cpu":
            frames_per_pass = 1
        self.frames_per_pass = frames_per_pass
        self._state = DecoderState.fresh(model.num_slots)

    # -- stream control ------------------------------------------------------------
    @property
    def temporal_factor(self) -> int:
        return self.cfg.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self.cfg.spatial_factor

    def reset(self) -> None:
        self._state = DecoderState.fresh(self.model.num_slots)

    def state(self) -> DecoderState:
        return self._state.clone()

    def set_state(self, state: DecoderState) -> None:
        if len(state.caches) != self.model.num_slots:
            raise ValueError(f"decoder state has {len(state.caches)} caches, this decoder {self.model.num_slots}")
        self._state = state.clone()

    def output_frames(self, latent_frames: int, first: bool) -> int:
        """Video frames for a call with `latent_frames` latents (first call of a stream or not)."""
        if latent_frames == 0:
            return 0
        return self.temporal_factor * latent_frames - (self.temporal_factor - 1 if first else 0)

    # -- decoding ----------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents [B, F, C, h, w] (normalised, as the DiT makes them) of the next block
        -> video [B, T, 3, H, W] float32 in [-1, 1] (a channels-last view), T = 1 + 4(F-1)
        for the first call after `reset`, else 4F."""
        return self._run(latents, self._state)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """A whole clip on a fresh cache (the official ``decode``); the stream is untouched."""
        return self._run(latents, DecoderState.fresh(self.model.num_slots))

    @torch.no_grad()
    def decode_chunks(self, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """The official chunk-reset decode: every `chunk_size` latent frames are decoded on a
        fresh cache (each chunk restarts with a single first frame); chunks concatenated."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        parts = [self.decode_video(latents[:, i:i + chunk_size]) for i in range(0, latents.shape[1], chunk_size)]
        return torch.cat(parts, 1)

    def _run(self, latents: torch.Tensor, state: DecoderState) -> torch.Tensor:
        threads = min(self.cfg.threads, os.cpu_count() or 1)   # vae.threads: intra-op threads while decoding
        if not threads or self.device.type != "cpu" or threads == torch.get_num_threads():
            return self._decode(latents, state)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return self._decode(latents, state)
        finally:
            torch.set_num_threads(before)

    def _decode(self, latents: torch.Tensor, state: DecoderState) -> torch.Tensor:
        if latents.dim() != 5 or latents.shape[2] != self.cfg.z_dim:
            raise ValueError(f"latents must be [B, F, {self.cfg.z_dim}, h, w], not {tuple(latents.shape)}")
        b, f, _, h, w = latents.shape
        s = self.spatial_factor
        if f == 0:
            return torch.zeros(b, 0, 3, h * s, w * s, device=self.device)
        z = latents.to(device=self.device, dtype=torch.float32).permute(0, 1, 3, 4, 2)
        z = (z / self.inv_std + self.mean).to(self.dtype).contiguous()      # the official z / (1/std) + mean
        step = self.frames_per_pass or f
        outs = [self.model(z[:, i:i + step], state) for i in range(0, f, step)]
        video = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        video = video.float().clamp_(-1.0, 1.0)
        return video.permute(0, 1, 4, 2, 3)


# -- construction ----------------------------------------------------------------------------
def decoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The decoder side of an official VAE checkpoint (``decoder.*``, ``conv2.*``); the
    encoder side (``encoder.*``, ``conv1.*``) is dropped. Other keys are kept so that the
    check reports them as unexpected."""
    sd = read_checkpoint(path)
    return {k: v for k, v in sd.items() if not k.startswith(ENCODER_PREFIXES)}


def load_vae(cfg: VAEConfig, path: str | Path) -> WanVAEDecoder:
    """A `WanVAEDecoder` with weights from an official VAE checkpoint (float32, on CPU)."""
    path = Path(path)
    sd = decoder_state_dict(path)
    with torch.device("meta"):
        model = WanVAEDecoder(cfg)
    check_state(model, sd, path)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, assign=True)
    log.info("loaded VAE decoder from %s", path)
    return model


def build_vae(cfg: VAEConfig, weights_seed: int) -> WanVAEDecoder:
    """A `WanVAEDecoder` with seeded random weights."""
    return init_random(WanVAEDecoder(cfg), weights_seed)


def make_decoder(cfg: Config, files: WeightFiles | None, device: torch.device | str,
                 dtype: torch.dtype = torch.float32):
    """The pipeline's decoder: official weights from `files.vae` (or `files.taehv` with
    vae.kind taehv), or seeded random weights from `cfg.weights_seed` when `files` is None."""
    if cfg.vae.kind == "taehv":
        from .taehv import make_taehv
        return make_taehv(cfg, files, device, dtype)
    if cfg.vae.kind != "wan":
        raise ConfigError(f"{cfg.source}: unknown vae.kind {cfg.vae.kind!r}")
    if files is None:
        model = build_vae(cfg.vae, cfg.weights_seed)
    else:
        if files.vae is None:
            raise WeightsError(f"no VAE weights in {files.root}: expected Wan2.1_VAE.pth "
                               "(official layout or directly in the folder)")
        model = load_vae(cfg.vae, files.vae)
    return StreamingVAEDecoder(model, torch.device(device), dtype)


# -- cost model ------------------------------------------------------------------------------
def decode_flops(cfg: VAEConfig, latent_frames: int, latent_h: int, latent_w: int, first: bool = False) -> float:
    """Multiply-add FLOPs (2 per MAC) of decoding `latent_frames` latents as the official
    decoder computes them (3x3x3 convs over all frames, upsample convs at full resolution)."""
    model = _meta_model(cfg)
    total = 0.0
    t, h, w = latent_frames, latent_h, latent_w

    def conv(m: CausalConv3d, frames: int, hh: int, ww: int) -> float:
        return 2.0 * m.weight[0].numel() * m.out_dim * frames * hh * ww

    total += conv(model.conv2, t, h, w) + conv(model.decoder.conv1, t, h, w)
    for layer in list(model.decoder.middle) + list(model.decoder.upsamples):
        if isinstance(layer, ResidualBlock):
            total += conv(layer.residual[2], t, h, w) + conv(layer.residual[6], t, h, w)
            if layer.shortcut is not None:
                total += conv(layer.shortcut, t, h, w)
        elif isinstance(layer, AttentionBlock):
            c, n = layer.dim, h * w
            total += t * (2.0 * n * c * 4 * c + 4.0 * n * n * c)
        elif isinstance(layer, Resample):
            if layer.time_conv is not None:
                moved = t - 1 if first else t
                total += conv(layer.time_conv, moved, h, w)
                t = t + moved
            h, w = 2 * h, 2 * w
            total += 2.0 * layer.dim * (layer.dim // 2) * 9 * t * h * w
    total += conv(model.decoder.head[2], t, h, w)
    return total


def _meta_model(cfg: VAEConfig) -> WanVAEDecoder:
    with torch.device("meta"):
        return WanVAEDecoder(cfg)
