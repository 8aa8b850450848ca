"""Where the first block's object goes, read from its noise: a mark the DiT can learn to follow.

A DiT trained by regressing x0 predicts the mean of what could be there. From the first block's
pure noise (the sampler's first step, sigma 1) the object could be anywhere the model cannot rule
out, so that mean is a faint spread of its colour, and with four steps that all start from heavy
noise nothing commits it to one place (docs/TOY_WORLD.md, "Where it stands"). The world wraps
round its edges and a standard Gaussian draw rolled on that torus is still one, so training can
choose, without changing what the sampler sees, to roll the first block's noise so that its
*mark* (the token, a patch of latents over the block's frames and channels, whose values sum
highest) has its top-left corner where the object starts. The model can then read the place
from the noise, and its mean is one object there.
"""

from __future__ import annotations

import torch


def mark(noise: torch.Tensor, patch: int) -> tuple[int, int]:
    """(row, column) of the token of `noise` [F, C, h, w] whose values sum highest."""
    f, c, h, w = noise.shape
    sums = noise.sum((0, 1)).view(h // patch, patch, w // patch, patch).sum((1, 3))
    i = int(sums.flatten().argmax())
    return i // sums.shape[1], i % sums.shape[1]


def roll_to(noise: torch.Tensor, patch: int, corner: tuple[int, int]) -> torch.Tensor:
    """`noise` [F, C, h, w] rolled by whole tokens (spatially, wrapping) so that its mark's
    top-left corner lands on the latent cell `corner` (row, column; a multiple of `patch`)."""
    ty, tx = mark(noise, patch)
    return noise.roll((corner[0] - ty * patch, corner[1] - tx * patch), dims=(2, 3))
