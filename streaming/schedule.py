"""The flow-matching schedule of LongLive's few-step sampler.

sigma runs over a 1000-point grid from 1 towards 0 (a 1001-point linspace with its last
point dropped), warped by the shift: sigma' = shift*s / (1 + (shift-1)*s); t = 1000*sigma'.
The configured step list [1000, 750, 500, 250] picks grid points 0, 250, 500, 750 of the
warped timesteps (with a final 0 appended to the grid), so the model sees
[1000, 937.5, 833.33, 625]. Values stay float32, as in the official tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ScheduleConfig


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor        # [N] float32, the warped grid
    timesteps: torch.Tensor     # [N] float32 = sigmas * N
    steps: torch.Tensor         # [S] float32, the timesteps the model is run at
    step_sigmas: tuple[float, ...]   # sigma of each step (float32 values)
    context_timestep: float

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> "Schedule":
        n = cfg.num_train_timesteps
        sig = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float32)[:-1]
        sig = cfg.shift * sig / (1 + (cfg.shift - 1) * sig)
        timesteps = sig * n
        requested = torch.tensor([float(t) for t in cfg.denoising_steps], dtype=torch.float32)
        if cfg.warp:
            ext = torch.cat([timesteps, torch.zeros(1)])
            index = n - requested.round().long()
            if not torch.equal(index.float(), n - requested):
                raise ValueError("with warp: true the denoising steps must be whole numbers")
            steps = ext[index]
        else:
            steps = requested
        sched = cls(sig, timesteps, steps, (), float(cfg.context_noise))
        step_sigmas = tuple(float(sched.sigma_of(float(t))) for t in steps)
        return cls(sig, timesteps, steps, step_sigmas, float(cfg.context_noise))

    def from_strength(self, strength: float) -> tuple[tuple[float, float], ...]:
        """(timestep, sigma) of each step for a block that starts from an input's latents mixed
        with noise as ``noise * s + latents * (1 - s)`` (video-to-video, strength s in [0, 1]).

        That mix is a flow-matching sample at sigma = s, so the first step is run at sigma s
        (timestep 1000 s), and then the schedule's own steps below s, so the noise level only
        goes down: a sampler whose next step were noisier than its last would renoise away
        what that step drew. (Scope's video mode runs its first step at 1000 s - 100, which
        labels the mix as less noisy than it is, and keeps its later steps whatever s is, so
        the second can be noisier than the first.) At s = 1 this is the text-only schedule;
        at s = 0, no step at all: the block is the input's latents."""
        s = float(strength)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, not {strength}")
        if s == 0.0:
            return ()
        steps = tuple((float(t), sig) for t, sig in zip(self.steps, self.step_sigmas))
        if s == 1.0:
            return steps
        return ((float(self.timesteps.numel()) * s, s),) + tuple(step for step in steps if step[1] < s)

    def sigma_of(self, t: float) -> torch.Tensor:
        """sigma of the grid timestep nearest to t (float32 scalar tensor)."""
        idx = torch.argmin((self.timesteps - torch.tensor(t, dtype=torch.float32)).abs())
        return self.sigmas[idx]

    def flow_to_x0(self, flow: torch.Tensor, xt: torch.Tensor, sigma: float) -> torch.Tensor:
        """x0 = x_t - sigma * flow, computed in float64 as the official wrapper does."""
        return (xt.double() - sigma * flow.double()).to(flow.dtype)

    @staticmethod
    def renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
        """x = (1 - sigma) x0 + sigma eps: a fresh renoise to the next step's level."""
        return (1 - sigma) * x0 + sigma * eps
