"""Training the toy world's DiT and text encoder: teacher forcing through the stream's own code.

Each step takes a batch of encoded clips (`LatentClips`) and one shared structure: which block
is the target, whether the stream is "long" (the rolling frames far from the sink), where the
prompt switches. The earlier blocks are fed to a `StreamingGenerator` exactly as the sampler
settles its own blocks (`feed`: the context pass at the context timestep, the KV window with
its sink and eviction, the official re-cache at a switch), without gradients; then the target
block, noised to one of the schedule's step levels, goes through the DiT with gradients, and
the loss is the squared error of its x0 (``x_t - sigma * flow``) against the clean block. The
captions are drawn anew every step (forms, synonyms, made-up words), so the text encoder
learns what the words mean, not one sentence per scene.

A "long" step feeds the first block (the sink), jumps the stream's position ahead by
hundreds to thousands of frames, then feeds the two blocks before the target there: what the
window holds ten minutes into a stream (RoPE positions far beyond any clip, an old sink),
which a clip of a few seconds cannot show otherwise.

`context_noise` (optional) adds a little Gaussian noise to the fed blocks, so the model does
not rely on perfectly clean context (its own blocks are not); the model is still told t = 0.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from streaming.config import Config
from streaming.dit import CausalDiT
from streaming.generator import StreamingGenerator
from streaming.schedule import Schedule
from streaming.text import UMT5Encoder, pad_ids

from . import checkpoint
from .captions import caption
from .clips import block_start_frame
from .world import Clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiTTraining:
    steps: int = 4000
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    long_share: float = 0.3        # steps that jump far into a stream (when the target has two blocks before it)
    context_noise: float = 0.05    # the largest sigma of noise added to fed blocks
    context_noise_share: float = 0.5
    checkpoint_every: int = 250


@dataclass
class LatentClips:
    """Encoded clips: latents [N, F, C, h, w] (float16 to save memory) and each clip's scenes."""

    latents: torch.Tensor
    clips: list[Clip]
    switch_blocks: list[int]       # the block where each clip switches (0: none)

    @property
    def blocks(self) -> int:
        return self.latents.shape[1] // 3


