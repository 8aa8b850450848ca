"""Training the toy world's DiT and text encoder: teacher forcing through the stream's own code.

Each step takes a few encoded clips (`LatentClips`) that switch prompt at the same block (or
not at all) and walks them block by block, as a stream would: every block is first a target,
then context. As a target, it is noised to one of the schedule's step levels and goes through
the DiT with gradients, against a copy of the KV window as the stream has it at that block; the
loss is the squared error of its x0 (``x_t - sigma * flow``) against the clean block, weighed
up where the object is (`object_weight`: otherwise nearly all of it is the setting). Then it is
fed to the `StreamingGenerator` exactly as the sampler settles its own blocks (`feed`: the
context pass at the context timestep, the window with its sink and eviction, the official
re-cache at a switch), without gradients. So one context pass serves every later target, and
each step trains every situation a stream meets: its first block, a filling window, eviction,
a switch and the blocks after it. Captions are drawn anew for every target (forms, synonyms,
made-up words), so the text encoder learns what the words mean, not one sentence per scene.

A "long" step (`long_share`) jumps the stream's position ahead by hundreds to thousands of frames
after the first block: what the window holds minutes into a stream (RoPE positions far beyond
any clip, a sink from long ago), which a clip of a few seconds cannot show otherwise.

`context_noise` (optional) adds a little Gaussian noise to fed blocks, so the model does not
rely on perfectly clean context (its own blocks are not); the model is still told t = 0.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from streaming.config import Config
from streaming.dit import CausalDiT
from streaming.generator import StreamingGenerator
from streaming.kv_window import KVWindow
from streaming.schedule import Schedule
from streaming.text import UMT5Encoder, pad_ids

from . import checkpoint
from .captions import caption
from .clips import block_start_frame
from .noise_mark import roll_to
from .object_weight import object_weights
from .world import HEIGHT, WIDTH, Clip, positions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiTTraining:
    steps: int = 2400
    batch: int = 2                 # clips a step; every block of each is a target
    lr: float = 1e-3
    weight_decay: float = 0.01
    long_share: float = 0.3        # steps that jump far into a stream after the first block
    context_noise: float = 0.05    # the largest sigma of noise added to fed blocks
    context_noise_share: float = 0.5
    checkpoint_every: int = 250
    # the loss's weight on the latent cells the object covers (`object_weight`; 1: a plain mean)
    object_weight: float = 6.0
    # the first block's pure noise rolled so its mark sits where the object starts
    # (`noise_mark`); off until a run has measured it
    first_block_mark: bool = False
    # extra first blocks a step (no context: the stream's start, drawn from the words alone),
    # each at one of the step levels: the first block is where the words alone must make the
    # picture, and it is only one target in six of a clip's walk (0: none). With 8, 600 steps
    # on from a trained model put one object of about the right colour at the centre, where
    # without them there was a faint smear down the frame (docs/TOY_WORLD.md)
    first_blocks: int = 8
    # matrix products in bfloat16 (torch.autocast; weights, optimiser and loss stay float32):
    # about twice the speed on CPUs with bfloat16 instructions (AVX-512 BF16, AMX), seven times
    # slower on one without them (emulated: 6.6 s a step against about 1 s in float32 on an
    # AVX2-only EPYC). None: bfloat16 where the CPU has those instructions
    bfloat16: bool | None = None


@dataclass
class LatentClips:
    """Encoded clips: latents [N, F, C, h, w] (float16 to save memory) and each clip's scenes."""

    latents: torch.Tensor
    clips: list[Clip]
    switch_blocks: list[int]       # the block where each clip switches (0: none)

    def weights(self, idx: np.ndarray, weight: float) -> torch.Tensor:
        """[B, F, 1, h, w] the loss's weights for clips `idx` (`object_weight.object_weights`)."""
        _, f, _, h, w = self.latents.shape
        return object_weights([self.clips[i] for i in idx], f, h, w, weight)

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


