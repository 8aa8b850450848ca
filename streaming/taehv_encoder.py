"""The TAEHV encoder: video frames to Wan2.1 latents, the fast path for live input on a GPU
(madebyollin/taehv's ``encoder``, whose weights `taew2_1.pth` a user downloads; MIT licensed).

What it computes (the published ``encoder`` nn.Sequential, indices as there, so its state dict
loads as it is): frames in [0, 1] (pixel-unshuffled by the patch size first, where it is
above 1) -> a 3x3 conv and ReLU -> three stages, each

    a time pool (``TPool``: `stride` consecutive frames' channels, earliest first, mixed by a
    1x1 conv into one frame) -> a 3x3 conv of stride 2 in space (no bias) -> three memory
    blocks (each sees its own input one frame earlier, zeros before the stream)

-> a 3x3 conv to the latent channels. Wan 2.1's time strides are (2, 2, 1): four frames make
one latent. Every size (width, latent channels, each stage's stride, the patch) is read from the
checkpoint's tensors.

Streaming: `TAEHVEncoderState` carries each memory block's last input frame and each time
pool's frames still short of its stride, so frames fed in chunks of any length give exactly
the latents of the whole clip (`encode_frames`).

Aligned with the stream's blocks (`__call__`, frames in [-1, 1], as the Wan encoder takes them):
the TAEHV decoder drops the first three frames it makes, so latent k stands for frames
4k-3 .. 4k and latent 0 for frame 0 alone, as in the Wan VAE. The encoder mirrors that: a
stream's first frame goes in four times (three copies before it), so the first chunk has
1 + 4j frames and later chunks 4j, the Wan encoder's rule (the first block 9 frames, every
later one 12, each giving 3 latents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .taehv import IMAGE_CHANNELS, MemBlock, _conv
from .weights import WeightsError, check_state, read_checkpoint

# indices in the published encoder nn.Sequential
_IN_CONV = "0"
_POOLS = ("2", "7", "12")
_OUT_CONV = "17"


class TPool(nn.Module):
    """`stride` consecutive frames become one: their channels side by side (earliest first),
    mixed by a 1x1 conv."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, C, H, W] (T a multiple of the stride) -> [N, T / stride, C, H, W]."""
        n, t, c, h, w = x.shape
        return self.conv(x.reshape(n * t // self.stride, c * self.stride, h, w)).view(n, t // self.stride, c, h, w)


def build_encoder(latent_channels: int = 16, width: int = 64, time_strides: tuple[int, ...] = (2, 2, 1),
                  patch_size: int = 1) -> nn.Sequential:
    """The published encoder layout."""
    if len(time_strides) != 3:
        raise ValueError(f"the TAEHV encoder has three stages, so three time strides, not {time_strides}")
    layers: list[nn.Module] = [_conv(IMAGE_CHANNELS * patch_size ** 2, width), nn.ReLU()]
    for stride in time_strides:
        layers += [TPool(width, stride), nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
                   MemBlock(width, width), MemBlock(width, width), MemBlock(width, width)]
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


@dataclass
class TAEHVEncoderState:
    """A stream's carry between chunks: per memory block its last input frame, per time pool
    the frames still short of its stride, and whether the stream's first frame is in."""

    past: dict[int, torch.Tensor] = field(default_factory=dict)
    pending: dict[int, torch.Tensor] = field(default_factory=dict)
    started: bool = False

    def clone(self) -> "TAEHVEncoderState":
        return TAEHVEncoderState({k: v.clone() for k, v in self.past.items()},
                                 {k: v.clone() for k, v in self.pending.items()}, self.started)


class TAEHVEncoder:
    """Streaming TAEHV encoder; the same call as `WanVAEEncoder` (frames [B, T, 3, H, W] in
    [-1, 1] -> latents [B, T', C, h, w])."""

    def __init__(self, encoder: nn.Sequential):
        self.encoder = encoder.eval().requires_grad_(False)
        self.time_factor = math.prod(m.stride for m in encoder if isinstance(m, TPool))
        self.patch_size = math.isqrt(encoder[0].in_channels // IMAGE_CHANNELS)
        if self.patch_size ** 2 * IMAGE_CHANNELS != encoder[0].in_channels:
            raise ValueError(f"the first conv takes {encoder[0].in_channels} channels, not 3 x patch^2")

    @property
    def latent_channels(self) -> int:
        return self.encoder[-1].out_channels

    @property
    def space_factor(self) -> int:
        """Input pixels per latent pixel along each side (three stride-2 convs, and the patch)."""
        return 8 * self.patch_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def new_state(self) -> TAEHVEncoderState:
        return TAEHVEncoderState()

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, state: TAEHVEncoderState) -> torch.Tensor:
        """The published encoder, streamed: frames [N, T, 3, H, W] in [0, 1] (any T) -> the
        latents they complete, [N, T', C, h, w] (T' may be 0); advances `state`."""
        n, t = frames.shape[:2]
        x = frames.to(self.dtype)
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x.flatten(0, 1), self.patch_size).unflatten(0, (n, t))
        for i, layer in enumerate(self.encoder):
            if isinstance(layer, TPool):
                held = state.pending.pop(i, None)
                if held is not None:
                    x = torch.cat([held, x], 1)
                whole = x.shape[1] // layer.stride * layer.stride
                if whole < x.shape[1]:
                    state.pending[i] = x[:, whole:].clone()
                x = layer(x[:, :whole])
            elif isinstance(layer, MemBlock):
                if x.shape[1] == 0:
                    continue
                prev = state.past.get(i)
                if prev is None:
                    prev = torch.zeros_like(x[:, :1])
                past = torch.cat([prev, x[:, :-1]], 1)
                state.past[i] = x[:, -1:].clone()
                x = layer(x.flatten(0, 1), past.flatten(0, 1)).unflatten(0, (n, -1))
            elif x.shape[1] == 0:
                shape = layer(x.new_zeros(1, *x.shape[2:])).shape[1:]   # how the layer changes the sizes
                x = x.new_zeros(n, 0, *shape)
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, (n, -1))
        return x.float()

    def __call__(self, video: torch.Tensor, state: TAEHVEncoderState | None = None) -> torch.Tensor:
        """Frames [B, T, 3, H, W] in [-1, 1] -> latents [B, T', C, h, w], aligned as the Wan
        encoder's (module docstring). Without `state` the frames are a whole clip."""
        if video.dim() != 5 or video.shape[2] != IMAGE_CHANNELS:
            raise ValueError(f"video must be [B, T, 3, H, W], not {tuple(video.shape)}")
        s = self.space_factor
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(f"frame height and width must be multiples of {s}, not {tuple(video.shape[-2:])}")
        state = state if state is not None else self.new_state()
        first, t, step = not state.started, video.shape[1], self.time_factor
        if t == 0 or (t - 1 if first else t) % step:
            lead = f"1 + {step}k" if first else f"a multiple of {step}"
            raise ValueError(f"a{' first' if first else ''} chunk of a stream must have {lead} frames, not {t}")
        frames = (video.float() + 1) / 2
        if first:
            frames = torch.cat([frames[:, :1].expand(-1, step - 1, -1, -1, -1), frames], 1)
            state.started = True
        return self.encode_frames(frames, state)


def load_taehv_encoder(path: str | Path, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> TAEHVEncoder:
    """The encoder of a TAEHV checkpoint (.pth or .safetensors; its `encoder.*` keys, the
    decoder's ignored), every size read from the tensors' shapes."""
    path = Path(path)
    sd = {k[len("encoder."):]: v for k, v in read_checkpoint(path).items() if k.startswith("encoder.")}
    first, last = sd.get(f"{_IN_CONV}.weight"), sd.get(f"{_OUT_CONV}.weight")
    if first is None or last is None or first.dim() != 4 or last.dim() != 4:
        raise WeightsError(f"{path} has no TAEHV encoder (encoder.{_IN_CONV}.weight and encoder.{_OUT_CONV}.weight); "
                           "is it a TAEHV checkpoint (taew2_1.pth)?")
    width, patch = first.shape[0], math.isqrt(first.shape[1] // IMAGE_CHANNELS)
    strides = []
    for key in _POOLS:
        pool = sd.get(f"{key}.conv.weight")
        if pool is None or pool.dim() != 4 or pool.shape[0] != width or pool.shape[1] % width:
            raise WeightsError(f"{path} does not fit the TAEHV encoder layout (encoder.{key}.conv.weight is "
                               f"{None if pool is None else tuple(pool.shape)}, not [{width}, stride x {width}, 1, 1])")
        strides.append(pool.shape[1] // width)
    model = build_encoder(last.shape[0], width, tuple(strides), patch)
    check_state(model, sd, path)
    model.load_state_dict(sd)
    return TAEHVEncoder(model.to(device=device, dtype=dtype))
