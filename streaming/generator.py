"""The block loop: LongLive's few-step causal sampler, one block of latent frames at a time.

Per block (3 latent frames for LongLive):
1. pending prompt switch? re-cache the window with the new prompt (see `_recache`);
2. start from the block's initial noise; for each step t_i of the schedule run the DiT,
   convert its flow to x0, and (except after the last step) renoise x0 to t_{i+1} with
   fresh noise;
3. run the DiT once more on the clean x0 at the context timestep (0) so the window holds
   clean keys and values for this block; the block's x0 is the output.

The generator is synchronous and owns no thread; the server's engine drives it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .config import Config
from .dit import CausalDiT, CrossKV
from .kv_window import WindowSnapshot
from .noise import INITIAL, NoiseSource, SeededNoise
from .schedule import Schedule

log = logging.getLogger(__name__)

# trace hook: (kind, block, step, model input, x0) with kind "denoise" | "context" | "recache"
TraceHook = Callable[[str, int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class GeneratorSnapshot:
    """Everything needed to continue a stream bit-identically from a block boundary."""

    window: WindowSnapshot
    history: torch.Tensor | None
    frame: int
    block: int
    prompt_embedding: torch.Tensor
    prompt: CrossKV
    pending: tuple[torch.Tensor, CrossKV] | None
    noise: NoiseSource
    seed: int


class StreamingGenerator:
    # skip re-caching frames whose keys/values the protected sink would discard (see _recache)
    skip_discarded_recache = True

    def __init__(self, dit: CausalDiT, cfg: Config, noise: NoiseSource | None = None, batch: int = 1):
        self.dit, self.cfg, self.batch = dit, cfg, batch
        self.schedule = Schedule.from_config(cfg.schedule)
        w = cfg.window
        self.window = dit.new_window(w.local_attn_size, w.sink_size, cfg.frame_seq_length, batch)
        self.device = dit.patch_embedding.weight.device
        self.block_shape = (batch, cfg.latent_frames_per_block, cfg.model.in_dim, cfg.latent_height, cfg.latent_width)
        self._noise_override = noise
        self.noise: NoiseSource = noise or SeededNoise(0)
        self.seed = 0
        self.trace: TraceHook | None = None
        # timestep tensors, made once: no host work inside a block
        f = cfg.latent_frames_per_block
        self._t_steps = [torch.full((batch, f), float(t), device=self.device) for t in self.schedule.steps]
        self._t_context = torch.full((batch, f), self.schedule.context_timestep, device=self.device)
        self._sigmas = self.schedule.step_sigmas
        self.prompt_embedding: torch.Tensor | None = None
        self.prompt: CrossKV | None = None
        self._pending: tuple[torch.Tensor, CrossKV] | None = None
        self.history: torch.Tensor | None = None   # the newest clean latents, at most a window's worth
        self.frame = 0
        self.block = 0

    # -- control -------------------------------------------------------------
    def reset(self, prompt_embedding: torch.Tensor, seed: int = 0, noise: NoiseSource | None = None) -> None:
        """Start a new stream under `prompt_embedding` ([B, text_len, text_dim])."""
        self.seed = int(seed)
        self.noise = noise or self._noise_override or SeededNoise(self.seed)
        self.window.reset()
        self.prompt_embedding = prompt_embedding
        self.prompt = self.dit.encode_prompt(prompt_embedding.to(self.device))
        self._pending = None
        self.history = None
        self.frame = self.block = 0

    def switch_prompt(self, prompt_embedding: torch.Tensor) -> None:
        """Switch to a new prompt at the next block boundary (with the official KV re-cache)."""
        self._require_started()
        self._pending = (prompt_embedding, self.dit.encode_prompt(prompt_embedding.to(self.device)))

    def set_conditioning(self, prompt_embedding: torch.Tensor) -> None:
        """From the next block on, generate under `prompt_embedding` without re-caching the
        window (a transition's intermediate blocks: only the cross-attention input changes).
        A switch still pending is dropped: this conditioning replaces it."""
        self._require_started()
        self._pending = None
        self.prompt_embedding = prompt_embedding
        self.prompt = self.dit.encode_prompt(prompt_embedding.to(self.device))

    @property
    def latest_embedding(self) -> torch.Tensor:
        """The conditioning the next block will be generated under (a pending switch's, if any)."""
        self._require_started()
        return self._pending[0] if self._pending is not None else self.prompt_embedding

    def reseed_noise(self, seed: int) -> None:
        """Noise from seed `seed` from the next block on (the state so far is kept)."""
        self._require_started()
        self.seed = int(seed)
        self.noise = self._noise_override or SeededNoise(self.seed)

    @property
    def switch_pending(self) -> bool:
        return self._pending is not None

    # -- the loop ------------------------------------------------------------
    @torch.no_grad()
    def apply_switch(self) -> bool:
        """Apply a pending prompt switch now (the re-cache); `next_block` does it when it has
        not been done. True when there was one. (Split out so the re-cache can be timed.)"""
        self._require_started()
        if self._pending is None:
            return False
        self._recache(*self._pending)
        self._pending = None
        return True

    @torch.no_grad()
    def next_block(self, source: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
        """Generate the next block: clean latents [B, frames_per_block, C, h, w] float32.

        With `source` (an input's latents for this block, the same shape) the block is
        video-to-video: it starts from ``noise * strength + source * (1 - strength)`` and
        denoises from that level down (`Schedule.from_strength`); strength 1 is text alone,
        0 the source itself. Everything else (window, sink, re-cache, noise) is as without."""
        shape = self.block_shape
        if source is not None:
            if tuple(source.shape) != shape:
                raise ValueError(f"an input block's latents must be {list(shape)}, not {list(source.shape)}")
            plan = self.schedule.from_strength(strength)
        self.apply_switch()
        dit, start, block = self.dit, self.frame, self.block
        x = self.noise.draw(block, INITIAL, shape, self.device)
        steps, sigmas = self._t_steps, self._sigmas
        if source is not None:
            s = float(strength)
            x = x * s + source.to(self.device, torch.float32) * (1 - s)
            steps = [torch.full_like(self._t_context, t) for t, _ in plan]
            sigmas = tuple(sig for _, sig in plan)
        x0 = x
        last = len(steps) - 1
        for i, t in enumerate(steps):
            flow = dit(x, t, self.prompt, self.window, start)
            x0 = self.schedule.flow_to_x0(flow, x, sigmas[i])
            if self.trace is not None:
                self.trace("denoise", block, i, x, x0)
            if i < last:
                x = Schedule.renoise(x0, self.noise.draw(block, i, shape, self.device), sigmas[i + 1])
        self._settle(x0)
        return x0

    @torch.no_grad()
    def feed(self, x0: torch.Tensor) -> None:
        """Take clean latents x0 [B, frames_per_block, C, h, w] as the next block instead of
        generating one: a pending switch is applied first, then the block's clean keys and
        values are written exactly as after a generated block (teacher forcing; latents from
        an encoder)."""
        self._require_started()
        if tuple(x0.shape) != self.block_shape:
            raise ValueError(f"a fed block must be {list(self.block_shape)}, not {list(x0.shape)}")
        self.apply_switch()
        self._settle(x0.to(self.device, torch.float32))

    def _settle(self, x0: torch.Tensor) -> None:
        """The block's context pass (clean K/V at the context timestep), then advance."""
        self.dit(x0, self._t_context, self.prompt, self.window, self.frame)
        if self.trace is not None:
            self.trace("context", self.block, -1, x0, x0)
        self._remember(x0)
        self.frame += x0.shape[1]
        self.block += 1

    def _remember(self, x0: torch.Tensor) -> None:
        keep = self.cfg.window.local_attn_size
        hist = x0 if self.history is None else torch.cat([self.history, x0], dim=1)
        self.history = hist[:, -keep:]

    def _recache(self, embedding: torch.Tensor, prompt: CrossKV) -> None:
        """Official re-cache: the newest min(window, frames so far) clean frames are run again
        at the context timestep under the new prompt, overwriting their keys and values in
        place. With global_sink the sink keeps the first prompt (unless the switch comes
        before the window is full: then the re-cache starts at frame 0 and rewrites it).

        With global_sink and a full window, the oldest frames of the re-cache land on the
        protected sink slots: the official code computes them and throws their keys and
        values away, and no other frame ever attends to them, so they are skipped here
        (identical results, a quarter less work for LongLive's 12-frame window)."""
        self.prompt_embedding, self.prompt = embedding, prompt
        n = 0 if self.history is None else min(self.cfg.window.local_attn_size, self.frame)
        if n == 0:
            return
        start = self.frame - n
        rewrite_sink = not self.cfg.window.global_sink
        if start > 0 and not rewrite_sink and self.skip_discarded_recache:
            skip = max(0, self.window.sink - (self.window.filled - n))
            n, start = n - skip, start + skip
            if n <= 0:          # the window holds only its protected sink: nothing to redo
                return
        frames = self.history[:, -n:]
        t = torch.full((self.batch, n), self.schedule.context_timestep, device=self.device)
        flow = self.dit(frames, t, prompt, self.window, start, rewrite_sink=rewrite_sink)
        if self.trace is not None:
            sigma = float(self.schedule.sigma_of(self.schedule.context_timestep))
            self.trace("recache", self.block, start, frames, self.schedule.flow_to_x0(flow, frames, sigma))

    # -- snapshot / restore --------------------------------------------------
    def snapshot(self, device: torch.device | str | None = None) -> GeneratorSnapshot:
        """State at the current block boundary. `device="cpu"` keeps GPU memory free."""
        self._require_started()
        hist = None if self.history is None else self.history.to(device or self.device, copy=True)
        return GeneratorSnapshot(self.window.snapshot(device), hist, self.frame, self.block,
                                 self.prompt_embedding, self.prompt, self._pending, self.noise, self.seed)

    def restore(self, snap: GeneratorSnapshot) -> None:
        self.window.restore(snap.window)
        self.history = None if snap.history is None else snap.history.to(self.device, copy=True)
        self.frame, self.block = snap.frame, snap.block
        self.prompt_embedding, self.prompt, self._pending = snap.prompt_embedding, snap.prompt, snap.pending
        self.noise, self.seed = snap.noise, snap.seed

    def _require_started(self) -> None:
        if self.prompt is None:
            raise RuntimeError("call reset(prompt_embedding, seed) before generating")
