"""3D rotary position embedding of the causal DiT.

Each head's D channels form D/2 complex numbers from interleaved pairs (x[2i], x[2i+1]).
The first `split[0]` complex slots rotate with the absolute latent frame index, the next
`split[1]` with the patch row, the last `split[2]` with the patch column. Each axis has its
own frequency ladder theta^(-2j/d_axis) over its own width d_axis = 2*split[axis].

The official code tabulates position*frequency in float64 for 1024 positions; computing the
same products on demand gives identical angles and lets a live stream run past frame 1024
(where the official tables end). The tables are built on the model's device, so starting a
new block never copies from the host (a pageable copy would wait for the GPU).
"""

from __future__ import annotations

import torch


def inverse_frequencies(complex_slots: int, theta: float) -> torch.Tensor:
    width = 2 * complex_slots
    return 1.0 / torch.pow(theta, torch.arange(0, width, 2, dtype=torch.float64) / width)


class Rope3D:
    """Builds per-token cos/sin tables for spans of frames, memoised per span."""

    def __init__(self, split: tuple[int, int, int], theta: float = 10000.0, device: torch.device | str = "cpu"):
        self.split = split
        self.device = torch.device(device)
        self.inv = [inverse_frequencies(s, theta).to(self.device) for s in split]
        self._cache: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def angles(self, start_frame: int, frames: int, rows: int, cols: int) -> torch.Tensor:
        """[frames*rows*cols, D/2] float64 angles, tokens frame-major, then row, then column."""
        dev = self.device
        pf = torch.arange(start_frame, start_frame + frames, dtype=torch.float64, device=dev)
        ph = torch.arange(rows, dtype=torch.float64, device=dev)
        pw = torch.arange(cols, dtype=torch.float64, device=dev)
        af, ah, aw = torch.outer(pf, self.inv[0]), torch.outer(ph, self.inv[1]), torch.outer(pw, self.inv[2])
        return torch.cat([
            af.view(frames, 1, 1, -1).expand(frames, rows, cols, -1),
            ah.view(1, rows, 1, -1).expand(frames, rows, cols, -1),
            aw.view(1, 1, cols, -1).expand(frames, rows, cols, -1),
        ], dim=-1).reshape(frames * rows * cols, -1)

    def cos_sin(self, start_frame: int, frames: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [frames*rows*cols, D/2] float32 on the device."""
        key = (start_frame, frames, rows, cols)
        hit = self._cache.get(key)
        if hit is None:
            a = self.angles(start_frame, frames, rows, cols)
            hit = (torch.cos(a).float(), torch.sin(a).float())
            if len(self._cache) >= 8:  # a stream revisits each span a few times in a row, then moves on
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit
