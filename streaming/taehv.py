"""A TAEHV-compatible tiny decoder for Wan2.1 latents (`taew2_1.pth` weights, MIT licensed,
published by madebyollin/taehv; a user downloads them; nothing here fetches them).

About 25x fewer FLOPs than the Wan VAE decoder: 2D convs only, with temporal context from
"memory blocks" that see the previous frame's input, and temporal upsampling by channel
expansion ("TGrow"). It takes the DiT's latents as they are (no mean/std) and gives
frames in [0, 1]; this wrapper maps them to [-1, 1] like the Wan decoder, so both sit
behind the same decoder interface.

Streaming: a block of F latents is decoded layer by layer over all its frames at once
(each memory block's "past" is its own input one frame earlier), carrying each memory
block's last input frame to the next block. The first prod(strides) - 1 output frames of a
stream are dropped (the published `frames_to_trim`, 2^k - 1 for k temporal doublings), so
with Wan 2.1's two doublings F latents give 1 + 4(F-1) frames at the start and 4F later,
exactly as the Wan decoder.

Module indices follow the published `decoder` nn.Sequential, so its state dict loads as is.
Every size (latent channels, the four widths, each stage's temporal stride, the output
patch size) is read from a checkpoint's tensor shapes, never assumed.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights import WeightsError, check_state, read_checkpoint

if TYPE_CHECKING:
    from .config import Config
    from .weights import WeightFiles

log = logging.getLogger(__name__)

IMAGE_CHANNELS = 3
# Indices in the published decoder nn.Sequential: the conv opening each stage's width,
# each stage's TGrow, and the final RGB conv.
_WIDTH_CONVS = ("1", "8", "14", "20")
_TGROWS = ("7", "13", "19")
_OUT_CONV = "22"


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
    """Each frame becomes `stride` frames: a 1x1 conv to stride*C channels, split in time
    (channels [0, C) are the earliest frame, [C, 2C) the next, ...)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, c, h, w = x.shape
        return self.conv(x).view(t * self.stride, c, h, w)


def _strides(time_upscale: tuple[bool, ...] | None, time_strides: tuple[int, ...] | None) -> tuple[int, int, int]:
    if time_strides is not None:
        if len(time_strides) != 3:
            raise ValueError(f"time_strides needs one stride per decoder stage (3), got {time_strides}")
        return tuple(int(s) for s in time_strides)  # type: ignore[return-value]
    ups = tuple(time_upscale) if time_upscale is not None else (False, True, True)
    if len(ups) == 2:  # the published two-flag form: stages 2 and 3; stage 1 never grows time
        ups = (False, *ups)
    if len(ups) != 3:
        raise ValueError(f"time_upscale needs 2 or 3 flags, got {time_upscale}")
    return tuple(2 if u else 1 for u in ups)  # type: ignore[return-value]


def build_decoder(latent_channels: int = 16, widths: tuple[int, ...] = (256, 128, 64, 64),
                  time_upscale: tuple[bool, ...] | None = None, image_channels: int = IMAGE_CHANNELS,
                  time_strides: tuple[int, ...] | None = None, patch_size: int = 1) -> nn.Sequential:
    """The published decoder layout. `time_upscale` is the published flag tuple (2 flags for
    stages 2 and 3, or 3 flags, one per stage; default Wan 2.1's (False, True, True));
    `time_strides` gives each stage's stride directly and wins when given."""
    n = tuple(widths)
    if len(n) != 4:
        raise ValueError(f"the TAEHV decoder has 4 widths, got {widths}")
    strides = _strides(time_upscale, time_strides)
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, n[0]), nn.ReLU()]
    for stage in range(3):
        c = n[stage]
        layers += [MemBlock(c, c), MemBlock(c, c), MemBlock(c, c), nn.Upsample(scale_factor=2),
                   TGrow(c, strides[stage]), _conv(c, n[stage + 1], bias=False)]
    layers += [nn.ReLU(), _conv(n[3], image_channels * patch_size ** 2)]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class TAEHVLayout:
    """The sizes of a TAEHV decoder, as read from its weights."""

    latent_channels: int = 16
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    time_strides: tuple[int, int, int] = (1, 2, 2)
    patch_size: int = 1

    @property
    def time_factor(self) -> int:
        return math.prod(self.time_strides)

    @property
    def frames_to_trim(self) -> int:
        return self.time_factor - 1

    def build(self) -> nn.Sequential:
        return build_decoder(latent_channels=self.latent_channels, widths=self.widths,
                             time_strides=self.time_strides, patch_size=self.patch_size)


