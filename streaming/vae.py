"""TEMPORARY stand-in (replaced by the Wan2.1 streaming VAE decoder): a latent preview."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Config


class PreviewDecoder:
    def __init__(self, cfg: Config, device: torch.device):
        g = torch.Generator().manual_seed(0)
        self.proj = (torch.randn(3, cfg.model.in_dim, generator=g) / cfg.model.in_dim ** 0.5).to(device)
        self.scale = cfg.vae.spatial_factor
        self.first = True

    def reset(self) -> None:
        self.first = True

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, f, c, h, w = latents.shape
        rgb = torch.einsum("oc,bfchw->bfohw", self.proj, latents.float()).tanh()
        rgb = rgb.repeat_interleave(4, dim=1)
        if self.first:
            rgb = rgb[:, 3:]
            self.first = False
        t = rgb.shape[1]
        up = F.interpolate(rgb.flatten(0, 1), scale_factor=self.scale, mode="nearest")
        return up.view(b, t, 3, h * self.scale, w * self.scale)

    def state(self):
        return self.first

    def set_state(self, state) -> None:
        self.first = state


def make_decoder(cfg: Config, files, device: torch.device, dtype: torch.dtype):
    return PreviewDecoder(cfg, device)