def _marked(noise: torch.Tensor, levels: torch.Tensor, clips: list[Clip], cfg: Config) -> torch.Tensor:
    """The first block's noise [B, F, C, h, w], each sample at the first step's level (pure
    noise) rolled so that its mark sits at the object's start (`noise_mark.roll_to`)."""
    patch = cfg.model.patch_size[1]
    h, w = noise.shape[-2:]
    out = noise.clone()
    for i, clip in enumerate(clips):
        if int(levels[i]) != 0:
            continue
        x, y = positions(clip)[0]
        corner = (int(y * h / HEIGHT) // patch * patch, int(x * w / WIDTH) // patch * patch)
        out[i] = roll_to(noise[i], patch, corner)
    return out


def use_bfloat16(spec: DiTTraining) -> bool:
    """`spec.bfloat16`, or (None) whether this CPU computes in bfloat16 natively."""
    if spec.bfloat16 is not None:
        return spec.bfloat16
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _window_copy(window: KVWindow) -> KVWindow:
    """A copy of the window with its own storage: a target writes its (gradient-carrying) keys
    and values there, and the stream's window stays as the feed of that block will need it."""
    out = copy.copy(window)
    out.k = [t.clone() for t in window.k]
    out.v = [t.clone() for t in window.v]
    return out


def draw_clips(rng: np.random.Generator, data: LatentClips, batch: int) -> tuple[int, np.ndarray]:
    """The block where the step's clips switch (0: none) and the clips: all switch there."""
    switches = np.asarray(data.switch_blocks)
    wanted = int(switches[int(rng.integers(len(switches)))])
    chosen = np.flatnonzero(switches == wanted)
    return wanted, rng.choice(chosen, size=min(batch, len(chosen)), replace=False)


def clip_loss(dit: CausalDiT, text_encoder: UMT5Encoder, captioner: Captioner, cfg: Config, data: LatentClips,
              switch: int, idx: np.ndarray, gap: int, rng: np.random.Generator, spec: DiTTraining) -> torch.Tensor:
    """The mean x0 error over every block of the clips `idx`, each a target in turn (see the
    module's docstring); `gap`: frames jumped after the first block (0: none)."""
    sched = Schedule.from_config(cfg.schedule)
    fpb = cfg.latent_frames_per_block
    lat = data.latents[torch.as_tensor(idx)].float()                     # [B, F, C, h, w]
    weights = data.weights(idx, spec.object_weight)                      # [B, F, 1, h, w]
    b = lat.shape[0]
    clips = [data.clips[i] for i in idx]
    sigmas = torch.tensor(sched.step_sigmas, dtype=torch.float32)

    def prompt(block: int) -> torch.Tensor:
        return embed(text_encoder, *captioner([caption(c.scene_at(block_start_frame(block)), rng) for c in clips]))

    gen = StreamingGenerator(dit, cfg, batch=b)
    losses = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bfloat16(spec)):
        with torch.no_grad():
            gen.reset(prompt(0))
        for j in range(data.blocks):
            if switch and j == switch:
                with torch.no_grad():
                    gen.switch_prompt(prompt(j))
                    gen.apply_switch()                                       # the re-cache
            x0 = lat[:, j * fpb:(j + 1) * fpb]
            levels = torch.as_tensor(rng.integers(len(sigmas), size=b))
            sigma = sigmas[levels].view(b, 1, 1, 1, 1)
            timestep = sched.steps[levels].view(b, 1).expand(b, fpb).contiguous()
            noise = torch.randn_like(x0)
            if j == 0 and spec.first_block_mark:
                noise = _marked(noise, levels, clips, cfg)
            xt = (1 - sigma) * x0 + sigma * noise
            flow = dit.predict(xt, timestep, dit.cross_kv(prompt(j)), _window_copy(gen.window), gen.frame)
            wts = weights[:, j * fpb:(j + 1) * fpb]
            losses.append(((xt - sigma * flow.float() - x0).square() * wts).mean() / wts.mean())
            context = x0
            if spec.context_noise > 0 and rng.random() < spec.context_noise_share:
                s = float(rng.uniform(0, spec.context_noise))
                context = (1 - s) * x0 + s * torch.randn_like(x0)
            gen.feed(context)
            if j == 0 and gap:
                gen.frame += gap          # far into a stream: the window keeps its sink, positions move on
                gen.window.end += gap
    return torch.stack(losses).mean()


def first_block_loss(dit: CausalDiT, text_encoder: UMT5Encoder, captioner: Captioner, cfg: Config,
                     data: LatentClips, idx: np.ndarray, rng: np.random.Generator, spec: DiTTraining) -> torch.Tensor:
    """The weighted x0 error of the first block of clips `idx`, each alone at a random step level
    (an empty window: what a stream's first block sees)."""
    sched = Schedule.from_config(cfg.schedule)
    fpb = cfg.latent_frames_per_block
    x0 = data.latents[torch.as_tensor(idx), :fpb].float()
    wts = data.weights(idx, spec.object_weight)[:, :fpb]
    b = x0.shape[0]
    levels = torch.as_tensor(rng.integers(len(sched.step_sigmas), size=b))
    sigma = torch.tensor(sched.step_sigmas, dtype=torch.float32)[levels].view(b, 1, 1, 1, 1)
    timestep = sched.steps[levels].view(b, 1).expand(b, fpb).contiguous()
    xt = (1 - sigma) * x0 + sigma * torch.randn_like(x0)
    prompt = embed(text_encoder, *captioner([caption(data.clips[i].scene_at(0), rng) for i in idx]))
    window = dit.new_window(cfg.window.local_attn_size, cfg.window.sink_size, cfg.frame_seq_length, b)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bfloat16(spec)):
        flow = dit.predict(xt, timestep, dit.cross_kv(prompt), window, 0)
    return ((xt - sigma * flow.float() - x0).square() * wts).mean() / wts.mean()


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
        switch, idx = draw_clips(rng, data, spec.batch)
        gap = 3 * int(rng.integers(20, 1200)) if rng.random() < spec.long_share else 0
        loss = clip_loss(dit, text_encoder, captioner, cfg, data, switch, idx, gap, rng, spec)
        if spec.first_blocks:
            firsts = rng.choice(len(data.clips), size=min(spec.first_blocks, len(data.clips)), replace=False)
            loss = loss + first_block_loss(dit, text_encoder, captioner, cfg, data, firsts, rng, spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if report is not None:
            report(step, {"loss": float(loss.detach()), "switch": switch, "long": int(bool(gap)),
                          "ms": 1e3 * (time.perf_counter() - t0)})
        if step % spec.checkpoint_every == 0 or step in (spec.steps, until):
            save()
    return dit.eval(), text_encoder.eval()
