"""The Wan2.1 VAE encoder: video frames to normalised latents, whole clips or streamed.

What it computes (the official `WanVAE_.encode`)
------------------------------------------------
Frames in [-1, 1] go through ``encoder``:

    conv1 (3x3x3, causal) -> downsamples: per stage ``num_res_blocks`` residual blocks, then
    (except after the last stage) a resample: zero-pad right and bottom by one, a 3x3 conv
    of stride 2; stages with temporal downsampling then run ``time_conv``, a (3,1,1) conv of
    stride 2 in time -> middle (residual, single-head spatial attention, residual)
    -> head (norm, SiLU, 3x3x3 causal conv to 2 * z_dim channels)

then ``conv1`` (1x1x1) and a split into mean and log-variance; the mean, normalised per
channel as ``(mu - mean) / std`` with the official constants, is the latent. The stream's
first frame passes every ``time_conv`` untouched and gives one latent; every later four
frames give one more (1 + 4k frames -> 1 + k latents). Each ``time_conv`` sees the last
frame of the chunk before it: over a whole clip it is a stride-2 convolution starting at
the first frame, which streaming reproduces by carrying that one frame.

Streaming: `EncoderState` carries, per causal 3x3x3 conv, its last two input frames and,
per ``time_conv``, its last input frame, so a clip encoded in chunks (the first of
1 + 4j frames, then multiples of 4) equals the clip encoded at once. This module is plain
differentiable torch (NCTHW tensors, `F.conv3d`): the toy world's VAE is trained through
it (training/), and live input is encoded with it.

Parameter names are the official ones (``encoder.*``, ``conv1.*``), so the encoder half of
``Wan2.1_VAE.pth`` loads as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VAEConfig
from .vae import DECODER_PREFIXES, LATENT_MEAN, LATENT_STD, NORM_EPS
from .weights import check_state, read_checkpoint


@dataclass
class EncoderState:
    """What a stream has left for its next chunk: per causal conv slot its last input
    frames (None before the first chunk, i.e. zeros), and whether the first frame is done."""

    caches: list[torch.Tensor | None] = field(default_factory=list)
    started: bool = False

    @classmethod
    def fresh(cls, slots: int) -> "EncoderState":
        return cls([None] * slots, False)


def rms_norm(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x / ||x||_channels * sqrt(C) * gamma over axis 1 (Wan's RMS_norm, no bias)."""
    return F.normalize(x, dim=1, eps=NORM_EPS) * (x.shape[1] ** 0.5) * gamma


class Norm(nn.Module):
    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.gamma)


