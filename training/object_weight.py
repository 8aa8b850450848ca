"""Where the object is in a clip's latents, to weigh the DiT's loss there.

The object covers 1-5 % of a frame; left to a plain mean, nearly all of the DiT's loss is the
setting, and a model that paints the right background and no object scores well. The loss is
weighed up on the latent cells the object covers, so the words for colour, shape and motion
matter as much as the setting's.

Latent frame k stands for video frames 4k-3 .. 4k (the first, for frame 0); a cell is the
object's when its centre lies within the object's extent (plus one cell, for its outline and the
VAE's reach) at the last of those frames, wrapping round the frame's edges as the world does.
"""

from __future__ import annotations

import numpy as np
import torch

from .world import HEIGHT, SIZES, WIDTH, Clip, bounce_lift, positions


def object_cells(clip: Clip, latent_frames: int, h: int, w: int, temporal_factor: int = 4) -> np.ndarray:
    """[latent_frames, h, w] bool: the latent cells the object covers."""
    centres, lift = positions(clip), bounce_lift(clip)
    cell_y, cell_x = HEIGHT / h, WIDTH / w
    ys = (np.arange(h) + 0.5) * cell_y
    xs = (np.arange(w) + 0.5) * cell_x
    out = np.zeros((latent_frames, h, w), dtype=bool)
    for k in range(latent_frames):
        f = min(temporal_factor * k, clip.frames - 1)
        cx, cy = centres[f]
        cy -= lift[f]
        half = SIZES[clip.scene_at(f).size]
        dx = np.abs((xs - cx + WIDTH / 2) % WIDTH - WIDTH / 2)      # wrapped distances
        dy = np.abs((ys - cy + HEIGHT / 2) % HEIGHT - HEIGHT / 2)
        out[k] = (dy[:, None] <= half + cell_y) & (dx[None, :] <= half + cell_x)
    return out


def object_weights(clips: list[Clip], latent_frames: int, h: int, w: int, weight: float) -> torch.Tensor:
    """[N, latent_frames, 1, h, w] float: `weight` on the object's cells, 1 elsewhere."""
    cells = np.stack([object_cells(c, latent_frames, h, w) for c in clips])
    return torch.from_numpy(1.0 + (weight - 1.0) * cells.astype(np.float32))[:, :, None]