def _dims(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    t = sd.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def layout_of(dec: Mapping[str, torch.Tensor], path: str | Path) -> TAEHVLayout:
    """Sizes from a decoder state dict (keys without `decoder.`). A missing tensor falls back
    to the published size so that `check_state` can name every missing key at once."""
    default = TAEHVLayout()
    first = _dims(dec, f"{_WIDTH_CONVS[0]}.weight")
    latent = first[1] if first is not None and len(first) == 4 else default.latent_channels
    widths = []
    for i, key in enumerate(_WIDTH_CONVS):
        dims = _dims(dec, f"{key}.weight")
        widths.append(dims[0] if dims is not None and len(dims) == 4 else default.widths[i])
    strides = []
    for stage, key in enumerate(_TGROWS):
        dims = _dims(dec, f"{key}.conv.weight")
        if dims is None or len(dims) != 4:
            strides.append(default.time_strides[stage])
            continue
        out, inp = dims[0], dims[1]
        if inp != widths[stage] or out % inp:
            raise WeightsError(f"{path} does not fit the TAEHV decoder layout (decoder.{key}.conv.weight is "
                               f"{dims}, not [stride x {widths[stage]}, {widths[stage]}, 1, 1]); "
                               "is it a TAEHV checkpoint?")
        strides.append(out // inp)
    last = _dims(dec, f"{_OUT_CONV}.weight")
    patch = default.patch_size
    if last is not None and len(last) == 4:
        patch = math.isqrt(max(last[0] // IMAGE_CHANNELS, 1))
        if patch * patch * IMAGE_CHANNELS != last[0]:
            raise WeightsError(f"{path} does not fit the TAEHV decoder layout (decoder.{_OUT_CONV}.weight has "
                               f"{last[0]} output channels, not 3 x patch^2); is it a TAEHV checkpoint?")
    return TAEHVLayout(latent, tuple(widths), tuple(strides), patch)  # type: ignore[arg-type]


class TAEHVDecoder:
    """Streaming decoder with the same interface as the Wan VAE decoder."""

    def __init__(self, decoder: nn.Sequential):
        self.decoder = decoder.eval().requires_grad_(False)
        self.time_factor = math.prod(m.stride for m in decoder if isinstance(m, TGrow))
        self.trim = self.time_factor - 1
        out = decoder[-1].out_channels
        self.patch_size = math.isqrt(out // IMAGE_CHANNELS)
        if self.patch_size ** 2 * IMAGE_CHANNELS != out:
            raise ValueError(f"the last conv gives {out} channels, not 3 x patch^2")
        self._past: dict[int, torch.Tensor] = {}
        self._started = False

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        return self.decoder[1].in_channels

    @property
    def space_factor(self) -> int:
        """Output pixels per latent pixel along each side (three 2x upsamplings, then the patch)."""
        return 8 * self.patch_size

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.decoder[int(k)].out_channels for k in _WIDTH_CONVS)

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
        x = x.float().clamp(0, 1)
        if self.patch_size > 1:
            x = F.pixel_shuffle(x, self.patch_size)
        if not self._started:
            x = x[self.trim:]
            self._started = True
        return (x * 2 - 1)[None]

    def state(self) -> dict[str, Any]:
        return {"past": {k: v.clone() for k, v in self._past.items()}, "started": self._started}

    def set_state(self, state: dict[str, Any]) -> None:
        self._past = {k: v.clone() for k, v in state["past"].items()}
        self._started = state["started"]

    def __deepcopy__(self, memo: dict) -> "TAEHVDecoder":  # pragma: no cover - convenience
        new = TAEHVDecoder(copy.deepcopy(self.decoder, memo))
        new.set_state(self.state())
        return new


def load_taehv(path: str | Path, device: torch.device | str, dtype: torch.dtype) -> TAEHVDecoder:
    """Decoder weights from a TAEHV checkpoint (.pth or .safetensors; its `decoder.*` keys,
    `encoder.*` ignored), with every size read from the tensors' shapes."""
    path = Path(path)
    sd = read_checkpoint(path)
    dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if not dec:
        raise WeightsError(f"{path} has no decoder.* keys; is it a TAEHV checkpoint (taew2_1.pth)?")
    layout = layout_of(dec, path)
    model = layout.build()
    check_state(model, dec, path)
    model.load_state_dict(dec)
    log.info("loaded TAEHV decoder from %s (latent channels %d, widths %s, time strides %s, patch %d)",
             path, layout.latent_channels, layout.widths, layout.time_strides, layout.patch_size)
    return TAEHVDecoder(model.to(device=device, dtype=dtype))


def random_taehv(device: torch.device | str, dtype: torch.dtype, weights_seed: int = 0, latent_channels: int = 16,
                 widths: tuple[int, ...] = (256, 128, 64, 64)) -> TAEHVDecoder:
    """The published layout with seeded random weights (bench, the embedded default)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights_seed)
        model = build_decoder(latent_channels=latent_channels, widths=widths)
    return TAEHVDecoder(model.to(device=device, dtype=dtype))


def make_taehv(cfg: Config, files: WeightFiles | None, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> TAEHVDecoder:
    """The pipeline's TAEHV decoder (vae.kind taehv): weights from `files.taehv`, or seeded
    random weights from `cfg.weights_seed` when `files` is None; computing in `dtype`."""
    dev, dt = torch.device(device), dtype
    if files is None:
        return random_taehv(dev, dt, cfg.weights_seed, latent_channels=cfg.model.in_dim)
    if files.taehv is None:
        raise WeightsError(f"vae.kind taehv needs taew2_1.pth (the TAEHV weights from madebyollin/taehv, "
                           f"downloaded by you) in {files.root}")
    decoder = load_taehv(files.taehv, dev, dt)
    if decoder.latent_channels != cfg.model.in_dim:
        raise WeightsError(f"{files.taehv} decodes {decoder.latent_channels}-channel latents but the DiT of "
                           f"{cfg.source} makes {cfg.model.in_dim}-channel ones; is it the TAEHV for this model?")
    if (decoder.time_factor, decoder.space_factor) != (cfg.vae.temporal_factor, cfg.vae.spatial_factor):
        raise WeightsError(f"{files.taehv} turns each latent into {decoder.time_factor} frames of "
                           f"{decoder.space_factor}x its size but {cfg.source} expects {cfg.vae.temporal_factor} "
                           f"frames of {cfg.vae.spatial_factor}x; is it the TAEHV for this model?")
    return decoder