class Captioner:
    """Captions -> (ids, mask) for the text encoder, with the world's tokenizer."""

    def __init__(self, tokenizer, text_len: int):
        self.tokenizer, self.text_len = tokenizer, text_len
        self.eos = tokenizer.token_to_id("[EOS]")

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [pad_ids(self.tokenizer.encode(t).ids, self.eos, self.text_len) for t in texts]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def embed(text_encoder: UMT5Encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Text encoder output with the rows past each prompt zeroed (as `PromptEncoder` gives it)."""
    return text_encoder(ids, mask) * mask[..., None].to(torch.float32)


@dataclass
class Structure:
    target: int            # block index within the clip
    long_gap: int          # frames jumped after the sink (0: an ordinary stream from frame 0)
    switch: int            # clip block of the switch seen in this step (0: none)


def draw_structure(rng: np.random.Generator, data: LatentClips, spec: DiTTraining) -> tuple[Structure, np.ndarray]:
    """A structure and the clips (indices) that fit it: all clips share where they switch."""
    blocks = data.blocks
    target = int(rng.integers(blocks))
    gap = 0
    if target >= 3 and rng.random() < spec.long_share:
        gap = 3 * int(rng.integers(20, 1200))
    switches = np.asarray(data.switch_blocks)
    wanted = int(switches[int(rng.integers(len(switches)))])
    if wanted > target:
        wanted = 0                          # the switch comes after the target: not seen
    if wanted:
        chosen = np.flatnonzero(switches == wanted)
    else:                                   # clips whose switch, if any, comes after the target
        chosen = np.flatnonzero((switches == 0) | (switches > target))
    idx = rng.choice(chosen, size=min(spec.batch, len(chosen)), replace=len(chosen) < spec.batch)
    return Structure(target, gap, wanted), idx


def teacher_forced_loss(dit: CausalDiT, text_encoder: UMT5Encoder, captioner: Captioner, cfg: Config,
                        data: LatentClips, structure: Structure, idx: np.ndarray, rng: np.random.Generator,
                        spec: DiTTraining) -> torch.Tensor:
    sched = Schedule.from_config(cfg.schedule)
    fpb = cfg.latent_frames_per_block
    lat = data.latents[torch.as_tensor(idx)].float()                     # [B, F, C, h, w]
    b = lat.shape[0]
    clips = [data.clips[i] for i in idx]

    def prompts(block: int) -> tuple[torch.Tensor, torch.Tensor]:
        return captioner([caption(c.scene_at(block_start_frame(block)), rng) for c in clips])

    def block_of(j: int) -> torch.Tensor:
        x = lat[:, j * fpb:(j + 1) * fpb]
        if spec.context_noise > 0 and rng.random() < spec.context_noise_share:
            sigma = float(rng.uniform(0, spec.context_noise))
            x = (1 - sigma) * x + sigma * torch.randn_like(x)
        return x

    gen = StreamingGenerator(dit, cfg, batch=b)
    t, s, gap = structure.target, structure.switch, structure.long_gap
    with torch.no_grad():
        gen.reset(embed(text_encoder, *prompts(0)))
        fed = [0, t - 2, t - 1] if gap else list(range(t))
        for n, j in enumerate(fed):
            if s and gap and n == 1 and s <= j:
                # switched during the gap (or just after the jump, where the window holds only
                # the sink and a re-cache has nothing to redo): the new words, no re-cache
                gen.set_conditioning(embed(text_encoder, *prompts(s)))
            elif s and j == s:
                gen.switch_prompt(embed(text_encoder, *prompts(s)))      # re-cached as `feed` applies it
            gen.feed(block_of(j))
            if n == 0 and gap:
                gen.frame += gap          # far into a stream: the window keeps its sink, positions move on
                gen.window.end += gap
        if s and s == t:
            gen.switch_prompt(embed(text_encoder, *prompts(s)))
        gen.apply_switch()
    ids, mask = prompts(t)
    cross = dit.cross_kv(embed(text_encoder, ids, mask))
    x0 = lat[:, t * fpb:(t + 1) * fpb]
    levels = torch.as_tensor(rng.integers(len(sched.step_sigmas), size=b))
    sigma = torch.tensor(sched.step_sigmas, dtype=torch.float32)[levels].view(b, 1, 1, 1, 1)
    timestep = sched.steps[levels].view(b, 1).expand(b, fpb).contiguous()
    xt = (1 - sigma) * x0 + sigma * torch.randn_like(x0)
    flow = dit.predict(xt, timestep, cross, gen.window, gen.frame)
    return F.mse_loss(xt - sigma * flow, x0)


def train_dit(cfg: Config, spec: DiTTraining, data: LatentClips, tokenizer, seed: int, ckpt_path: Path,
              resume: bool, report: Callable[[int, dict[str, float]], None] | None = None,
              init: dict | None = None, until: int | None = None) -> tuple[CausalDiT, UMT5Encoder]:
    """Train (or go on training) the DiT and the text encoder by teacher forcing; checkpoints to
    `ckpt_path` (`until`: stop after that step, as an interrupted run would). `init`:
    {"dit": state, "text": state} to start from (a later stage)."""
    torch.manual_seed(seed)
    dit = CausalDiT(cfg.model)
    text_encoder = UMT5Encoder(cfg.text)
    if init is not None:
        dit.load_state_dict(init["dit"])
        text_encoder.load_state_dict(init["text"])
    params = list(dit.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.99), weight_decay=spec.weight_decay)
    rng = np.random.default_rng(seed)
    step = 0
    if resume and ckpt_path.exists():
        state = checkpoint.load(ckpt_path)
        dit.load_state_dict(state["dit"])
        text_encoder.load_state_dict(state["text"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("DiT: resuming at step %d of %d", step, spec.steps)
    captioner = Captioner(tokenizer, cfg.model.text_len)
    warm = max(1, spec.steps // 40)
    sched = lambda s: spec.lr * min(1.0, (s + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * s / spec.steps))  # noqa: E731

    def save() -> None:
        checkpoint.save(ckpt_path, {"dit": dit.state_dict(), "text": text_encoder.state_dict(),
                                    "optimizer": opt.state_dict(), "step": step, "rng": rng.bit_generator.state,
                                    "torch_rng": torch.get_rng_state()})

    dit.train()
    text_encoder.train()
    while step < min(spec.steps, until or spec.steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = sched(step)
        structure, idx = draw_structure(rng, data, spec)
        loss = teacher_forced_loss(dit, text_encoder, captioner, cfg, data, structure, idx, rng, spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if report is not None:
            report(step, {"loss": float(loss.detach()), "target": structure.target, "long": int(bool(structure.long_gap)),
                          "ms": 1e3 * (time.perf_counter() - t0)})
        if step % spec.checkpoint_every == 0 or step in (spec.steps, until):
            save()
    return dit.eval(), text_encoder.eval()