class CausalConv(nn.Module):
    """Conv3d with 'same' spatial padding and causal time padding: the missing frames before
    a chunk are the carried ones (zeros at the start of a stream)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: tuple[int, int, int]):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim, *kernel))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.slot = -1

    def forward(self, x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        kt, kh, _ = self.kernel
        if kt > 1:
            past = state.caches[self.slot]
            if past is None:
                past = x.new_zeros(*x.shape[:2], kt - 1, *x.shape[3:])
            joined = torch.cat([past, x], 2)
            state.caches[self.slot] = joined[:, :, -(kt - 1):]
            x = joined
        return F.conv3d(x, self.weight, self.bias, padding=(0, kh // 2, kh // 2))


class Residual(nn.Module):
    """norm, SiLU, conv, norm, SiLU, (dropout), conv, plus a 1x1x1 shortcut when the width
    changes; indices in `residual` follow the official module (0, 2, 3, 6)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.ModuleList([Norm(in_dim), nn.SiLU(), CausalConv(in_dim, out_dim, (3, 3, 3)),
                                       Norm(out_dim), nn.SiLU(), nn.Identity(), CausalConv(out_dim, out_dim, (3, 3, 3))])
        self.shortcut = CausalConv(in_dim, out_dim, (1, 1, 1)) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        r = self.residual
        h = x if self.shortcut is None else self.shortcut(x, state)
        y = r[2](F.silu(r[0](x)), state)
        return r[6](F.silu(r[3](y)), state) + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = Norm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: EncoderState | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        q, k, v = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        out = self.proj(out.transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.view(b, t, c, h, w).transpose(1, 2)


class Downsample(nn.Module):
    """Zero-pad right and bottom, 3x3 conv of stride 2 on each frame; 'downsample3d' then
    halves the frames with `time_conv` (the stream's first frame passes untouched)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in ("downsample2d", "downsample3d"):
            raise ValueError(f"unsupported resample mode {mode!r}")
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = CausalConv(dim, dim, (3, 1, 1)) if mode == "downsample3d" else None

    def forward(self, x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        x = y.view(b, t, c, *y.shape[-2:]).transpose(1, 2)
        if self.time_conv is None:
            return x
        conv = self.time_conv
        past = state.caches[conv.slot]
        state.caches[conv.slot] = x[:, :, -1:]
        if past is None:        # the stream's first chunk: its first frame passes, the rest pair up from it
            head = x[:, :, :1]
            return torch.cat([head, F.conv3d(x, conv.weight, conv.bias, stride=(2, 1, 1))], 2) if t > 1 else head
        return F.conv3d(torch.cat([past, x], 2), conv.weight, conv.bias, stride=(2, 1, 1))


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = list(cfg.dim_mult)
        dims = [cfg.dim * m for m in [1] + mult]
        blocks = cfg.num_res_blocks if cfg.encoder_res_blocks is None else cfg.encoder_res_blocks
        self.conv1 = CausalConv(3, dims[0], (3, 3, 3))
        downs: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(blocks):
                downs.append(Residual(in_dim, out_dim))
                in_dim = out_dim
            if i != len(mult) - 1:
                downs.append(Downsample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.ModuleList(downs)
        top = dims[-1]
        self.middle = nn.ModuleList([Residual(top, top), SpatialAttention(top), Residual(top, top)])
        self.head = nn.ModuleList([Norm(top) if cfg.head_norm else nn.Identity(), nn.SiLU(),
                                   CausalConv(top, 2 * cfg.z_dim, (3, 3, 3))])

    def forward(self, x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in list(self.downsamples) + list(self.middle):
            x = layer(x, state)
        return self.head[2](F.silu(self.head[0](x)), state)


class WanVAEEncoder(nn.Module):
    """The encoder half of `WanVAE_`: ``encoder`` + ``conv1`` (1x1x1 to mean and log-variance)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        blocks = cfg.num_res_blocks if cfg.encoder_res_blocks is None else cfg.encoder_res_blocks
        widths = [cfg.dim * m for m in [1] + list(cfg.dim_mult)]
        if blocks < 1 and len(set(widths)) > 1:
            raise ValueError("an encoder whose stages change width needs at least one residual block per stage "
                             "(vae.encoder_res_blocks)")
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1))
        slots = [m for m in self.modules() if isinstance(m, CausalConv) and m.kernel[0] > 1]
        for i, conv in enumerate(slots):
            conv.slot = i
        self.num_slots = len(slots)
        z = cfg.z_dim
        mean, std = (LATENT_MEAN, LATENT_STD) if z == len(LATENT_MEAN) else ((0.0,) * z, (1.0,) * z)
        self.register_buffer("mean", torch.tensor(mean).view(1, z, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, z, 1, 1, 1), persistent=False)

    def new_state(self) -> EncoderState:
        return EncoderState.fresh(self.num_slots)

    def moments(self, video: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, 3, T, H, W] in [-1, 1] -> raw (mu, log_var), each [B, z, T', h, w];
        advances `state`. The first chunk of a stream has 1 + 4j frames, later ones 4j."""
        first = not state.started
        t = video.shape[2]
        step = self.cfg.temporal_factor
        if t == 0 or (t - 1 if first else t) % step:
            lead = f"1 + {step}k" if first else f"a multiple of {step}"
            raise ValueError(f"a{' first' if first else ''} chunk of a stream must have {lead} frames, not {t}")
        x = self.encoder(video, state)
        state.started = True
        mu, log_var = self.conv1(x, state).chunk(2, dim=1)
        return mu, log_var

    def normalise(self, mu: torch.Tensor) -> torch.Tensor:
        return (mu - self.mean) / self.std

    def forward(self, video: torch.Tensor, state: EncoderState | None = None) -> torch.Tensor:
        """Frames [B, T, 3, H, W] in [-1, 1] -> normalised latents [B, T', z, h, w] (the DiT's
        layout). Without `state` the frames are a whole clip; with one, the stream goes on."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], not {tuple(video.shape)}")
        s = self.cfg.spatial_factor
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(f"frame height and width must be multiples of {s}, not {tuple(video.shape[-2:])}")
        mu, _ = self.moments(video.transpose(1, 2), state if state is not None else self.new_state())
        return self.normalise(mu).transpose(1, 2)


def encoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder side of a VAE checkpoint (``encoder.*``, ``conv1.*``); the decoder side is
    dropped, other keys kept so that the check reports them."""
    sd = read_checkpoint(path)
    return {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES)}


def load_encoder(cfg: VAEConfig, path: str | Path) -> WanVAEEncoder:
    """A `WanVAEEncoder` with the encoder half of a VAE checkpoint (float32, on CPU); one
    clear error when the file does not fit `cfg`."""
    path = Path(path)
    sd = encoder_state_dict(path)
    model = WanVAEEncoder(cfg)
    check_state(model, sd, path)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.eval()
