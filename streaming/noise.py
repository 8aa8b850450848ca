"""Where the generator's Gaussian noise comes from: one replaceable source.

`SeededNoise` makes every draw a pure function of (seed, block, step), so a stream is
reproducible from its seed alone, and a restored snapshot continues bit-identically
without saving any generator state. `RecordedNoise` replays draws recorded elsewhere
(the golden fixtures), so every step can be compared against the official trace.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

INITIAL = -1  # the `step` of a block's initial noise; renoise draws are steps 0, 1, ...
SEED_MAX = 2**53 - 1  # the largest stream seed: the largest integer a browser represents exactly


class NoiseSource(Protocol):
    def draw(self, block: int, step: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """float32 standard normal noise for `block`: its initial noise (step INITIAL) or the
        renoise after denoising step `step`."""
        ...


class SeededNoise:
    def __init__(self, seed: int):
        self.seed = int(seed)

    def draw(self, block: int, step: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        key = np.random.SeedSequence([self.seed & 0xFFFFFFFFFFFFFFFF, block, step + 1]).generate_state(2, np.uint32)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(key[0]) << 31 ^ int(key[1]))
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)


class RecordedNoise:
    """Replays `initial` [B, F_total, C, H, W] and `renoise` [blocks, steps-1, F, C, H, W]."""

    def __init__(self, initial: torch.Tensor, renoise: torch.Tensor, frames_per_block: int):
        self.initial, self.renoise, self.fpb = initial, renoise, frames_per_block

    def draw(self, block: int, step: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if step == INITIAL:
            out = self.initial[:, block * self.fpb:(block + 1) * self.fpb]
        else:
            out = self.renoise[block, step].reshape(shape)
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"recorded noise for block {block} step {step} has shape {list(out.shape)}, "
                             f"the stream needs {list(shape)}")
        return out.to(device=device, dtype=torch.float32)
