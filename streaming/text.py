"""TEMPORARY stand-in (replaced by the UMT5 encoder): a seeded embedding per prompt."""

from __future__ import annotations

import hashlib

import torch

from .config import Config


class PromptEncoder:
    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device

    @classmethod
    def from_config(cls, cfg: Config, files, device: torch.device) -> "PromptEncoder":
        return cls(cfg, device)

    def encode(self, prompt: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
        g = torch.Generator().manual_seed(seed)
        m = self.cfg.model
        out = torch.randn(1, m.text_len, m.text_dim, generator=g)
        out[:, min(len(prompt.split()) + 1, m.text_len):] = 0
        return out.to(self.device)
