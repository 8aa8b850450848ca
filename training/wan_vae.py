"""The Wan VAE as one trainable module: the streaming encoder and a plain decoder.

`streaming.vae.StreamingVAEDecoder` is built for speed (precomputed kernel layouts, in-place
ops, carries instead of re-convolution) and cannot be trained through. `PlainDecoder` computes
the same function over a whole clip in plain differentiable torch, with the same parameter
names (``conv2.*``, ``decoder.*``), so a state dict trained here loads into the streaming
decoder as it is, and the streaming encoder (`streaming.vae_encoder`, plain already) supplies
the other half (``encoder.*``, ``conv1.*``). `ToyVAE.state_dict()` is one official-layout VAE
checkpoint.

The decoder, as the official `WanVAE_.decode` runs it (see `streaming.vae` for the layers):
the first latent frame gives one frame, each later one `temporal_factor`; an upsampling stage
with `time_conv` passes the clip's first frame and turns every later frame into two (the
conv's output channels split in halves), its causal padding starting at the second frame.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from streaming.config import VAEConfig
from streaming.vae_encoder import (CausalConv, EncoderState, Norm, Residual, SpatialAttention,
                                   WanVAEEncoder)


class Upsample(nn.Module):
    """Nearest 2x and a 3x3 conv halving the channels; 'upsample3d' first doubles the frames
    after the first with `time_conv`."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv(dim, dim * 2, (3, 1, 1)) if mode == "upsample3d" else None

    def forward(self, x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.time_conv is not None and t > 1:
            y = self.time_conv(x[:, :, 1:], state)                     # [B, 2C, T-1, h, w]
            y = torch.stack(y.chunk(2, dim=1), 3).reshape(b, c, 2 * (t - 1), h, w)
            x = torch.cat([x[:, :, :1], y], 2)
            t = x.shape[2]
        frames = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return frames.view(b, t, c // 2, 2 * h, 2 * w).transpose(1, 2)


class PlainDecoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = list(cfg.dim_mult)
        dims = [cfg.dim * m for m in [mult[-1]] + mult[::-1]]
        time_up = list(cfg.temporal_downsample)[::-1]
        self.conv1 = CausalConv(cfg.z_dim, dims[0], (3, 3, 3))
        self.middle = nn.ModuleList([Residual(dims[0], dims[0]), SpatialAttention(dims[0]), Residual(dims[0], dims[0])])
        ups: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2
            for _ in range(cfg.num_res_blocks + 1):
                ups.append(Residual(in_dim, out_dim))
                in_dim = out_dim
            if i != len(mult) - 1:
                ups.append(Upsample(out_dim, "upsample3d" if time_up[i] else "upsample2d"))
        self.upsamples = nn.ModuleList(ups)
        self.head = nn.ModuleList([Norm(dims[-1]) if cfg.head_norm else nn.Identity(), nn.SiLU(),
                                   CausalConv(dims[-1], 3, (3, 3, 3))])

    def forward(self, x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in list(self.middle) + list(self.upsamples):
            x = layer(x, state)
        return self.head[2](F.silu(self.head[0](x)), state)


class PlainDecoder(nn.Module):
    """``conv2`` + ``decoder``: raw latents [B, z, F, h, w] -> frames [B, 3, T, H, W], unclamped."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.conv2 = CausalConv(cfg.z_dim, cfg.z_dim, (1, 1, 1))
        self.decoder = PlainDecoder3d(cfg)
        slots = [m for m in self.modules() if isinstance(m, CausalConv) and m.kernel[0] > 1]
        for i, conv in enumerate(slots):
            conv.slot = i
        self.num_slots = len(slots)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.conv2(z, EncoderState.fresh(0)), EncoderState.fresh(self.num_slots))


class ToyVAE(nn.Module):
    """Encoder and decoder of one Wan-structured VAE; its state dict has the official keys."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        enc = WanVAEEncoder(cfg)
        self.encoder, self.conv1 = enc.encoder, enc.conv1
        self._encoder = [enc]                       # the wrapper, kept out of the state dict
        dec = PlainDecoder(cfg)
        self.decoder, self.conv2 = dec.decoder, dec.conv2
        self._decoder = [dec]

    @property
    def encoder_module(self) -> WanVAEEncoder:
        return self._encoder[0]

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, 3, T, H, W] in [-1, 1] (a whole clip) -> raw (mu, log_var)."""
        enc = self._encoder[0]
        return enc.moments(video, enc.new_state())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, z, F, h, w] -> frames [B, 3, T, H, W] (unclamped)."""
        return self._decoder[0](z)
