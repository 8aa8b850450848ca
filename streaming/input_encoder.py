"""A live input's frames, block by block, to the latents a video-to-video block starts from.

Each block of the stream takes the input's frames for its own span (the stream's first block
1 + 4(F-1) frames, every later one 4F: the frames the block will show), fitted to the model's
size and encoded by the stream's encoder (the Wan VAE's, or TAEHV's on the fast path) with its
causal cache carried from block to block, so a steady input is encoded as one clip.

Fitting: the frame is cropped about its centre to the model's aspect ratio (a 16:9 camera is
not squashed into 320x192), then resized with antialiasing (bilinear).

Input lost and back: `reset` forgets the cache; the next block's frames start a new clip, of
which the encoder takes the last 1 + 4(F-1) (its first chunk's length), so latent 0 stands for
the block's fourth frame and the rest as always.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config


class FrameEncoder(Protocol):
    def new_state(self) -> Any: ...

    def __call__(self, video: torch.Tensor, state: Any = None) -> torch.Tensor:
        """Frames [B, T, 3, H, W] in [-1, 1] -> latents [B, T', C, h, w], advancing `state`."""
        ...


class InputError(ValueError):
    """Input frames that cannot drive a block; one sentence for the user."""


def fit_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, h, w, 3] -> float [T, 3, height, width] in [-1, 1]: cropped about the centre to
    the target's aspect ratio, then resized with antialiasing."""
    t, h, w, _ = frames.shape
    x = frames.permute(0, 3, 1, 2).float()
    if h * width > w * height:          # taller than the target: crop rows
        keep = max(1, round(w * height / width))
        top = (h - keep) // 2
        x = x[:, :, top:top + keep]
    elif h * width < w * height:        # wider: crop columns
        keep = max(1, round(h * width / height))
        left = (w - keep) // 2
        x = x[:, :, :, left:left + keep]
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)


class InputEncoder:
    def __init__(self, encoder: FrameEncoder, cfg: Config, device: torch.device | str = "cpu"):
        self.encoder, self.device = encoder, torch.device(device)
        self.height, self.width = cfg.video.height, cfg.video.width
        f, step = cfg.latent_frames_per_block, cfg.vae.temporal_factor
        self.first_frames, self.later_frames = 1 + step * (f - 1), step * f
        self._state: Any = None

    @property
    def started(self) -> bool:
        return self._state is not None

    def reset(self) -> None:
        """The input was lost: the next block's frames start a new clip."""
        self._state = None

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor, stream_start: bool) -> torch.Tensor:
        """One block's input frames (uint8 [T, H, W, 3], any size; `stream_start`: the block is
        the stream's first, of 1 + 4(F-1) frames, else 4F) -> latents [1, F, C, h, w]."""
        want = self.first_frames if stream_start else self.later_frames
        x = torch.as_tensor(frames)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise InputError(f"input frames must be uint8 [frames, height, width, 3], not {x.dtype} "
                             f"{list(x.shape)}")
        if x.shape[0] != want:
            raise InputError(f"this block takes {want} input frames, not {x.shape[0]}")
        if min(x.shape[1], x.shape[2]) < 2:
            raise InputError(f"an input frame of {x.shape[2]}x{x.shape[1]} is too small to use")
        if stream_start:
            self._state = None
        state = self.encoder.new_state() if self._state is None else self._state
        if self._state is None:
            x = x[-self.first_frames:]
        video = fit_frames(x.to(self.device), self.height, self.width)[None]
        latents = self.encoder(video, state)
        self._state = state
        return latents

    def state(self) -> Any:
        return copy.deepcopy(self._state)

    def set_state(self, state: Any) -> None:
        self._state = copy.deepcopy(state)


def make_input_encoder(cfg: Config, files: Any, device: torch.device) -> InputEncoder:
    """The stream's encoder for live input: the Wan VAE's (from the weights' VAE file), or
    TAEHV's with vae.kind taehv (from taew2_1.pth); seeded random weights without weight files
    (the random-weight presets)."""
    if cfg.vae.kind == "taehv":
        from .taehv_encoder import TAEHVEncoder, build_encoder, load_taehv_encoder
        if files is None or files.taehv is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.weights_seed)
                encoder = TAEHVEncoder(build_encoder(latent_channels=cfg.model.in_dim).to(device))
        else:
            encoder = load_taehv_encoder(files.taehv, device, torch.float32)
        return InputEncoder(encoder, cfg, device)
    from .vae_encoder import WanVAEEncoder, load_encoder
    if files is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.weights_seed)
            wan = WanVAEEncoder(cfg.vae)
    else:
        wan = load_encoder(cfg.vae, files.vae)
    return InputEncoder(wan.to(device).eval().requires_grad_(False), cfg, device)
