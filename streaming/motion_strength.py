"""Motion-aware strength for live input (an option): the more the input moves, the lower the
strength, so fast movement stays the input's own and a still input leaves the words more room.

Per block: motion = the largest per-frame RMS change between consecutive input frames (values
in [-1, 1], the first frame compared with the previous block's last), as a share of
`full_motion` (capped at 1). The strength aimed at is `still - sensitivity * motion`, and the
block gets `(1 - keep) * aim + keep * previous` (smoothed). Daydream Scope's LongLive video mode
does the same with 0.8, 0.2, 0.2 and 0.1, the defaults here (facts from its code).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# frames wider than this are subsampled (every n-th pixel) before their change is measured
MEASURE_WIDTH = 256


@dataclass
class MotionStrength:
    still: float = 0.8           # the strength a still input aims at
    sensitivity: float = 0.2     # taken off at full motion
    full_motion: float = 0.2     # per-frame RMS change that counts as full motion
    keep: float = 0.1            # share of the last block's strength kept (smoothing)
    _last_frame: torch.Tensor | None = field(default=None, repr=False)
    _strength: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("still", "sensitivity", "full_motion", "keep"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0 or (name != "full_motion" and value > 1):
                raise ValueError(f"motion strength: {name} must be in [0, 1], not {value}")
        if self.full_motion <= 0:
            raise ValueError("motion strength: full_motion must be above 0")
        if self.sensitivity > self.still:
            raise ValueError("motion strength: sensitivity must not exceed still (the strength would go below 0)")

    def reset(self) -> None:
        """A new input: no previous frame, no smoothing."""
        self._last_frame, self._strength = None, None

    def motion(self, frames: np.ndarray | torch.Tensor) -> float:
        """0..1 for a block's uint8 frames [T, H, W, 3] (advances the previous frame)."""
        x = torch.as_tensor(frames)
        step = max(1, -(-x.shape[2] // MEASURE_WIDTH))
        x = x[:, ::step, ::step].float().div(127.5).sub(1.0)
        if self._last_frame is not None and self._last_frame.shape == x.shape[1:]:
            x = torch.cat([self._last_frame[None], x])
        self._last_frame = x[-1].clone()
        if x.shape[0] < 2:
            return 0.0
        rms = (x[1:] - x[:-1]).pow(2).mean(dim=(1, 2, 3)).sqrt()
        return float((rms.max() / self.full_motion).clamp(0, 1))

    def update(self, frames: np.ndarray | torch.Tensor) -> float:
        """The strength for the block whose input frames these are."""
        aim = self.still - self.sensitivity * self.motion(frames)
        previous = aim if self._strength is None else self._strength
        self._strength = (1 - self.keep) * aim + self.keep * previous
        return self._strength
