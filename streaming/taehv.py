"""A TAEHV-compatible tiny decoder for Wan2.1 latents (`taew2_1.pth` weights, MIT licensed,
published by madebyollin/taehv; a user downloads them; nothing here fetches them).

About 25x fewer FLOPs than the Wan VAE decoder: 2D convs only, with temporal context from
"memory blocks" that see the previous frame's input, and temporal upsampling by channel
expansion ("TGrow"). It takes the DiT's latents as they are (no mean/std) and gives
frames in [0, 1]; this wrapper maps them to [-1, 1] like the Wan decoder, so both sit
behind the same decoder interface.

Streaming: a block of F latents is decoded layer by layer over all its frames at once
(each memory block's "past" is its own input one frame earlier), carrying each memory
block's last input frame to the next block. The first 2^k - 1 output frames of a stream
are dropped (k temporal upsamplings), so F latents give 1 + 4(F-1) frames at the start
and 4F later, exactly as the Wan decoder.

Module indices follow the published `decoder` nn.Sequential, so its state dict loads as is.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from .weights import WeightsError, check_state, read_checkpoint


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """relu(conv3(relu(conv2(relu(conv1([x, past]))))) + skip(x))."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in * 2, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TGrow(nn.Module):
    """Each frame becomes `stride` frames: a 1x1 conv to stride*C channels, split in time."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, c, h, w = x.shape
        return self.conv(x).view(t * self.stride, c, h, w)


def build_decoder(latent_channels: int = 16, widths: tuple[int, ...] = (256, 128, 64, 64),
                  time_upscale: tuple[bool, bool] = (True, True), image_channels: int = 3) -> nn.Sequential:
    n = widths
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, n[0]), nn.ReLU()]
    strides = (1, 2 if time_upscale[0] else 1, 2 if time_upscale[1] else 1)
    for stage in range(3):
        c = n[stage]
        layers += [MemBlock(c, c), MemBlock(c, c), MemBlock(c, c), nn.Upsample(scale_factor=2),
                   TGrow(c, strides[stage]), _conv(c, n[stage + 1], bias=False)]
    layers += [nn.ReLU(), _conv(n[3], image_channels)]
    return nn.Sequential(*layers)


class TAEHVDecoder:
    """Streaming decoder with the same interface as the Wan VAE decoder."""

    def __init__(self, decoder: nn.Sequential):
        self.decoder = decoder.eval().requires_grad_(False)
        grow = [m.stride for m in decoder if isinstance(m, TGrow)]
        self.trim = 1
        for s in grow:
            self.trim *= s
        self.trim -= 1
        self._past: dict[int, torch.Tensor] = {}
        self._started = False

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    def reset(self) -> None:
        self._past, self._started = {}, False

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, F, C, h, w] -> [B, T, 3, 8h, 8w] in [-1, 1] (B must be 1: one stream)."""
        if latents.shape[0] != 1:
            raise ValueError("the streaming decoder decodes one stream (batch 1)")
        x = latents[0].to(self.dtype)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                prev = self._past.get(i)
                if prev is None:
                    prev = torch.zeros_like(x[:1])
                past = torch.cat([prev, x[:-1]], 0)
                self._past[i] = x[-1:].clone()
                x = layer(x, past)
            else:
                x = layer(x)
        if not self._started:
            x = x[self.trim:]
            self._started = True
        return (x.float().clamp(0, 1) * 2 - 1)[None]

    def state(self) -> dict:
        return {"past": {k: v.clone() for k, v in self._past.items()}, "started": self._started}

    def set_state(self, state: dict) -> None:
        self._past = {k: v.clone() for k, v in state["past"].items()}
        self._started = state["started"]

    def __deepcopy__(self, memo):  # pragma: no cover - convenience
        new = TAEHVDecoder(copy.deepcopy(self.decoder, memo))
        new.set_state(self.state())
        return new


def load_taehv(path: str | Path, device: torch.device | str, dtype: torch.dtype) -> TAEHVDecoder:
    """Decoder weights from a TAEHV checkpoint (its `decoder.*` keys; `encoder.*` ignored)."""
    path = Path(path)
    sd = read_checkpoint(path)
    dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if not dec:
        raise WeightsError(f"{path} has no decoder.* keys; is it a TAEHV checkpoint (taew2_1.pth)?")
    latent = dec["1.weight"].shape[1] if "1.weight" in dec else 16
    model = build_decoder(latent_channels=latent)
    check_state(model, dec, path)
    model.load_state_dict(dec)
    return TAEHVDecoder(model.to(device=device, dtype=dtype))


def random_taehv(device: torch.device | str, dtype: torch.dtype, seed: int = 0, latent_channels: int = 16) -> TAEHVDecoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_decoder(latent_channels=latent_channels)
    return TAEHVDecoder(model.to(device=device, dtype=dtype))
